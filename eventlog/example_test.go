package eventlog_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/steadfast-go/steadfast/eventlog"
)

func ExampleLog_Replay() {
	ctx := context.Background()
	l := eventlog.New()
	defer l.Close()
	var head eventlog.Cursor
	for i := 1; i <= 500; i++ {
		head, _ = l.Append(ctx, "session-1", fmt.Appendf(nil, "message %d", i))
	}
	at := func(seq uint64) eventlog.Cursor { return eventlog.Cursor{Epoch: head.Epoch, Seq: seq} }

	// A client a few events behind gets exactly what it missed.
	res, _ := l.Replay(ctx, "session-1", at(497), eventlog.DefaultGapCap)
	for _, ev := range res.Events {
		fmt.Printf("%s %d %s\n", res.Outcome, ev.Seq, ev.Data)
	}

	// A client at head gets nothing again.
	res, _ = l.Replay(ctx, "session-1", at(500), eventlog.DefaultGapCap)
	fmt.Println(res.Outcome, len(res.Events))

	// A client far behind is told to skip, not flooded.
	res, _ = l.Replay(ctx, "session-1", at(10), eventlog.DefaultGapCap)
	fmt.Println(res.Outcome, res.Gap, res.Resume.Seq)

	// A cursor from before a restart is never taken as a position.
	res, _ = l.Replay(ctx, "session-1", eventlog.Cursor{Epoch: "0ldserver", Seq: 499}, eventlog.DefaultGapCap)
	fmt.Println(res.Outcome, res.Reason)
	// Output:
	// events 498 message 498
	// events 499 message 499
	// events 500 message 500
	// events 0
	// skipped-to-head 490 500
	// unrecoverable wrong-epoch
}

func ExampleLog_Subscribe() {
	ctx := context.Background()
	l := eventlog.New()
	defer l.Close()
	seen, _ := l.Append(ctx, "chat", []byte("hello"))
	l.Append(ctx, "chat", []byte("how are you?"))

	// The client saw event 1 (its cursor, seen, was the SSE event id)
	// before it reconnected.
	sub, err := l.Subscribe(ctx, "chat", seen, eventlog.SubscribeOptions{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer sub.Close()

	go func() {
		l.Append(ctx, "chat", []byte("fine, thanks"))
		l.SetState(ctx, "chat", eventlog.Ended)
	}()
	for {
		res, err := sub.Next(ctx)
		if err != nil {
			fmt.Println(err)
			return
		}
		for _, ev := range res.Events {
			fmt.Printf("%d: %s\n", ev.Seq, ev.Data)
		}
	}
	// Output:
	// 2: how are you?
	// 3: fine, thanks
	// eventlog: stream ended
}

func ExampleParseCursor() {
	c := eventlog.Cursor{Epoch: "9f1c2e4a0b3d5e6f", Seq: 42}
	id := c.String() // e.g. an SSE "id:" field
	fmt.Println(id)

	back, err := eventlog.ParseCursor(id)
	fmt.Println(back == c, err)

	_, err = eventlog.ParseCursor("42")
	fmt.Println(err)
	// Output:
	// 9f1c2e4a0b3d5e6f:42
	// true <nil>
	// eventlog: malformed cursor: "42" has no ':'
}

func ExampleLog_Sync() {
	ctx := context.Background()
	l := eventlog.New()
	defer l.Close()
	l.SetState(ctx, "a", eventlog.Active)
	l.SetState(ctx, "b", eventlog.Suspended)

	rep, _ := l.Sync(ctx, []string{"a", "b", "c"}, func(ctx context.Context, stream string, st eventlog.State) error {
		fmt.Println("syncing", stream, st)
		return nil
	})
	fmt.Println("synced", rep.Synced, "skipped", rep.Skipped, "unknown", rep.Unknown)
	// Output:
	// syncing a active
	// synced [a] skipped [b] unknown [c]
}

func ExampleLog_Delete() {
	ctx := context.Background()
	l := eventlog.New()
	defer l.Close()
	l.Append(ctx, "session-1", []byte("hello"))
	l.SetState(ctx, "session-1", eventlog.Ended)

	// After a retention period, the ended session is forgotten: its events
	// are freed and reads report it unknown.
	fmt.Println(l.Delete(ctx, "session-1"))
	_, err := l.Head(ctx, "session-1")
	fmt.Println(errors.Is(err, eventlog.ErrUnknownStream), errors.Is(err, eventlog.ErrStreamDeleted))

	// The id is never reused in this epoch, so an old cursor of the deleted
	// session can never pass for a position in a new one.
	_, err = l.Append(ctx, "session-1", []byte("again"))
	fmt.Println(errors.Is(err, eventlog.ErrStreamDeleted))
	// Output:
	// <nil>
	// true true
	// true
}

func ExampleLog_Streams() {
	ctx := context.Background()
	l := eventlog.New()
	defer l.Close()
	l.SetState(ctx, "b", eventlog.Active)
	l.SetState(ctx, "a", eventlog.Detached)
	l.Append(ctx, "c", []byte("x")) // created

	// Every stream the store holds, whether or not this process touched it
	// (after a restart on sqlitestore), filtered to the syncable ones.
	streams, _ := l.Streams(ctx, eventlog.State.Syncable)
	for _, s := range streams {
		fmt.Println(s.ID, s.State)
	}
	oldest, _ := l.Oldest(ctx, "c")
	fmt.Println("oldest retained seq of c:", oldest)
	// Output:
	// b active
	// c created
	// oldest retained seq of c: 1
}
