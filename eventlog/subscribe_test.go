package eventlog_test

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/steadfast-go/steadfast/eventlog"
)

// TestSubscriberWokenOnAppend shows there is no polling: inside a synctest
// bubble the subscriber receives an append with no fake time passing.
func TestSubscriberWokenOnAppend(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := eventlog.New()
		defer l.Close()
		ctx := context.Background()
		if err := l.SetState(ctx, "s", eventlog.Active); err != nil {
			t.Fatal(err)
		}
		sub, err := l.Subscribe(ctx, "s", eventlog.Cursor{}, eventlog.SubscribeOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close()
		if res, err := sub.Next(ctx); err != nil || res.Outcome != eventlog.Events || len(res.Events) != 0 {
			t.Fatalf("first Next on empty stream = %+v, %v", res, err)
		}
		got := make(chan eventlog.Result)
		go func() {
			res, err := sub.Next(ctx)
			if err != nil {
				t.Errorf("Next: %v", err)
			}
			got <- res
		}()
		synctest.Wait() // the subscriber is blocked, waiting
		start := time.Now()
		if _, err := l.Append(ctx, "s", []byte("hello")); err != nil {
			t.Fatal(err)
		}
		res := <-got
		if len(res.Events) != 1 || string(res.Events[0].Data) != "hello" {
			t.Fatalf("Next = %+v", res)
		}
		if d := time.Since(start); d != 0 {
			t.Fatalf("delivery took %v of fake time: the subscriber polls", d)
		}
	})
}

// TestSlowSubscriberLags: a subscriber that does not read never blocks
// appenders; once it is more than MaxLag behind it gets Lagged with the
// cursor to resume from, and resuming from it loses nothing. It runs in a
// synctest bubble so that an append that blocked on the subscriber that
// never reads fails at once as a deadlock.
func TestSlowSubscriberLags(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := eventlog.New()
		defer l.Close()
		ctx := context.Background()
		appendN(t, l, "s", 3)
		slow, err := l.Subscribe(ctx, "s", at(l, 1), eventlog.SubscribeOptions{MaxLag: 10, Batch: 4})
		if err != nil {
			t.Fatal(err)
		}
		defer slow.Close()
		fast, err := l.Subscribe(ctx, "s", at(l, 3), eventlog.SubscribeOptions{MaxLag: 1000})
		if err != nil {
			t.Fatal(err)
		}
		defer fast.Close()
		if _, err := fast.Next(ctx); err != nil {
			t.Fatal(err)
		}
		appendN(t, l, "s", 100) // completes although slow never reads
		res, err := slow.Next(ctx)
		if err != nil || res.Outcome != eventlog.Events || len(res.Events) != 2 {
			t.Fatalf("slow first Next = %+v, %v; want the replay of 2,3", res, err)
		}
		res, err = slow.Next(ctx)
		if err != nil || res.Outcome != eventlog.Lagged || res.Resume != at(l, 3) || res.Head != at(l, 103) {
			t.Fatalf("slow Next = %+v, %v; want Lagged resuming at 3", res, err)
		}
		if _, err := slow.Next(ctx); !errors.Is(err, eventlog.ErrSubscriptionClosed) {
			t.Fatalf("Next after Lagged err = %v, want ErrSubscriptionClosed", err)
		}
		// The fast subscriber was not held back.
		for next := uint64(4); next <= 103; {
			res, err := fast.Next(ctx)
			if err != nil || res.Outcome != eventlog.Events {
				t.Fatalf("fast Next = %+v, %v", res, err)
			}
			for _, ev := range res.Events {
				if ev.Seq != next {
					t.Fatalf("fast got %d, want %d", ev.Seq, next)
				}
				next++
			}
		}
		// Resume from the Lagged cursor: nothing lost.
		again, err := l.Subscribe(ctx, "s", at(l, 3), eventlog.SubscribeOptions{GapCap: 1000})
		if err != nil {
			t.Fatal(err)
		}
		defer again.Close()
		res, err = again.Next(ctx)
		if err != nil || len(res.Events) != 100 || res.Events[0].Seq != 4 {
			t.Fatalf("resume = %v with %d events, %v", res.Outcome, len(res.Events), err)
		}
	})
}

