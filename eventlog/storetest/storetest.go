// Package storetest is the conformance suite for eventlog.Store
// implementations: every store of the module runs it, and so should a store
// written elsewhere.
//
//	func TestConformance(t *testing.T) {
//		storetest.Run(t, storetest.Factory{
//			Open: func(t *testing.T, r eventlog.Retention) eventlog.Store { ... },
//		})
//	}
package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/steadfast-go/steadfast/eventlog"
)

// Factory makes the stores under test.
type Factory struct {
	// Open returns a new, empty store with retention r. The suite closes
	// every store it opens. It is also called inside testing/synctest
	// bubbles (for age retention), so it must not depend on goroutines
	// started outside the call.
	Open func(t *testing.T, r eventlog.Retention) eventlog.Store
	// Reopen closes s and opens the same storage again with retention r,
	// as a restarted process would. Nil for stores that do not persist.
	Reopen func(t *testing.T, s eventlog.Store, r eventlog.Retention) eventlog.Store
}

// Run runs the conformance suite as subtests of t.
func Run(t *testing.T, f Factory) {
	tests := []struct {
		name string
		fn   func(*testing.T, Factory)
	}{
		{"Epoch", testEpoch},
		{"PerStreamSeq", testPerStreamSeq},
		{"ReadAfter", testReadAfter},
		{"DataIsCopied", testDataIsCopied},
		{"States", testStates},
		{"CountRetention", testCountRetention},
		{"AgeRetention", testAgeRetention},
		{"ConcurrentAppends", testConcurrentAppends},
		{"CanceledContext", testCanceledContext},
		{"Closed", testClosed},
		{"LogReplay", testLogReplay},
		{"LogSubscribe", testLogSubscribe},
		{"Restart", testRestart},
		{"Delete", testDelete},
		{"DeleteConcurrentWithAppends", testDeleteConcurrent},
		{"Streams", testStreams},
		{"LogDeleteEndsSubscription", testLogDeleteEndsSubscription},
		{"LogOldest", testLogOldest},
		{"RestartKeepsDeletionsAndStreams", testRestartDeletions},
		{"Watch", testWatch},
		{"CursorEpochChecked", testCursorEpoch},
		{"Model", testModel},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, f) })
	}
}

func open(t *testing.T, f Factory, r eventlog.Retention) eventlog.Store {
	t.Helper()
	s := f.Open(t, r)
	t.Cleanup(func() { s.Close() })
	return s
}

func mustAppend(t *testing.T, s eventlog.Store, stream string, data string) uint64 {
	t.Helper()
	c, err := s.Append(context.Background(), stream, "t", []byte(data))
	if err != nil {
		t.Fatalf("Append(%q): %v", stream, err)
	}
	if c.Epoch != epochOf(t, s) {
		t.Fatalf("Append(%q) cursor epoch %q, store epoch %q", stream, c.Epoch, epochOf(t, s))
	}
	return c.Seq
}

func bounds(t *testing.T, s eventlog.Store, stream string) (uint64, uint64) {
	t.Helper()
	b, err := s.Bounds(context.Background(), stream)
	if err != nil {
		t.Fatalf("Bounds(%q): %v", stream, err)
	}
	if b.Epoch != epochOf(t, s) {
		t.Fatalf("Bounds(%q).Epoch = %q, store epoch %q", stream, b.Epoch, epochOf(t, s))
	}
	first, head := b.First, b.Head
	return first, head
}

// checkRange reads everything after `after` and checks it is exactly the
// events after..head with data "<stream>-<seq>".
func checkRange(t *testing.T, s eventlog.Store, stream string, after, head uint64) {
	t.Helper()
	evs, err := s.ReadAfter(context.Background(), stream, eventlog.Cursor{Seq: after}, -1, nil)
	if err != nil {
		t.Fatalf("ReadAfter(%q, %d): %v", stream, after, err)
	}
	if uint64(len(evs)) != head-after {
		t.Fatalf("ReadAfter(%q, %d): %d events, want %d", stream, after, len(evs), head-after)
	}
	for i, ev := range evs {
		want := after + 1 + uint64(i)
		if ev.Seq != want || string(ev.Data) != fmt.Sprintf("%s-%d", stream, want) || ev.Type != "t" {
			t.Fatalf("ReadAfter(%q, %d)[%d] = {%d %q %q}, want seq %d", stream, after, i, ev.Seq, ev.Type, ev.Data, want)
		}
	}
}

// epochOf returns s's current epoch.
func epochOf(t testing.TB, s eventlog.Store) string {
	t.Helper()
	e, err := s.Epoch(context.Background())
	if err != nil {
		t.Fatalf("Epoch: %v", err)
	}
	return e
}

// at returns the cursor of seq in l's current epoch.
func at(t testing.TB, l *eventlog.Log, seq uint64) eventlog.Cursor {
	t.Helper()
	e, err := l.Epoch(context.Background())
	if err != nil {
		t.Fatalf("Epoch: %v", err)
	}
	return eventlog.Cursor{Epoch: e, Seq: seq}
}

