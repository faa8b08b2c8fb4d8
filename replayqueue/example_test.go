package replayqueue_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/steadfast-go/steadfast/replayqueue"
)

// Items sent while the connection is down are buffered; Connect sends the
// replay set, then the buffer, then lets new items through.
func Example() {
	q := replayqueue.New[string, string]()
	defer q.Close()

	// A subscription that must survive reconnects.
	_ = q.AddReplay("newHeads", func(id replayqueue.ReplayID) string {
		return "subscribe newHeads as " + id.String()
	}, nil)

	ctx := context.Background()
	_ = q.Send(ctx, "request 1") // no connection yet: buffered
	_ = q.Send(ctx, "request 2")

	gen, _ := q.Connect(func(frame string) error {
		fmt.Println("->", frame)
		return nil
	})
	_ = q.Send(ctx, "request 3") // connected: sent straight through
	fmt.Println("generation", gen, "buffered", q.Len())
	// Output:
	// -> subscribe newHeads as steadfast-replay:1:1
	// -> request 1
	// -> request 2
	// -> request 3
	// generation 1 buffered 0
}

// The reply to a replayed subscription is consumed by HandleReply and
// delivered to the replay's callback, which learns the new upstream
// subscription id; replies to client requests are left to the caller.
func ExampleQueue_HandleReply() {
	q := replayqueue.New[string, string]()
	defer q.Close()

	var sentID string
	_ = q.AddReplay("client-sub-0xa", func(id replayqueue.ReplayID) string {
		sentID = id.String()
		return "eth_subscribe id=" + sentID
	}, func(r replayqueue.Reply[string]) {
		fmt.Printf("replay %s answered: %s\n", r.Key, r.Value)
	})
	_, _ = q.Connect(func(string) error { return nil })

	// The upstream answers the replay and a client's own request id 1.
	for _, reply := range []struct{ id, body string }{
		{sentID, `{"result":"0x77"}`},
		{"1", `{"result":"0x10"}`},
	} {
		if !q.HandleReply(reply.id, reply.body) {
			fmt.Println("forward to client:", reply.body)
		}
	}
	// Output:
	// replay client-sub-0xa answered: {"result":"0x77"}
	// forward to client: {"result":"0x10"}
}

// Fail (or Close) hands back every buffered item, and Send reports the cause
// from then on.
func ExampleQueue_Fail() {
	q := replayqueue.New[string, string]()
	ctx := context.Background()
	_ = q.Send(ctx, "a")
	_ = q.Send(ctx, "b")

	cause := errors.New("no upstream reachable")
	fmt.Println("handed back:", q.Fail(cause))
	err := q.Send(ctx, "c")
	fmt.Println(errors.Is(err, replayqueue.ErrClosed), errors.Is(err, cause))
	// Output:
	// handed back: [a b]
	// true true
}

// With drop-oldest, a full buffer evicts its oldest items to make room and
// reports each one.
func ExampleWithOverflow() {
	q := replayqueue.New[string, string](
		replayqueue.WithMaxBytes(8, func(s string) int { return len(s) }),
		replayqueue.WithOverflow[string](replayqueue.DropOldest),
		replayqueue.WithDropped(func(s string, reason error) {
			fmt.Printf("dropped %q: %v\n", s, reason)
		}),
	)
	ctx := context.Background()
	for _, s := range []string{"aaa", "bbb", "cccc"} {
		_ = q.Send(ctx, s)
	}
	fmt.Println("buffered:", q.Len())
	q.Close() // what is still buffered is reported, once
	// Output:
	// dropped "aaa": replayqueue: evicted to make room
	// buffered: 2
	// dropped "bbb": replayqueue: closed
	// dropped "cccc": replayqueue: closed
}