func TestSubscriberPastRetentionLags(t *testing.T) {
	l := eventlog.New(eventlog.WithRetention(eventlog.Retention{MaxEvents: 8}))
	defer l.Close()
	ctx := context.Background()
	appendN(t, l, "s", 1)
	sub, err := l.Subscribe(ctx, "s", at(l, 1), eventlog.SubscribeOptions{MaxLag: 1000})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if _, err := sub.Next(ctx); err != nil {
		t.Fatal(err)
	}
	appendN(t, l, "s", 20) // event 2 is evicted before the subscriber reads it
	res, err := sub.Next(ctx)
	if err != nil || res.Outcome != eventlog.Lagged || res.Resume != at(l, 1) {
		t.Fatalf("Next = %+v, %v; want Lagged at 1, never a silent skip", res, err)
	}
}

func TestSubscriptionCloseUnblocksNext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := eventlog.New()
		defer l.Close()
		ctx := context.Background()
		appendN(t, l, "s", 1)
		sub, err := l.Subscribe(ctx, "s", at(l, 1), eventlog.SubscribeOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := sub.Next(ctx); err != nil {
			t.Fatal(err)
		}
		errc := make(chan error)
		go func() {
			_, err := sub.Next(ctx)
			errc <- err
		}()
		synctest.Wait()
		sub.Close()
		if err := <-errc; !errors.Is(err, eventlog.ErrSubscriptionClosed) {
			t.Fatalf("blocked Next after Close = %v", err)
		}
		if err := sub.Close(); err != nil {
			t.Fatal(err)
		}
	})
}

func TestLogCloseUnblocksNext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := eventlog.New()
		ctx := context.Background()
		appendN(t, l, "s", 1)
		sub, err := l.Subscribe(ctx, "s", at(l, 1), eventlog.SubscribeOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close()
		if _, err := sub.Next(ctx); err != nil {
			t.Fatal(err)
		}
		errc := make(chan error)
		go func() {
			_, err := sub.Next(ctx)
			errc <- err
		}()
		synctest.Wait()
		l.Close()
		if err := <-errc; !errors.Is(err, eventlog.ErrClosed) {
			t.Fatalf("blocked Next after Log.Close = %v", err)
		}
	})
}

func TestNextContextCancel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := eventlog.New()
		defer l.Close()
		appendN(t, l, "s", 1)
		sub, err := l.Subscribe(context.Background(), "s", at(l, 1), eventlog.SubscribeOptions{})
		if err != nil {
			t.Fatal(err)
		}
		defer sub.Close()
		if _, err := sub.Next(context.Background()); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if _, err := sub.Next(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Next with expiring ctx = %v", err)
		}
		// The subscription stays usable.
		appendN(t, l, "s", 1)
		if res, err := sub.Next(context.Background()); err != nil || len(res.Events) != 1 || res.Events[0].Seq != 2 {
			t.Fatalf("Next after timeout = %+v, %v", res, err)
		}
	})
}

func TestSubscriberSeesEnd(t *testing.T) {
	l := eventlog.New()
	defer l.Close()
	ctx := context.Background()
	appendN(t, l, "s", 2)
	sub, err := l.Subscribe(ctx, "s", eventlog.Cursor{}, eventlog.SubscribeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	appendN(t, l, "s", 1)
	if err := l.SetState(ctx, "s", eventlog.Ended); err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	for {
		res, err := sub.Next(ctx)
		if errors.Is(err, eventlog.ErrStreamEnded) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range res.Events {
			seqs = append(seqs, ev.Seq)
		}
	}
	if len(seqs) != 3 || seqs[2] != 3 {
		t.Fatalf("before the end the subscriber got %v, want 1,2,3", seqs)
	}
}

func TestSubscribeWrongEpochContinuesFromHead(t *testing.T) {
	l := eventlog.New()
	defer l.Close()
	ctx := context.Background()
	appendN(t, l, "s", 5)
	sub, err := l.Subscribe(ctx, "s", eventlog.Cursor{Epoch: "beforecrash", Seq: 4000}, eventlog.SubscribeOptions{})
	if err != nil {
		t.Fatalf("Subscribe(stale epoch, seq beyond head) = %v; a stale cursor is unrecoverable, not ahead", err)
	}
	defer sub.Close()
	res, err := sub.Next(ctx)
	if err != nil || res.Outcome != eventlog.Unrecoverable || res.Reason != eventlog.WrongEpoch || res.Resume != at(l, 5) {
		t.Fatalf("first Next = %+v, %v", res, err)
	}
	appendN(t, l, "s", 1)
	if res, err := sub.Next(ctx); err != nil || len(res.Events) != 1 || res.Events[0].Seq != 6 {
		t.Fatalf("live after reset = %+v, %v", res, err)
	}
}