func testEpoch(t *testing.T, f Factory) {
	a := open(t, f, eventlog.Retention{})
	b := open(t, f, eventlog.Retention{})
	if !eventlog.ValidEpoch(epochOf(t, a)) {
		t.Fatalf("Epoch() = %q, not a valid epoch", epochOf(t, a))
	}
	if epochOf(t, a) == epochOf(t, b) {
		t.Fatalf("two new stores share epoch %q: a cursor from one would be taken as a position in the other", epochOf(t, a))
	}
	mustAppend(t, a, "s", "s-1")
	if e := epochOf(t, a); e != epochOf(t, a) || !eventlog.ValidEpoch(e) {
		t.Fatalf("epoch changed during the store's life")
	}
}

func testPerStreamSeq(t *testing.T, f Factory) {
	s := open(t, f, eventlog.Retention{})
	for i, c := range []struct {
		stream string
		want   uint64
	}{{"a", 1}, {"b", 1}, {"a", 2}, {"a", 3}, {"c", 1}, {"b", 2}} {
		if got := mustAppend(t, s, c.stream, fmt.Sprintf("%s-%d", c.stream, c.want)); got != c.want {
			t.Fatalf("append %d to %q got seq %d, want %d (sequences must be per stream)", i, c.stream, got, c.want)
		}
	}
	for stream, head := range map[string]uint64{"a": 3, "b": 2, "c": 1} {
		first, h := bounds(t, s, stream)
		if first != 1 || h != head {
			t.Fatalf("Bounds(%q) = %d, %d; want 1, %d", stream, first, h, head)
		}
		checkRange(t, s, stream, 0, head)
		if st, err := s.State(context.Background(), stream); err != nil || st != eventlog.Created {
			t.Fatalf("State(%q) = %v, %v; want created", stream, st, err)
		}
	}
}

func testReadAfter(t *testing.T, f Factory) {
	s := open(t, f, eventlog.Retention{})
	ctx := context.Background()
	for i := 1; i <= 10; i++ {
		mustAppend(t, s, "s", fmt.Sprintf("s-%d", i))
	}
	evs, err := s.ReadAfter(ctx, "s", eventlog.Cursor{Seq: 3}, 4, nil)
	if err != nil || len(evs) != 4 || evs[0].Seq != 4 || evs[3].Seq != 7 {
		t.Fatalf("ReadAfter(3, limit 4) = %v, %v; want seqs 4..7", evs, err)
	}
	dst := make([]eventlog.Event, 1, 16)
	dst[0].Seq = 99
	evs, err = s.ReadAfter(ctx, "s", eventlog.Cursor{Seq: 8}, 100, dst)
	if err != nil || len(evs) != 3 || evs[0].Seq != 99 || evs[1].Seq != 9 || evs[2].Seq != 10 {
		t.Fatalf("ReadAfter appends to dst: got %v, %v", evs, err)
	}
	if evs, err := s.ReadAfter(ctx, "s", eventlog.Cursor{Seq: 10}, 5, nil); err != nil || len(evs) != 0 {
		t.Fatalf("ReadAfter(head) = %v, %v; want nothing", evs, err)
	}
	if _, err := s.ReadAfter(ctx, "s", eventlog.Cursor{Seq: 11}, 5, nil); !errors.Is(err, eventlog.ErrCursorAhead) {
		t.Fatalf("ReadAfter(head+1) err = %v, want ErrCursorAhead", err)
	}
	if _, err := s.ReadAfter(ctx, "nope", eventlog.Cursor{Seq: 0}, 5, nil); !errors.Is(err, eventlog.ErrUnknownStream) {
		t.Fatalf("ReadAfter(unknown) err = %v, want ErrUnknownStream", err)
	}
	if _, err := s.Bounds(ctx, "nope"); !errors.Is(err, eventlog.ErrUnknownStream) {
		t.Fatalf("Bounds(unknown) err = %v, want ErrUnknownStream", err)
	}
	if _, err := s.State(context.Background(), "nope"); !errors.Is(err, eventlog.ErrUnknownStream) {
		t.Fatalf("State(unknown) err = %v, want ErrUnknownStream", err)
	}
	if seq, err := s.Append(ctx, "empty", "", nil); err != nil || seq.Seq != 1 {
		t.Fatalf("Append(nil data) = %v, %v", seq, err)
	}
	if evs, err := s.ReadAfter(ctx, "empty", eventlog.Cursor{Seq: 0}, 1, nil); err != nil || len(evs) != 1 || len(evs[0].Data) != 0 || evs[0].Type != "" {
		t.Fatalf("ReadAfter(empty event) = %v, %v", evs, err)
	}
}

func testDataIsCopied(t *testing.T, f Factory) {
	s := open(t, f, eventlog.Retention{})
	buf := []byte("s-1")
	mustAppend(t, s, "s", string(buf))
	b2 := []byte("s-2")
	if _, err := s.Append(context.Background(), "s", "t", b2); err != nil {
		t.Fatal(err)
	}
	copy(b2, "XXX") // the caller reuses its buffer
	checkRange(t, s, "s", 0, 2)
}

