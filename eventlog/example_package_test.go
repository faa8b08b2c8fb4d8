package eventlog_test

import (
	"context"
	"fmt"

	"github.com/steadfast-go/steadfast/eventlog"
)

// The whole cycle of an SSE server: append events as they are produced,
// send each with its cursor as the SSE id, and when the client reconnects
// with Last-Event-ID, resume exactly after it.
func Example() {
	ctx := context.Background()
	l := eventlog.New() // memory store; see sqlitestore and pgstore for durable ones
	defer l.Close()

	var ids []string
	for _, chunk := range []string{"Hel", "lo, ", "world"} {
		cur, err := l.Append(ctx, "session-7", []byte(chunk))
		if err != nil {
			fmt.Println(err)
			return
		}
		ids = append(ids, cur.String()) // "id: <cursor>" on the wire
	}

	// The client saw the first chunk, lost its connection, and comes back
	// with Last-Event-ID set to that chunk's id.
	last, err := eventlog.ParseCursor(ids[0])
	if err != nil {
		fmt.Println(err)
		return
	}
	res, err := l.Replay(ctx, "session-7", last, eventlog.DefaultGapCap)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(res.Outcome)
	for _, ev := range res.Events {
		fmt.Printf("seq %d: %q\n", ev.Seq, ev.Data)
	}
	// Output:
	// events
	// seq 2: "lo, "
	// seq 3: "world"
}
