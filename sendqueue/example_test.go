package sendqueue_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/steadfast-go/steadfast/sendqueue"
)

// noWait retries at once; real code keeps the default exponential back-off.
type noWait struct{}

func (noWait) NextBackOff() time.Duration { return 0 }
func (noWait) Reset()                     {}

func Example() {
	q := sendqueue.New(func(ctx context.Context, it sendqueue.Item[string]) error {
		fmt.Println("POST /send", it.Value)
		return nil
	})
	t, err := q.Push(sendqueue.Item[string]{Value: "hello", Key: "msg-1"})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(t.Wait(context.Background()), t.Status(), t.Key())
	q.Close()
	// Output:
	// POST /send hello
	// <nil> delivered msg-1
}

// A 404 from a stale connection id after a reconnect is retried, in place:
// the message behind it waits its turn.
func Example_retry() {
	failures := 2
	q := sendqueue.New(func(ctx context.Context, it sendqueue.Item[string]) error {
		if it.Value == "first" && failures > 0 {
			failures--
			fmt.Println("POST", it.Value, "-> 404")
			return &sendqueue.HTTPError{StatusCode: 404}
		}
		fmt.Println("POST", it.Value, "-> 200")
		return nil
	}, sendqueue.WithBackOff[string](noWait{}))
	q.Push(sendqueue.Item[string]{Value: "first"})
	q.Push(sendqueue.Item[string]{Value: "second"})
	q.Flush(context.Background())
	q.Close()
	// Output:
	// POST first -> 404
	// POST first -> 404
	// POST first -> 200
	// POST second -> 200
}

// While disconnected nothing is sent; on reconnect the backlog goes first,
// in order. A fire-and-forget item that fails is reported, not retried.
func Example_pauseResume() {
	q := sendqueue.New(func(ctx context.Context, it sendqueue.Item[string]) error {
		if it.Policy == sendqueue.FireAndForget {
			fmt.Println("POST", it.Value, "-> 409")
			return &sendqueue.HTTPError{StatusCode: 409}
		}
		fmt.Println("POST", it.Value, "-> 200")
		return nil
	}, sendqueue.WithReport(func(r sendqueue.Report[string]) {
		fmt.Println("not sent:", r.Item.Value, errors.Is(r.Err, sendqueue.ErrDropped))
	}))
	q.Pause() // the SSE stream dropped
	q.Push(sendqueue.Item[string]{Value: "one"})
	q.Push(sendqueue.Item[string]{Value: "interrupt", Policy: sendqueue.FireAndForget})
	q.Push(sendqueue.Item[string]{Value: "two"})
	fmt.Println("queued:", q.Len())
	q.Resume() // reconnected
	q.Flush(context.Background())
	q.Close()
	// Output:
	// queued: 3
	// POST one -> 200
	// POST interrupt -> 409
	// not sent: interrupt true
	// POST two -> 200
}

// When full, the queue rejects new items by default; DropOldest makes room
// instead, and reports what it evicted.
func ExampleWithOverflow() {
	q := sendqueue.New(func(ctx context.Context, it sendqueue.Item[int]) error { return nil },
		sendqueue.WithCapacity[int](2),
		sendqueue.WithOverflow[int](sendqueue.DropOldest),
		sendqueue.WithReport(func(r sendqueue.Report[int]) {
			fmt.Printf("not sent %d: %v\n", r.Item.Value, r.Err)
		}))
	q.Pause()
	for i := 1; i <= 3; i++ {
		q.Push(sendqueue.Item[int]{Value: i})
	}
	q.Close() // items still queued are reported, not returned
	// Output:
	// not sent 1: sendqueue: evicted to make room
	// not sent 2: sendqueue: queue closed
	// not sent 3: sendqueue: queue closed
}

// Flush waits until everything pushed so far has settled: here, before a
// graceful shutdown, so no accepted message is left behind.
func ExampleQueue_Flush() {
	q := sendqueue.New(func(ctx context.Context, it sendqueue.Item[string]) error {
		fmt.Println("sent", it.Value)
		return nil
	})
	q.Pause() // the connection is down: messages wait in order
	for _, m := range []string{"one", "two", "three"} {
		if _, err := q.Push(sendqueue.Item[string]{Value: m}); err != nil {
			fmt.Println(err)
			return
		}
	}
	fmt.Println("queued:", q.Len())
	q.Resume() // reconnected

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := q.Flush(ctx); err != nil {
		fmt.Println("flush:", err)
	}
	fmt.Println("queued:", q.Len())
	fmt.Println(q.Close())
	// Output:
	// queued: 3
	// sent one
	// sent two
	// sent three
	// queued: 0
	// <nil>
}