func testStates(t *testing.T, f Factory) {
	s := open(t, f, eventlog.Retention{})
	ctx := context.Background()
	for _, st := range []eventlog.State{eventlog.Starting, eventlog.Active, eventlog.Suspended, eventlog.Detached, eventlog.Active} {
		if err := s.SetState(ctx, "s", st); err != nil {
			t.Fatalf("SetState(%v): %v", st, err)
		}
		if got, err := s.State(context.Background(), "s"); err != nil || got != st {
			t.Fatalf("State = %v, %v; want %v", got, err, st)
		}
	}
	if err := s.SetState(ctx, "s", eventlog.State(0)); !errors.Is(err, eventlog.ErrInvalidState) {
		t.Fatalf("SetState(0) err = %v, want ErrInvalidState", err)
	}
	if err := s.SetState(ctx, "s", eventlog.State(99)); !errors.Is(err, eventlog.ErrInvalidState) {
		t.Fatalf("SetState(99) err = %v, want ErrInvalidState", err)
	}
	mustAppend(t, s, "s", "s-1")
	if err := s.SetState(ctx, "s", eventlog.Ended); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Append(ctx, "s", "t", []byte("x")); !errors.Is(err, eventlog.ErrStreamEnded) {
		t.Fatalf("Append to ended stream err = %v, want ErrStreamEnded", err)
	}
	if err := s.SetState(ctx, "s", eventlog.Active); !errors.Is(err, eventlog.ErrStreamEnded) {
		t.Fatalf("SetState(active) on ended stream err = %v, want ErrStreamEnded", err)
	}
	if err := s.SetState(ctx, "s", eventlog.Ended); err != nil {
		t.Fatalf("SetState(ended) twice: %v", err)
	}
	if first, head := bounds(t, s, "s"); first != 1 || head != 1 {
		t.Fatalf("ended stream Bounds = %d, %d; want 1, 1", first, head)
	}
	checkRange(t, s, "s", 0, 1)
	// A state can be set before the first event, creating the stream.
	if err := s.SetState(ctx, "new", eventlog.Created); err != nil {
		t.Fatal(err)
	}
	if first, head := bounds(t, s, "new"); first != 1 || head != 0 {
		t.Fatalf("new stream Bounds = %d, %d; want 1, 0", first, head)
	}
}

func testCountRetention(t *testing.T, f Factory) {
	s := open(t, f, eventlog.Retention{MaxEvents: 5})
	ctx := context.Background()
	for i := 1; i <= 12; i++ {
		mustAppend(t, s, "s", fmt.Sprintf("s-%d", i))
		first, head := bounds(t, s, "s")
		wantFirst := uint64(1)
		if i > 5 {
			wantFirst = uint64(i - 4)
		}
		if first != wantFirst || head != uint64(i) {
			t.Fatalf("after %d appends Bounds = %d, %d; want %d, %d", i, first, head, wantFirst, i)
		}
	}
	checkRange(t, s, "s", 7, 12)
	if _, err := s.ReadAfter(ctx, "s", eventlog.Cursor{Seq: 6}, 10, nil); !errors.Is(err, eventlog.ErrCursorExpired) {
		t.Fatalf("ReadAfter(evicted) err = %v, want ErrCursorExpired", err)
	}
	if _, err := s.ReadAfter(ctx, "s", eventlog.Cursor{Seq: 0}, 10, nil); !errors.Is(err, eventlog.ErrCursorExpired) {
		t.Fatalf("ReadAfter(0) after eviction err = %v, want ErrCursorExpired", err)
	}
	// Other streams have their own bound.
	mustAppend(t, s, "other", "other-1")
	checkRange(t, s, "other", 0, 1)
}

func testAgeRetention(t *testing.T, f Factory) {
	synctest.Test(t, func(t *testing.T) {
		s := f.Open(t, eventlog.Retention{MaxAge: time.Minute})
		defer s.Close()
		for i := 1; i <= 3; i++ {
			mustAppend(t, s, "s", fmt.Sprintf("s-%d", i))
		}
		time.Sleep(30 * time.Second)
		for i := 4; i <= 5; i++ {
			mustAppend(t, s, "s", fmt.Sprintf("s-%d", i))
		}
		if first, head := bounds(t, s, "s"); first != 1 || head != 5 {
			t.Fatalf("at 30s Bounds = %d, %d; want 1, 5", first, head)
		}
		time.Sleep(31 * time.Second) // events 1-3 are 61 s old, 4-5 are 31 s old
		if first, head := bounds(t, s, "s"); first != 4 || head != 5 {
			t.Fatalf("at 61s Bounds = %d, %d; want 4, 5", first, head)
		}
		if _, err := s.ReadAfter(context.Background(), "s", eventlog.Cursor{Seq: 2}, 10, nil); !errors.Is(err, eventlog.ErrCursorExpired) {
			t.Fatalf("ReadAfter(expired) err = %v, want ErrCursorExpired", err)
		}
		checkRange(t, s, "s", 3, 5)
		time.Sleep(30 * time.Second)
		if first, head := bounds(t, s, "s"); first != 6 || head != 5 {
			t.Fatalf("at 91s Bounds = %d, %d; want 6, 5 (all expired)", first, head)
		}
		if evs, err := s.ReadAfter(context.Background(), "s", eventlog.Cursor{Seq: 5}, 10, nil); err != nil || len(evs) != 0 {
			t.Fatalf("ReadAfter(head) with all expired = %v, %v; want nothing", evs, err)
		}
		if seq := mustAppend(t, s, "s", "s-6"); seq != 6 {
			t.Fatalf("append after expiry got seq %d, want 6 (seqs never restart)", seq)
		}
		checkRange(t, s, "s", 5, 6)
	})
}

