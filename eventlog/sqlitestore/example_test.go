package sqlitestore_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/steadfast-go/steadfast/eventlog"
	"github.com/steadfast-go/steadfast/eventlog/sqlitestore"
)

// A client's cursor stays valid across a server restart: the epoch is
// stored with the events.
func ExampleOpen() {
	dir, err := os.MkdirTemp("", "eventlog-example")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "events.db")
	ctx := context.Background()

	// First life of the server.
	st, err := sqlitestore.Open(path)
	if err != nil {
		fmt.Println(err)
		return
	}
	l := eventlog.New(eventlog.WithStore(st))
	var last eventlog.Cursor
	for _, msg := range []string{"one", "two", "three"} {
		last, _ = l.Append(ctx, "chat", []byte(msg))
	}
	seen := eventlog.Cursor{Epoch: last.Epoch, Seq: 1} // the client saw "one", then the server went down
	l.Close()

	// Second life: same file, same epoch, the old cursor resumes with no gap.
	st, err = sqlitestore.Open(path)
	if err != nil {
		fmt.Println(err)
		return
	}
	l = eventlog.New(eventlog.WithStore(st))
	defer l.Close()
	epoch, _ := l.Epoch(ctx)
	fmt.Println("same epoch:", epoch == last.Epoch)
	res, _ := l.Replay(ctx, "chat", seen, eventlog.DefaultGapCap)
	for _, ev := range res.Events {
		fmt.Println(ev.Seq, string(ev.Data))
	}
	// Output:
	// same epoch: true
	// 2 two
	// 3 three
}
