package eventlog_test

import (
	"context"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/eventlog"
)

// blockingStore is a memory store whose appends to one stream block until
// released, to show that the Log itself never makes another stream wait.
type blockingStore struct {
	*eventlog.MemoryStore
	slow    string
	entered chan struct{}
	release chan struct{}
}

func (s *blockingStore) Append(ctx context.Context, stream, typ string, data []byte) (eventlog.Cursor, error) {
	if stream == s.slow {
		s.entered <- struct{}{}
		<-s.release
	}
	return s.MemoryStore.Append(ctx, stream, typ, data)
}

// TestAppendsToOneStreamDoNotWaitForAnother: the Log holds no lock across
// streams while the store works, so an append stuck in the store for one
// stream does not delay appends, reads or subscribers of another.
func TestAppendsToOneStreamDoNotWaitForAnother(t *testing.T) {
	st := &blockingStore{
		MemoryStore: eventlog.NewMemoryStore(eventlog.Retention{MaxEvents: 100}),
		slow:        "slow",
		entered:     make(chan struct{}),
		release:     make(chan struct{}),
	}
	log := eventlog.New(eventlog.WithStore(st))
	defer log.Close()
	ctx := context.Background()

	// A subscriber makes appends take the wake-up path too.
	if _, err := log.Append(ctx, "fast", []byte("first")); err != nil {
		t.Fatal(err)
	}
	sub, err := log.Subscribe(ctx, "fast", eventlog.Cursor{Epoch: epochOf(log)}, eventlog.SubscribeOptions{})
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	defer sub.Close()

	slowDone := make(chan error, 1)
	go func() {
		_, err := log.Append(ctx, "slow", []byte("stuck"))
		slowDone <- err
	}()
	<-st.entered // the slow append is now inside the store

	fastDone := make(chan error, 1)
	go func() {
		for i := range 10 {
			if _, err := log.Append(ctx, "fast", []byte{byte(i)}); err != nil {
				fastDone <- err
				return
			}
		}
		_, err := log.ReadAfter(ctx, "fast", eventlog.Cursor{Seq: 0}, 11)
		fastDone <- err
	}()
	select {
	case err := <-fastDone:
		if err != nil {
			t.Fatalf("fast stream: %v", err)
		}
	case <-time.After(10 * time.Second): // a failure guard, not synchronization
		t.Fatal("appends to another stream waited for the stuck one")
	}
	if h, err := log.Head(context.Background(), "fast"); err != nil || h.Seq != 11 {
		t.Fatalf("Head(fast) = %v, %v; want seq 11", h, err)
	}
	close(st.release)
	if err := <-slowDone; err != nil {
		t.Fatalf("slow append: %v", err)
	}
}

// TestSteadyStateAppendAndReplayDoNotAllocate backs the doc's promise (and
// bench/README's 0 allocs/op) that the in-memory log appends without
// allocating at steady state and ReplayInto with a reused slice replays
// without allocating.
func TestSteadyStateAppendAndReplayDoNotAllocate(t *testing.T) {
	log := eventlog.New(eventlog.WithRetention(eventlog.Retention{MaxEvents: 1024}))
	defer log.Close()
	ctx := context.Background()
	data := []byte("a small chat event payload")
	for range 4096 { // fill the ring and grow the data chunks once
		if _, err := log.Append(ctx, "s", data); err != nil {
			t.Fatal(err)
		}
	}
	if n := testing.AllocsPerRun(1000, func() { _, _ = log.Append(ctx, "s", data) }); n != 0 {
		t.Fatalf("Append allocates %v times per call at steady state", n)
	}
	head, err := log.Head(context.Background(), "s")
	if err != nil {
		t.Fatal(err)
	}
	from := eventlog.Cursor{Epoch: epochOf(log), Seq: head.Seq - 200}
	dst := make([]eventlog.Event, 0, 200)
	var res eventlog.Result
	if n := testing.AllocsPerRun(100, func() {
		res, err = log.ReplayInto(ctx, "s", from, 200, dst)
	}); n != 0 {
		t.Fatalf("ReplayInto of 200 events allocates %v times", n)
	}
	if err != nil || res.Outcome != eventlog.Events || len(res.Events) != 200 {
		t.Fatalf("ReplayInto = %v events, outcome %v, err %v; want 200 events", len(res.Events), res.Outcome, err)
	}
}