func testConcurrentAppends(t *testing.T, f Factory) {
	s := open(t, f, eventlog.Retention{})
	const workers, per = 8, 100
	streams := []string{"x", "y"}
	var mu sync.Mutex
	got := map[string][]uint64{}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range per {
				stream := streams[(w+i)%len(streams)]
				seq, err := s.Append(context.Background(), stream, "t", []byte(fmt.Sprintf("w%d-%d", w, i)))
				if err != nil {
					t.Errorf("Append: %v", err)
					return
				}
				mu.Lock()
				got[stream] = append(got[stream], seq.Seq)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	total := 0
	for _, stream := range streams {
		seqs := got[stream]
		slices.Sort(seqs)
		for i, seq := range seqs {
			if seq != uint64(i+1) {
				t.Fatalf("stream %q: seqs are not exactly 1..%d: position %d has %d", stream, len(seqs), i, seq)
			}
		}
		evs, err := s.ReadAfter(context.Background(), stream, eventlog.Cursor{Seq: 0}, -1, nil)
		if err != nil || len(evs) != len(seqs) {
			t.Fatalf("ReadAfter(%q) = %d events, %v; want %d", stream, len(evs), err, len(seqs))
		}
		for i, ev := range evs {
			if ev.Seq != uint64(i+1) {
				t.Fatalf("stream %q read order broken at %d: seq %d", stream, i, ev.Seq)
			}
		}
		total += len(seqs)
	}
	if total != workers*per {
		t.Fatalf("%d appends recorded, want %d", total, workers*per)
	}
}

func testCanceledContext(t *testing.T, f Factory) {
	s := open(t, f, eventlog.Retention{})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Append(ctx, "s", "", []byte("x")); !errors.Is(err, context.Canceled) {
		t.Fatalf("Append(canceled) err = %v, want context.Canceled", err)
	}
	if _, err := s.State(context.Background(), "s"); !errors.Is(err, eventlog.ErrUnknownStream) {
		t.Fatalf("a canceled Append created the stream: State err = %v", err)
	}
}

func testClosed(t *testing.T, f Factory) {
	s := f.Open(t, eventlog.Retention{})
	mustAppend(t, s, "s", "s-1")
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	ctx := context.Background()
	if _, err := s.Append(ctx, "s", "", nil); !errors.Is(err, eventlog.ErrClosed) {
		t.Errorf("Append after Close err = %v", err)
	}
	if _, err := s.ReadAfter(ctx, "s", eventlog.Cursor{Seq: 0}, 1, nil); !errors.Is(err, eventlog.ErrClosed) {
		t.Errorf("ReadAfter after Close err = %v", err)
	}
	if _, err := s.Bounds(ctx, "s"); !errors.Is(err, eventlog.ErrClosed) {
		t.Errorf("Bounds after Close err = %v", err)
	}
	if _, err := s.State(context.Background(), "s"); !errors.Is(err, eventlog.ErrClosed) {
		t.Errorf("State after Close err = %v", err)
	}
	if err := s.SetState(ctx, "s", eventlog.Active); !errors.Is(err, eventlog.ErrClosed) {
		t.Errorf("SetState after Close err = %v", err)
	}
	if err := s.Delete(ctx, "s"); !errors.Is(err, eventlog.ErrClosed) {
		t.Errorf("Delete after Close err = %v", err)
	}
	if _, err := s.Streams(ctx, nil); !errors.Is(err, eventlog.ErrClosed) {
		t.Errorf("Streams after Close err = %v", err)
	}
}

func testLogReplay(t *testing.T, f Factory) {
	l := eventlog.New(eventlog.WithStore(f.Open(t, eventlog.Retention{})))
	defer l.Close()
	ctx := context.Background()
	for i := 1; i <= 250; i++ {
		if _, err := l.AppendEvent(ctx, "s", "t", []byte(fmt.Sprintf("s-%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	res, err := l.Replay(ctx, "s", at(t, l, 240), 0)
	if err != nil || res.Outcome != eventlog.Events || len(res.Events) != 10 || res.Events[0].Seq != 241 || res.Resume != at(t, l, 250) {
		t.Fatalf("Replay(240) = %+v, %v", res.Outcome, err)
	}
	res, err = l.Replay(ctx, "s", at(t, l, 250), 0)
	if err != nil || res.Outcome != eventlog.Events || len(res.Events) != 0 {
		t.Fatalf("Replay(head) = %v with %d events, %v; want nothing", res.Outcome, len(res.Events), err)
	}
	res, err = l.Replay(ctx, "s", at(t, l, 10), 0)
	if err != nil || res.Outcome != eventlog.SkippedToHead || res.Gap != 240 || res.Resume != at(t, l, 250) {
		t.Fatalf("Replay(10) = %+v, %v; want SkippedToHead gap 240", res, err)
	}
	res, err = l.Replay(ctx, "s", eventlog.Cursor{Epoch: "other", Seq: 240}, 0)
	if err != nil || res.Outcome != eventlog.Unrecoverable || res.Reason != eventlog.WrongEpoch {
		t.Fatalf("Replay(other epoch) = %+v, %v; want Unrecoverable/WrongEpoch", res, err)
	}
	if _, err := l.Replay(ctx, "s", at(t, l, 251), 0); !errors.Is(err, eventlog.ErrCursorAhead) {
		t.Fatalf("Replay(head+1) err = %v, want ErrCursorAhead", err)
	}
}

func testLogSubscribe(t *testing.T, f Factory) {
	l := eventlog.New(eventlog.WithStore(f.Open(t, eventlog.Retention{})))
	defer l.Close()
	ctx := context.Background()
	for i := 1; i <= 5; i++ {
		if _, err := l.AppendEvent(ctx, "s", "t", []byte(fmt.Sprintf("s-%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	sub, err := l.Subscribe(ctx, "s", at(t, l, 2), eventlog.SubscribeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	const n = 40
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 6; i <= n; i++ {
			if _, err := l.AppendEvent(ctx, "s", "t", []byte(fmt.Sprintf("s-%d", i))); err != nil {
				t.Errorf("Append: %v", err)
				return
			}
		}
		if err := l.SetState(ctx, "s", eventlog.Ended); err != nil {
			t.Errorf("SetState: %v", err)
		}
	})
	next := uint64(3)
	for {
		res, err := sub.Next(ctx)
		if errors.Is(err, eventlog.ErrStreamEnded) {
			break
		}
		if err != nil || res.Outcome != eventlog.Events {
			t.Fatalf("Next = %v, %v", res.Outcome, err)
		}
		for _, ev := range res.Events {
			if ev.Seq != next || string(ev.Data) != fmt.Sprintf("s-%d", next) {
				t.Fatalf("subscriber got seq %d (%q), want %d: gap or duplicate", ev.Seq, ev.Data, next)
			}
			next++
		}
	}
	wg.Wait()
	if next != n+1 {
		t.Fatalf("subscriber ended at %d, want every event through %d", next-1, n)
	}
}

func testRestart(t *testing.T, f Factory) {
	if f.Reopen == nil {
		t.Skip("store does not persist")
	}
	r := eventlog.Retention{MaxEvents: 1000}
	s := f.Open(t, r)
	ctx := context.Background()
	for i := 1; i <= 30; i++ {
		mustAppend(t, s, "a", fmt.Sprintf("a-%d", i))
	}
	mustAppend(t, s, "b", "b-1")
	if err := s.SetState(ctx, "a", eventlog.Active); err != nil {
		t.Fatal(err)
	}
	if err := s.SetState(ctx, "b", eventlog.Ended); err != nil {
		t.Fatal(err)
	}
	epoch := epochOf(t, s)
	s = f.Reopen(t, s, r)
	defer s.Close()
	if epochOf(t, s) != epoch {
		t.Fatalf("epoch changed across restart: %q -> %q; every cursor would be rejected", epoch, epochOf(t, s))
	}
	if first, head := bounds(t, s, "a"); first != 1 || head != 30 {
		t.Fatalf("after restart Bounds(a) = %d, %d; want 1, 30", first, head)
	}
	if st, err := s.State(context.Background(), "a"); err != nil || st != eventlog.Active {
		t.Fatalf("after restart State(a) = %v, %v", st, err)
	}
	if _, err := s.Append(ctx, "b", "", nil); !errors.Is(err, eventlog.ErrStreamEnded) {
		t.Fatalf("after restart ended stream accepted an append: %v", err)
	}
	if seq := mustAppend(t, s, "a", "a-31"); seq != 31 {
		t.Fatalf("after restart append got seq %d, want 31", seq)
	}
	// A client that saw up to 25 before the restart resumes with no gap.
	l := eventlog.New(eventlog.WithStore(s))
	res, err := l.Replay(ctx, "a", eventlog.Cursor{Epoch: epoch, Seq: 25}, 0)
	if err != nil || res.Outcome != eventlog.Events || len(res.Events) != 6 {
		t.Fatalf("Replay(old cursor) after restart = %+v, %v; want 6 events", res.Outcome, err)
	}
	for i, ev := range res.Events {
		if ev.Seq != uint64(26+i) || string(ev.Data) != fmt.Sprintf("a-%d", 26+i) {
			t.Fatalf("after restart replay[%d] = %d %q", i, ev.Seq, ev.Data)
		}
	}
}

// isDeleted reports whether err says the stream was deleted: it must wrap
// both ErrStreamDeleted and ErrUnknownStream.
func isDeleted(err error) bool {
	return errors.Is(err, eventlog.ErrStreamDeleted) && errors.Is(err, eventlog.ErrUnknownStream)
}

// checkDeleted checks that every operation on a deleted stream reports it,
// and that the id cannot be recreated.
func checkDeleted(t *testing.T, s eventlog.Store, stream string) {
	t.Helper()
	ctx := context.Background()
	if _, err := s.Bounds(ctx, stream); !isDeleted(err) {
		t.Fatalf("Bounds(deleted %q) err = %v, want ErrStreamDeleted and ErrUnknownStream", stream, err)
	}
	if _, err := s.ReadAfter(ctx, stream, eventlog.Cursor{Seq: 0}, -1, nil); !isDeleted(err) {
		t.Fatalf("ReadAfter(deleted %q) err = %v", stream, err)
	}
	if _, err := s.State(context.Background(), stream); !isDeleted(err) {
		t.Fatalf("State(deleted %q) err = %v", stream, err)
	}
	// Recreating the id would restart its seqs at 1 under the same epoch,
	// and a cursor from the deleted stream would look valid in the new one.
	if seq, err := s.Append(ctx, stream, "t", []byte("again")); !isDeleted(err) {
		t.Fatalf("Append(deleted %q) = %v, %v; the id must not be recreated", stream, seq, err)
	}
	if err := s.SetState(ctx, stream, eventlog.Created); !isDeleted(err) {
		t.Fatalf("SetState(deleted %q) err = %v; the id must not be recreated", stream, err)
	}
	if err := s.Delete(ctx, stream); !isDeleted(err) {
		t.Fatalf("second Delete(%q) err = %v", stream, err)
	}
	infos, err := s.Streams(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, si := range infos {
		if si.ID == stream {
			t.Fatalf("Streams lists deleted %q", stream)
		}
	}
}

func testDelete(t *testing.T, f Factory) {
	s := open(t, f, eventlog.Retention{})
	ctx := context.Background()
	for i := 1; i <= 20; i++ {
		mustAppend(t, s, "gone", fmt.Sprintf("gone-%d", i))
	}
	mustAppend(t, s, "kept", "kept-1")
	if err := s.SetState(ctx, "gone", eventlog.Ended); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "gone"); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	checkDeleted(t, s, "gone")
	// A stream that never existed is unknown, not deleted.
	if err := s.Delete(ctx, "never"); !errors.Is(err, eventlog.ErrUnknownStream) || errors.Is(err, eventlog.ErrStreamDeleted) {
		t.Fatalf("Delete(never existed) err = %v, want ErrUnknownStream only", err)
	}
	if _, err := s.State(context.Background(), "never"); errors.Is(err, eventlog.ErrStreamDeleted) {
		t.Fatalf("State(never existed) says deleted: %v", err)
	}
	// Other streams are untouched, and a stream in any state (here one with
	// no event) can be deleted.
	checkRange(t, s, "kept", 0, 1)
	if err := s.SetState(ctx, "empty", eventlog.Active); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "empty"); err != nil {
		t.Fatalf("Delete(stream with no event): %v", err)
	}
	checkDeleted(t, s, "empty")
	if seq := mustAppend(t, s, "kept", "kept-2"); seq != 2 {
		t.Fatalf("append to another stream after Delete got seq %d, want 2", seq)
	}
	ctx2, cancel := context.WithCancel(ctx)
	cancel()
	if err := s.Delete(ctx2, "kept"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Delete(canceled) err = %v", err)
	}
	checkRange(t, s, "kept", 0, 2)
}

// Appends racing a Delete either land before it (and are deleted with the
// stream) or fail with ErrStreamDeleted: none succeeds into a stream that
// is then readable again. Reads racing it return whole ranges or report the
// deletion, never a retention error.
func testDeleteConcurrent(t *testing.T, f Factory) {
	s := open(t, f, eventlog.Retention{})
	ctx := context.Background()
	mustAppend(t, s, "x", "x-1")
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			for range 1000 {
				evs, err := s.ReadAfter(ctx, "x", eventlog.Cursor{Seq: 0}, -1, nil)
				if isDeleted(err) {
					return
				}
				if err != nil {
					t.Errorf("ReadAfter racing Delete: %v", err)
					return
				}
				for i, ev := range evs {
					if ev.Seq != uint64(i+1) {
						t.Errorf("ReadAfter racing Delete: event %d has seq %d", i, ev.Seq)
						return
					}
				}
			}
		})
	}
	for w := range 4 {
		wg.Go(func() {
			for i := range 50 {
				_, err := s.Append(ctx, "x", "t", []byte(fmt.Sprintf("w%d-%d", w, i)))
				if err != nil && !isDeleted(err) {
					t.Errorf("Append racing Delete: %v", err)
					return
				}
			}
		})
	}
	if err := s.Delete(ctx, "x"); err != nil {
		t.Errorf("Delete: %v", err)
	}
	wg.Wait()
	checkDeleted(t, s, "x")
}

func testStreams(t *testing.T, f Factory) {
	s := open(t, f, eventlog.Retention{})
	ctx := context.Background()
	if infos, err := s.Streams(ctx, nil); err != nil || len(infos) != 0 {
		t.Fatalf("Streams(empty store) = %v, %v", infos, err)
	}
	mustAppend(t, s, "c", "c-1")
	mustAppend(t, s, "a", "a-1")
	for id, st := range map[string]eventlog.State{"b": eventlog.Detached, "a": eventlog.Active, "d": eventlog.Ended} {
		if err := s.SetState(ctx, id, st); err != nil {
			t.Fatal(err)
		}
	}
	mustAppend(t, s, "e", "e-1")
	if err := s.Delete(ctx, "e"); err != nil {
		t.Fatal(err)
	}
	want := []eventlog.StreamInfo{si("a", eventlog.Active), si("b", eventlog.Detached), si("c", eventlog.Created), si("d", eventlog.Ended)}
	prefix := []eventlog.StreamInfo{si("zz", eventlog.Active)}
	infos, err := s.Streams(ctx, prefix)
	if err != nil || len(infos) != 5 || infos[0] != prefix[0] || !slices.Equal(infos[1:], want) {
		t.Fatalf("Streams = %v, %v; want %v after the prefix (sorted, no deleted stream)", infos, err, want)
	}
	canceled, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := s.Streams(canceled, nil); !errors.Is(err, context.Canceled) {
		t.Fatalf("Streams(canceled) err = %v", err)
	}
	// Through the Log, with a state filter.
	l := eventlog.New(eventlog.WithStore(s))
	syncable, err := l.Streams(ctx, eventlog.State.Syncable)
	if err != nil || !slices.Equal(syncable, []eventlog.StreamInfo{si("a", eventlog.Active), si("c", eventlog.Created)}) {
		t.Fatalf("Log.Streams(Syncable) = %v, %v", syncable, err)
	}
}

func testLogDeleteEndsSubscription(t *testing.T, f Factory) {
	l := eventlog.New(eventlog.WithStore(f.Open(t, eventlog.Retention{})))
	defer l.Close()
	ctx := context.Background()
	for i := 1; i <= 3; i++ {
		if _, err := l.AppendEvent(ctx, "s", "t", []byte(fmt.Sprintf("s-%d", i))); err != nil {
			t.Fatal(err)
		}
	}
	sub, err := l.Subscribe(ctx, "s", eventlog.Cursor{}, eventlog.SubscribeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if res, err := sub.Next(ctx); err != nil || len(res.Events) != 3 {
		t.Fatalf("replay = %v, %v", res.Outcome, err)
	}
	old := at(t, l, 3)
	errc := make(chan error, 1)
	go func() {
		_, err := sub.Next(ctx) // blocks: nothing new
		errc <- err
	}()
	if err := l.Delete(ctx, "s"); err != nil {
		t.Fatal(err)
	}
	timer := time.NewTimer(10 * time.Second)
	defer timer.Stop()
	select {
	case err := <-errc:
		if !isDeleted(err) {
			t.Fatalf("blocked Next after Delete err = %v, want ErrStreamDeleted", err)
		}
	case <-timer.C:
		t.Fatal("a subscriber of a deleted stream hangs")
	}
	if _, err := sub.Next(ctx); !isDeleted(err) {
		t.Fatalf("Next after the end err = %v", err)
	}
	if _, err := l.Subscribe(ctx, "s", old, eventlog.SubscribeOptions{}); !isDeleted(err) {
		t.Fatalf("Subscribe(deleted) err = %v", err)
	}
	// The old cursor never names a position again: the id cannot be
	// recreated, so Replay cannot take it for a place in a new stream.
	if _, err := l.Append(ctx, "s", []byte("new life")); !errors.Is(err, eventlog.ErrStreamDeleted) {
		t.Fatalf("Append(deleted) err = %v", err)
	}
	if _, err := l.Replay(ctx, "s", old, 0); !isDeleted(err) {
		t.Fatalf("Replay(old cursor of a deleted stream) err = %v", err)
	}
	if _, err := l.Head(context.Background(), "s"); !isDeleted(err) {
		t.Fatalf("Head(deleted) err = %v", err)
	}
	if err := l.Delete(ctx, ""); !errors.Is(err, eventlog.ErrEmptyStream) {
		t.Fatalf("Delete(\"\") err = %v", err)
	}
}

func testLogOldest(t *testing.T, f Factory) {
	l := eventlog.New(eventlog.WithStore(f.Open(t, eventlog.Retention{MaxEvents: 5})))
	defer l.Close()
	ctx := context.Background()
	if err := l.SetState(ctx, "s", eventlog.Created); err != nil {
		t.Fatal(err)
	}
	if o, err := l.Oldest(ctx, "s"); err != nil || o != 1 {
		t.Fatalf("Oldest(no events) = %d, %v; want 1 (head+1)", o, err)
	}
	for i := 1; i <= 12; i++ {
		if _, err := l.Append(ctx, "s", []byte("x")); err != nil {
			t.Fatal(err)
		}
		want := uint64(1)
		if i > 5 {
			want = uint64(i - 4)
		}
		o, err := l.Oldest(ctx, "s")
		if err != nil || o != want {
			t.Fatalf("after %d appends Oldest = %d, %v; want %d", i, o, err, want)
		}
		// What Oldest promises is readable, and nothing before it.
		if evs, err := l.ReadAfter(ctx, "s", eventlog.Cursor{Seq: o - 1}, 100); err != nil || len(evs) != i-int(o)+1 {
			t.Fatalf("ReadAfter(Oldest-1) = %d events, %v", len(evs), err)
		}
		if o > 1 {
			if _, err := l.ReadAfter(ctx, "s", eventlog.Cursor{Seq: o - 2}, 100); !errors.Is(err, eventlog.ErrCursorExpired) {
				t.Fatalf("ReadAfter(Oldest-2) err = %v, want ErrCursorExpired", err)
			}
		}
	}
	if _, err := l.Oldest(ctx, "nope"); !errors.Is(err, eventlog.ErrUnknownStream) {
		t.Fatalf("Oldest(unknown) err = %v", err)
	}
}

func testRestartDeletions(t *testing.T, f Factory) {
	if f.Reopen == nil {
		t.Skip("store does not persist")
	}
	s := f.Open(t, eventlog.Retention{})
	ctx := context.Background()
	for i := 1; i <= 5; i++ {
		mustAppend(t, s, "gone", fmt.Sprintf("gone-%d", i))
	}
	mustAppend(t, s, "idle", "idle-1")
	if err := s.SetState(ctx, "idle", eventlog.Active); err != nil {
		t.Fatal(err)
	}
	if err := s.SetState(ctx, "parked", eventlog.Detached); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	s = f.Reopen(t, s, eventlog.Retention{})
	defer s.Close()
	// A restarted process lists every stream, including those it has not
	// touched since the restart, and still refuses the deleted id.
	infos, err := s.Streams(ctx, nil)
	if err != nil || !slices.Equal(infos, []eventlog.StreamInfo{si("idle", eventlog.Active), si("parked", eventlog.Detached)}) {
		t.Fatalf("Streams after restart = %v, %v", infos, err)
	}
	checkDeleted(t, s, "gone")
}

func si(id string, st eventlog.State) eventlog.StreamInfo {
	return eventlog.StreamInfo{ID: id, State: st}
}

// testWatch: every committed change is told to the watcher, by stream id
// (or "" for "re-read everything").
func testWatch(t *testing.T, f Factory) {
	s := open(t, f, eventlog.Retention{})
	ctx := context.Background()
	told := make(chan string, 64)
	s.Watch(func(stream string) {
		select {
		case told <- stream:
		default: // the test drains; a full channel already holds news
		}
	})
	// A shared store may tell asynchronously: wait a bounded time.
	waitTold := func(what, stream string) {
		t.Helper()
		timeout := time.After(10 * time.Second)
		for {
			select {
			case got := <-told:
				if got == stream || got == "" {
					for len(told) > 0 {
						<-told
					}
					return
				}
			case <-timeout:
				t.Fatalf("%s of %q committed but the watcher was not told within 10s", what, stream)
			}
		}
	}
	mustAppend(t, s, "w", "w-1")
	waitTold("Append", "w")
	if err := s.SetState(ctx, "w", eventlog.Active); err != nil {
		t.Fatal(err)
	}
	waitTold("SetState", "w")
	if err := s.Delete(ctx, "w"); err != nil {
		t.Fatal(err)
	}
	waitTold("Delete", "w")
}

// testCursorEpoch: a read with a cursor of another epoch is refused, never
// answered from this store's history.
func testCursorEpoch(t *testing.T, f Factory) {
	s := open(t, f, eventlog.Retention{})
	ctx := context.Background()
	for i := 1; i <= 3; i++ {
		mustAppend(t, s, "s", fmt.Sprintf("s-%d", i))
	}
	if _, err := s.ReadAfter(ctx, "s", eventlog.Cursor{Epoch: "0therepoch", Seq: 1}, -1, nil); !errors.Is(err, eventlog.ErrWrongEpoch) {
		t.Fatalf("ReadAfter(cursor of another epoch) err = %v, want ErrWrongEpoch", err)
	}
	evs, err := s.ReadAfter(ctx, "s", eventlog.Cursor{Epoch: epochOf(t, s), Seq: 1}, -1, nil)
	if err != nil || len(evs) != 2 {
		t.Fatalf("ReadAfter(cursor of this epoch) = %d events, %v", len(evs), err)
	}
}
