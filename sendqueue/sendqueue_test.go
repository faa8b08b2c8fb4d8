package sendqueue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// scriptSink answers attempts from a script of errors (nil = success),
// then succeeds; it records every attempt with its time.
type scriptSink struct {
	mu     sync.Mutex
	script []error
	tries  []attempt
}

type attempt struct {
	key   string
	value string
	at    time.Time
	err   error
}

func (s *scriptSink) send(_ context.Context, it Item[string]) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var err error
	if len(s.script) > 0 {
		err, s.script = s.script[0], s.script[1:]
	}
	s.tries = append(s.tries, attempt{it.Key, it.Value, time.Now(), err})
	return err
}

func (s *scriptSink) values() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var v []string
	for _, a := range s.tries {
		v = append(v, a.value)
	}
	return v
}

func (s *scriptSink) delivered() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var v []string
	for _, a := range s.tries {
		if a.err == nil {
			v = append(v, a.value)
		}
	}
	return v
}

type reportLog struct {
	mu sync.Mutex
	rs []Report[string]
}

func (l *reportLog) add(r Report[string]) {
	l.mu.Lock()
	l.rs = append(l.rs, r)
	l.mu.Unlock()
}

func (l *reportLog) get() []Report[string] {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.rs)
}

func mustPush(t *testing.T, q *Queue[string], it Item[string]) *Ticket {
	t.Helper()
	tk, err := q.Push(it)
	if err != nil {
		t.Fatalf("Push(%q): %v", it.Value, err)
	}
	return tk
}

func mustClose(t *testing.T, q *Queue[string]) {
	t.Helper()
	if err := q.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// closedValues returns the values of the reports that wrap ErrClosed, in
// report order: the items Close found still queued.
func (l *reportLog) closedValues() []string {
	var v []string
	for _, r := range l.get() {
		if errors.Is(r.Err, ErrClosed) {
			v = append(v, r.Item.Value)
		}
	}
	return v
}

// The incident: after a reconnect the server answered 404 (stale connection
// id) and the client dropped the message. Here the 404 is retried with the
// default classifier and back-off, and the message is delivered once.
func Test404AfterReconnectIsRetriedNotDropped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var reps reportLog
		sink := &scriptSink{script: []error{
			fmt.Errorf("post /send: %w", ErrDisconnected), // connection drops
			&HTTPError{StatusCode: 404},                   // first POST after reconnect
			&HTTPError{StatusCode: 404},
		}}
		q := New(sink.send, WithReport(reps.add))
		tk := mustPush(t, q, Item[string]{Value: "hello"})
		synctest.Wait()
		if !q.Paused() || tk.Status() != Pending {
			t.Fatalf("after a disconnect: paused %v, status %v", q.Paused(), tk.Status())
		}
		q.Resume() // reconnected
		if err := tk.Wait(t.Context()); err != nil {
			t.Fatalf("Wait: %v", err)
		}
		if got := sink.values(); !slices.Equal(got, []string{"hello", "hello", "hello", "hello"}) {
			t.Fatalf("attempts %v", got)
		}
		if got := sink.delivered(); !slices.Equal(got, []string{"hello"}) {
			t.Fatalf("delivered %v", got)
		}
		for _, a := range sink.tries {
			if a.key != tk.Key() {
				t.Fatalf("retry used key %q, want %q", a.key, tk.Key())
			}
		}
		if r := reps.get(); len(r) != 0 {
			t.Fatalf("unexpected reports %v", r)
		}
		mustClose(t, q)
	})
}

// The fix for the incident re-queued failures without the cap check. Here a
// full queue whose head keeps failing never grows, Push reports ErrFull,
// and with DropOldest the item being sent is never the one evicted.
func TestRequeueCannotExceedCap(t *testing.T) {
	for _, ov := range []Overflow{RejectNew, DropOldest} {
		t.Run(ov.String(), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				const capacity = 3
				fails := make([]error, 20)
				for i := range fails {
					fails[i] = &HTTPError{StatusCode: 503}
				}
				var reps reportLog
				sink := &scriptSink{script: fails}
				q := New(sink.send, WithCapacity[string](capacity), WithOverflow[string](ov),
					WithBackOff[string](constBackOff{time.Second}), WithReport(reps.add))
				for i := range capacity {
					mustPush(t, q, Item[string]{Value: fmt.Sprint(i)})
				}
				next := capacity
				for range 20 {
					synctest.Wait()
					_, err := q.Push(Item[string]{Value: fmt.Sprint(next)})
					next++
					if ov == RejectNew && !errors.Is(err, ErrFull) {
						t.Fatalf("Push into a full queue: %v", err)
					}
					if ov == DropOldest && err != nil {
						t.Fatalf("Push with DropOldest: %v", err)
					}
					if n := q.Len(); n != capacity {
						t.Fatalf("Len %d, cap %d", n, capacity)
					}
					time.Sleep(time.Second) // next retry
				}
				if err := q.Flush(t.Context()); err != nil {
					t.Fatal(err)
				}
				got := sink.delivered()
				var want []string
				if ov == RejectNew {
					want = []string{"0", "1", "2"}
				} else {
					// Each Push came while the head waited for its back-off
					// (not in flight), so the oldest went each time: only
					// the three newest remain. (The model test covers an
					// item in flight, which is never evicted.)
					want = []string{fmt.Sprint(next - 3), fmt.Sprint(next - 2), fmt.Sprint(next - 1)}
					if n := len(reps.get()); n != next-capacity {
						t.Fatalf("%d evictions reported, want %d", n, next-capacity)
					}
					for _, r := range reps.get() {
						if !errors.Is(r.Err, ErrEvicted) {
							t.Fatalf("bad report %+v", r)
						}
					}
				}
				if !slices.Equal(got, want) {
					t.Fatalf("delivered %v, want %v", got, want)
				}
				mustClose(t, q)
			})
		})
	}
}

// The fix also pushed the failed message to the back, reordering the
// user's messages. Here a failing item keeps its place at the head.
func TestFailedItemKeepsItsPlace(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sink := &scriptSink{script: []error{
			&HTTPError{StatusCode: 404}, &net.OpError{Op: "dial", Err: syscall.ECONNREFUSED},
			nil, &HTTPError{StatusCode: 500}, nil, nil,
		}}
		q := New(sink.send, WithBackOff[string](constBackOff{time.Second}))
		q.Pause()
		var tks []*Ticket
		for _, v := range []string{"a", "b", "c"} {
			tks = append(tks, mustPush(t, q, Item[string]{Value: v}))
		}
		q.Resume()
		if err := q.Flush(t.Context()); err != nil {
			t.Fatal(err)
		}
		if got, want := sink.values(), []string{"a", "a", "a", "b", "b", "c"}; !slices.Equal(got, want) {
			t.Fatalf("attempts %v, want %v", got, want)
		}
		if got := sink.delivered(); !slices.Equal(got, []string{"a", "b", "c"}) {
			t.Fatalf("delivered %v", got)
		}
		for _, tk := range tks {
			if tk.Status() != Delivered {
				t.Fatalf("ticket %s: %v", tk.Key(), tk.Status())
			}
		}
		mustClose(t, q)
	})
}

// recBackOff returns a fixed sequence of waits and counts Resets.
type recBackOff struct {
	waits  []time.Duration
	i      int
	resets int
}

func (b *recBackOff) NextBackOff() time.Duration {
	if b.i >= len(b.waits) {
		return Stop
	}
	b.i++
	return b.waits[b.i-1]
}

func (b *recBackOff) Reset() { b.i = 0; b.resets++ }

func TestBackOffSpacesAttempts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e503 := &HTTPError{StatusCode: 503}
		sink := &scriptSink{script: []error{e503, e503, e503, nil, e503, nil}}
		bo := &recBackOff{waits: []time.Duration{time.Second, 2 * time.Second, 4 * time.Second}}
		q := New(sink.send, WithBackOff[string](bo))
		start := time.Now()
		a := mustPush(t, q, Item[string]{Value: "a"})
		b := mustPush(t, q, Item[string]{Value: "b"})
		if err := b.Wait(t.Context()); err != nil || a.Status() != Delivered {
			t.Fatalf("b: %v, a: %v", err, a.Status())
		}
		var offs []time.Duration
		for _, x := range sink.tries {
			offs = append(offs, x.at.Sub(start))
		}
		// a: 0, +1s, +2s, +4s (delivered at 7s); b: 7s, then reset back-off +1s.
		want := []time.Duration{0, time.Second, 3 * time.Second, 7 * time.Second, 7 * time.Second, 8 * time.Second}
		if !slices.Equal(offs, want) {
			t.Fatalf("attempt times %v, want %v", offs, want)
		}
		mustClose(t, q)
	})
}

func TestBackOffStopGivesUp(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e503 := &HTTPError{StatusCode: 503}
		var reps reportLog
		sink := &scriptSink{script: []error{e503, e503, nil}}
		q := New(sink.send, WithBackOff[string](&recBackOff{waits: []time.Duration{time.Second}}), WithReport(reps.add))
		a := mustPush(t, q, Item[string]{Value: "a"})
		b := mustPush(t, q, Item[string]{Value: "b"})
		if err := a.Wait(t.Context()); !errors.Is(err, ErrGaveUp) || !errors.Is(err, e503) {
			t.Fatalf("a: %v", err)
		}
		if err := b.Wait(t.Context()); err != nil {
			t.Fatalf("b: %v", err)
		}
		if r := reps.get(); len(r) != 1 || r[0].Item.Value != "a" || r[0].Attempts != 2 {
			t.Fatalf("reports %+v", r)
		}
		mustClose(t, q)
	})
}

func TestDefaultBackOffNeverGivesUp(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := DefaultBackOff()
		prev := time.Duration(0)
		for i := range 200 {
			d := b.NextBackOff()
			if d == Stop {
				t.Fatalf("attempt %d: Stop", i)
			}
			if i == 0 && (d < 250*time.Millisecond || d > 750*time.Millisecond) {
				t.Fatalf("first wait %v, want 500ms ± 50%%", d)
			}
			if d > 90*time.Second {
				t.Fatalf("wait %v beyond the cap", d)
			}
			time.Sleep(d) // fake time: elapsed time grows past any limit
			prev = d
		}
		if prev < 30*time.Second {
			t.Fatalf("last wait %v, want near the 60 s cap", prev)
		}
	})
}

func TestResumeCutsBackOffShort(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		sink := &scriptSink{script: []error{&HTTPError{StatusCode: 503}}}
		bo := &recBackOff{waits: []time.Duration{time.Hour}}
		q := New(sink.send, WithBackOff[string](bo))
		start := time.Now()
		tk := mustPush(t, q, Item[string]{Value: "a"})
		synctest.Wait()
		q.Resume() // e.g. the transport reconnected
		if err := tk.Wait(t.Context()); err != nil {
			t.Fatal(err)
		}
		if d := time.Since(start); d != 0 {
			t.Fatalf("delivered after %v, want at once", d)
		}
		mustClose(t, q)
	})
}

func TestMaxAttempts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := &HTTPError{StatusCode: 429}
		sink := &scriptSink{script: []error{e, e, e, e}}
		var reps reportLog
		q := New(sink.send, WithMaxAttempts[string](3), WithBackOff[string](constBackOff{time.Second}), WithReport(reps.add))
		tk := mustPush(t, q, Item[string]{Value: "a"})
		if err := tk.Wait(t.Context()); !errors.Is(err, ErrGaveUp) {
			t.Fatalf("Wait: %v", err)
		}
		if n := len(sink.values()); n != 3 {
			t.Fatalf("%d attempts, want 3", n)
		}
		if r := reps.get(); len(r) != 1 || r[0].Attempts != 3 {
			t.Fatalf("reports %+v", r)
		}
		mustClose(t, q)
	})
}

func TestFireAndForgetGetsOneAttempt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := &HTTPError{StatusCode: 503}
		sink := &scriptSink{script: []error{e}}
		var reps reportLog
		q := New(sink.send, WithReport(reps.add))
		stop := mustPush(t, q, Item[string]{Value: "stop", Policy: FireAndForget})
		msg := mustPush(t, q, Item[string]{Value: "msg"})
		if err := msg.Wait(t.Context()); err != nil {
			t.Fatal(err)
		}
		if !errors.Is(stop.Err(), ErrGaveUp) || !errors.Is(stop.Err(), e) {
			t.Fatalf("stop: %v", stop.Err())
		}
		if got := sink.values(); !slices.Equal(got, []string{"stop", "msg"}) {
			t.Fatalf("attempts %v", got)
		}
		if r := reps.get(); len(r) != 1 || r[0].Item.Value != "stop" || r[0].Item.Policy != FireAndForget {
			t.Fatalf("reports %+v", r)
		}
		mustClose(t, q)
	})
}

func TestDropIsReported(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		e := &HTTPError{StatusCode: 400, Body: "bad json"}
		sink := &scriptSink{script: []error{e}}
		var reps reportLog
		q := New(sink.send, WithReport(reps.add))
		a := mustPush(t, q, Item[string]{Value: "a"})
		b := mustPush(t, q, Item[string]{Value: "b"})
		if err := b.Wait(t.Context()); err != nil {
			t.Fatal(err)
		}
		if a.Status() != Failed || !errors.Is(a.Err(), ErrDropped) || !errors.Is(a.Err(), e) {
			t.Fatalf("a: %v %v", a.Status(), a.Err())
		}
		if r := reps.get(); len(r) != 1 || r[0].Item.Key != a.Key() || r[0].Attempts != 1 {
			t.Fatalf("reports %+v", r)
		}
		mustClose(t, q)
	})
}

// Each item has one fate: an item still queued at Close is reported once,
// its ticket settles with the same error, and nothing is handed back.
func TestCloseReportsLeftoversOnce(t *testing.T) {
	var reps reportLog
	sink := &scriptSink{}
	q := New(sink.send, WithReport(reps.add))
	q.Pause()
	var tks []*Ticket
	for _, v := range []string{"a", "b", "c"} {
		tks = append(tks, mustPush(t, q, Item[string]{Value: v, Key: "k-" + v}))
	}
	flushed := make(chan error, 1)
	go func() { flushed <- q.Flush(context.Background()) }()
	mustClose(t, q)
	if err := <-flushed; !errors.Is(err, ErrClosed) {
		t.Fatalf("Flush across Close: %v", err)
	}
	if vals := reps.closedValues(); !slices.Equal(vals, []string{"a", "b", "c"}) {
		t.Fatalf("leftovers %v", vals)
	}
	r := reps.get()
	for i, tk := range tks {
		if !errors.Is(tk.Err(), ErrClosed) || tk.Err() != r[i].Err {
			t.Fatalf("ticket %d: %v, report %v", i, tk.Err(), r[i].Err)
		}
	}
	if len(r) != 3 || r[0].Item.Key != "k-a" || !errors.Is(r[2].Err, ErrClosed) {
		t.Fatalf("reports %+v", r)
	}
	if _, err := q.Push(Item[string]{Value: "late"}); !errors.Is(err, ErrClosed) {
		t.Fatalf("Push after Close: %v", err)
	}
	if err := q.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if n := len(reps.get()); n != 3 {
		t.Fatalf("%d reports after the second Close, want 3", n)
	}
	if err := q.Flush(t.Context()); !errors.Is(err, ErrClosed) {
		t.Fatalf("Flush after Close: %v", err)
	}
	if len(sink.values()) != 0 {
		t.Fatalf("a paused queue sent %v", sink.values())
	}
}

// Close cancels the context of a send that hangs, waits for it, and
// reports the item with ErrClosed and the send's own error.
func TestCloseCancelsHungSend(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var reps reportLog
		started := make(chan struct{})
		q := New(func(ctx context.Context, it Item[string]) error {
			close(started)
			<-ctx.Done()
			return ctx.Err()
		}, WithReport(reps.add))
		tk := mustPush(t, q, Item[string]{Value: "a"})
		<-started
		mustClose(t, q)
		r := reps.get()
		if len(r) != 1 || r[0].Item.Value != "a" || !errors.Is(r[0].Err, ErrClosed) || !errors.Is(r[0].Err, context.Canceled) {
			t.Fatalf("reports %+v", r)
		}
		if !errors.Is(tk.Err(), ErrClosed) || !errors.Is(tk.Err(), context.Canceled) {
			t.Fatalf("ticket: %v", tk.Err())
		}
	})
}

func TestFlushWaitsForDelivery(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var reps reportLog
		sink := &scriptSink{script: []error{&HTTPError{StatusCode: 502}}}
		q := New(sink.send, WithBackOff[string](constBackOff{time.Minute}), WithReport(reps.add))
		for _, v := range []string{"a", "b"} {
			mustPush(t, q, Item[string]{Value: v})
		}
		if err := q.Flush(t.Context()); err != nil {
			t.Fatal(err)
		}
		if q.Len() != 0 || !slices.Equal(sink.delivered(), []string{"a", "b"}) {
			t.Fatalf("after Flush: len %d, delivered %v", q.Len(), sink.delivered())
		}
		q.Pause()
		mustPush(t, q, Item[string]{Value: "c"})
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		if err := q.Flush(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Flush of a paused queue: %v", err)
		}
		mustClose(t, q)
		if left := reps.closedValues(); !slices.Equal(left, []string{"c"}) {
			t.Fatalf("leftovers %v", left)
		}
	})
}

func TestMaxBytes(t *testing.T) {
	q := New((&scriptSink{}).send, WithMaxBytes(10, func(s string) int { return len(s) }), WithCapacity[string](100))
	q.Pause()
	if _, err := q.Push(Item[string]{Value: strings.Repeat("x", 11)}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("oversized: %v", err)
	}
	mustPush(t, q, Item[string]{Value: "123456"})
	if _, err := q.Push(Item[string]{Value: "12345"}); !errors.Is(err, ErrFull) {
		t.Fatalf("over the byte cap: %v", err)
	}
	mustPush(t, q, Item[string]{Value: "1234"})
	if q.Bytes() != 10 || q.Len() != 2 {
		t.Fatalf("bytes %d len %d", q.Bytes(), q.Len())
	}
	mustClose(t, q)
}

func TestDropOldestSkipsFireAndForget(t *testing.T) {
	var reps reportLog
	q := New((&scriptSink{}).send, WithCapacity[string](2), WithOverflow[string](DropOldest), WithReport(reps.add))
	q.Pause()
	mustPush(t, q, Item[string]{Value: "stop", Policy: FireAndForget})
	old := mustPush(t, q, Item[string]{Value: "old"})
	mustPush(t, q, Item[string]{Value: "new"})
	if !errors.Is(old.Err(), ErrEvicted) {
		t.Fatalf("old: %v", old.Err())
	}
	if r := reps.get(); len(r) != 1 || r[0].Item.Value != "old" {
		t.Fatalf("reports %+v", r)
	}
	q2 := New((&scriptSink{}).send, WithCapacity[string](1), WithOverflow[string](DropOldest))
	q2.Pause()
	mustPush(t, q2, Item[string]{Value: "stop", Policy: FireAndForget})
	if _, err := q2.Push(Item[string]{Value: "x"}); !errors.Is(err, ErrFull) {
		t.Fatalf("nothing evictable: %v", err)
	}
	mustClose(t, q)
	if left := reps.closedValues(); len(left) != 2 || left[0] != "stop" || left[1] != "new" {
		t.Fatalf("leftovers %v", left)
	}
	mustClose(t, q2)
}

func TestPushRejectsBadItems(t *testing.T) {
	q := New((&scriptSink{}).send, WithMaxBytes(10, func(s string) int { return len(s) - 5 }))
	defer mustClose(t, q)
	if _, err := q.Push(Item[string]{Policy: 7}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("bad policy: %v", err)
	}
	if _, err := q.Push(Item[string]{Value: "x"}); !errors.Is(err, ErrInvalid) {
		t.Fatalf("negative size: %v", err)
	}
	if q.Len() != 0 {
		t.Fatalf("Len %d", q.Len())
	}
}

// Invalid option values panic at construction with the package prefix.
// (An option for another element type is a compile error: Option[T].)
func TestInvalidOptionsPanic(t *testing.T) {
	for name, mk := range map[string]func(){
		"capacity":     func() { WithCapacity[string](0) },
		"max bytes":    func() { WithMaxBytes(0, func(string) int { return 0 }) },
		"size func":    func() { WithMaxBytes[string](1, nil) },
		"overflow":     func() { WithOverflow[string](Overflow(9)) },
		"max attempts": func() { WithMaxAttempts[string](-1) },
		"nil send":     func() { New[string](nil) },
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if r := recover(); r == nil || !strings.HasPrefix(fmt.Sprint(r), "sendqueue: ") {
					t.Fatalf("recovered %v", r)
				}
			}()
			mk()
		})
	}
}

// New skips nil options.
func TestNilOptionsAreSkipped(t *testing.T) {
	q := New((&scriptSink{}).send, nil, WithCapacity[string](1), nil)
	defer mustClose(t, q)
	q.Pause()
	mustPush(t, q, Item[string]{Value: "a"})
	if _, err := q.Push(Item[string]{Value: "b"}); !errors.Is(err, ErrFull) {
		t.Fatalf("second Push with capacity 1: %v", err)
	}
}

func TestDefaultReportLogs(t *testing.T) {
	var buf bytes.Buffer
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&buf, nil)))
	defer slog.SetDefault(old)
	q := New((&scriptSink{}).send)
	q.Pause()
	mustPush(t, q, Item[string]{Value: "v", Key: "key-1"})
	mustClose(t, q)
	if s := buf.String(); !strings.Contains(s, "key=key-1") || !strings.Contains(s, "queue closed") {
		t.Fatalf("log %q", s)
	}
}

func TestGeneratedKeysAreUnique(t *testing.T) {
	q := New((&scriptSink{}).send, WithCapacity[string](1000))
	q2 := New((&scriptSink{}).send)
	q.Pause()
	q2.Pause()
	seen := map[string]bool{}
	for range 1000 {
		k := mustPush(t, q, Item[string]{}).Key()
		if seen[k] || len(k) != keyLen {
			t.Fatalf("key %q repeated or malformed", k)
		}
		seen[k] = true
	}
	if k := mustPush(t, q2, Item[string]{}).Key(); seen[k] {
		t.Fatalf("two queues generated %q", k)
	}
	mustClose(t, q)
	mustClose(t, q2)
}

func TestDefaultClassifier(t *testing.T) {
	tests := []struct {
		err  error
		want Class
	}{
		{&HTTPError{StatusCode: 404}, ClassRetry},
		{fmt.Errorf("post: %w", &HTTPError{StatusCode: 408}), ClassRetry},
		{&HTTPError{StatusCode: 429}, ClassRetry},
		{&HTTPError{StatusCode: 500}, ClassRetry},
		{&HTTPError{StatusCode: 503}, ClassRetry},
		{&HTTPError{StatusCode: 400}, ClassDrop},
		{&HTTPError{StatusCode: 401}, ClassDrop},
		{&HTTPError{StatusCode: 413}, ClassDrop},
		{&HTTPError{StatusCode: 302}, ClassDrop},
		{fmt.Errorf("x: %w", ErrDisconnected), ClassPause},
		{&url.Error{Op: "Post", URL: "http://127.0.0.1", Err: syscall.ECONNREFUSED}, ClassRetry},
		{&net.OpError{Op: "read", Err: syscall.ECONNRESET}, ClassRetry},
		{io.EOF, ClassRetry},
		{fmt.Errorf("body: %w", io.ErrUnexpectedEOF), ClassRetry},
		{syscall.EPIPE, ClassRetry},
		{context.DeadlineExceeded, ClassRetry},
		{errors.New("json: unsupported value"), ClassDrop},
	}
	for _, tt := range tests {
		if got := DefaultClassifier(tt.err); got != tt.want {
			t.Errorf("DefaultClassifier(%v) = %v, want %v", tt.err, got, tt.want)
		}
	}
}

func TestCustomClassifier(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		errBusy := errors.New("busy")
		sink := &scriptSink{script: []error{errBusy, errBusy}}
		q := New(sink.send, WithBackOff[string](constBackOff{time.Second}),
			WithClassifier[string](func(err error) Class {
				if errors.Is(err, errBusy) {
					return ClassRetry
				}
				return ClassDrop
			}))
		if err := mustPush(t, q, Item[string]{Value: "a"}).Wait(t.Context()); err != nil {
			t.Fatal(err)
		}
		if n := len(sink.values()); n != 3 {
			t.Fatalf("%d attempts, want 3", n)
		}
		mustClose(t, q)
	})
}

func TestTicketWaitHonoursContext(t *testing.T) {
	q := New((&scriptSink{}).send)
	q.Pause()
	tk := mustPush(t, q, Item[string]{Value: "a"})
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := tk.Wait(ctx); !errors.Is(err, context.Canceled) || tk.Status() != Pending {
		t.Fatalf("Wait: %v, status %v", err, tk.Status())
	}
	var zero Ticket
	if zero.Status() != Pending || zero.Done() != nil {
		t.Fatalf("zero ticket")
	}
	mustClose(t, q)
}

// Many producers, a flaky sink, and pauses/resumes, under -race: each
// producer's items arrive in its order, every item is delivered exactly
// once by a deduplicating receiver, and the cap is never exceeded.
func TestConcurrentProducers(t *testing.T) {
	const (
		producers = 8
		perProd   = 300
		capacity  = 16
	)
	var (
		mu      sync.Mutex
		seen    = map[string]bool{}
		order   = map[int][]int{}
		calls   int
		overCap bool
		q       *Queue[[2]int]
	)
	// The connection goroutine below is the only caller of Pause and
	// Resume. It flaps once per send attempt (pulse) and resumes after
	// every pause the queue takes itself (selfPaused), so nothing spins
	// and a loaded single CPU still makes progress.
	pulse := make(chan struct{}, 1)
	selfPaused := make(chan struct{})
	classify := func(err error) Class {
		c := DefaultClassifier(err)
		if c == ClassPause {
			selfPaused <- struct{}{}
		}
		return c
	}
	q = New(func(_ context.Context, it Item[[2]int]) error {
		select {
		case pulse <- struct{}{}:
		default:
		}
		mu.Lock()
		defer mu.Unlock()
		calls++
		if q.Len() > capacity {
			overCap = true
		}
		executed := !seen[it.Key]
		if executed {
			seen[it.Key] = true
			order[it.Value[0]] = append(order[it.Value[0]], it.Value[1])
		}
		switch calls % 7 {
		case 3:
			return &HTTPError{StatusCode: 503} // after executing: response lost
		case 5:
			return fmt.Errorf("w: %w", ErrDisconnected)
		}
		return nil
	}, WithCapacity[[2]int](capacity), WithBackOff[[2]int](constBackOff{0}), WithClassifier[[2]int](classify))

	var wg sync.WaitGroup
	done := make(chan struct{})
	wg.Go(func() { // the connection flaps
		for {
			select {
			case <-done:
				q.Resume()
				return
			case <-selfPaused:
				// A Resume after classifying and before the pause is
				// applied cancels that pause (see commit), so resuming
				// now always leaves the queue running.
				q.Resume()
			case <-pulse:
				q.Pause()
				runtime.Gosched()
				q.Resume()
			}
		}
	})
	var prodWG sync.WaitGroup
	for p := range producers {
		prodWG.Go(func() {
			var last *Ticket
			for i := 0; i < perProd; {
				tk, err := q.Push(Item[[2]int]{Value: [2]int{p, i}})
				if errors.Is(err, ErrFull) {
					if last != nil {
						<-last.Done()
					} else if err := q.Flush(t.Context()); err != nil {
						t.Errorf("Flush while full: %v", err)
						return
					}
					continue
				}
				if err != nil {
					t.Errorf("Push: %v", err)
					return
				}
				last = tk
				i++
			}
			if err := last.Wait(context.Background()); err != nil {
				t.Errorf("last ticket: %v", err)
			}
		})
	}
	prodWG.Wait()
	close(done)
	wg.Wait()
	if err := q.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := q.Close(); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if overCap {
		t.Fatal("Len exceeded the cap")
	}
	for p := range producers {
		if len(order[p]) != perProd {
			t.Fatalf("producer %d: %d items executed, want %d", p, len(order[p]), perProd)
		}
		for i, v := range order[p] {
			if v != i {
				t.Fatalf("producer %d: item %d arrived at position %d", p, v, i)
			}
		}
	}
}

func TestGeneratedKeyFormat(t *testing.T) {
	q := New((&scriptSink{}).send, WithCapacity[string](100))
	defer mustClose(t, q)
	q.Pause()
	for i := range 70 {
		k := mustPush(t, q, Item[string]{}).Key()
		if want := fmt.Sprintf("%s%016x", q.keyPrefix, i); k != want {
			t.Fatalf("key %d = %q, want %q", i, k, want)
		}
	}
}

func TestDropOldestNeverEvictsTheItemInFlight(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		var reps reportLog
		var got []string
		q := New(func(_ context.Context, it Item[string]) error {
			<-release
			got = append(got, it.Value)
			return nil
		}, WithCapacity[string](2), WithOverflow[string](DropOldest), WithReport(reps.add))
		a := mustPush(t, q, Item[string]{Value: "a"})
		synctest.Wait() // "a" is in flight
		b := mustPush(t, q, Item[string]{Value: "b"})
		c := mustPush(t, q, Item[string]{Value: "c"})
		if a.Status() != Pending || !errors.Is(b.Err(), ErrEvicted) || q.Len() != 2 {
			t.Fatalf("a %v, b %v, len %d", a.Status(), b.Err(), q.Len())
		}
		close(release)
		if err := c.Wait(t.Context()); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got, []string{"a", "c"}) || a.Status() != Delivered {
			t.Fatalf("delivered %v, a %v", got, a.Status())
		}
		if r := reps.get(); len(r) != 1 || r[0].Item.Value != "b" {
			t.Fatalf("reports %+v", r)
		}
		mustClose(t, q)
	})
}

// A panic in the user's send function must not crash the program from the
// delivery goroutine: the item is dropped and reported with the panic, and
// the items behind it are still delivered in order.
func TestSendPanicIsReportedNotFatal(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var reps reportLog
		var mu sync.Mutex
		var sent []string
		q := New(func(_ context.Context, it Item[string]) error {
			if it.Value == "boom" {
				panic("bad value")
			}
			mu.Lock()
			sent = append(sent, it.Value)
			mu.Unlock()
			return nil
		}, WithReport(reps.add))
		a := mustPush(t, q, Item[string]{Value: "a"})
		boom := mustPush(t, q, Item[string]{Value: "boom"})
		c := mustPush(t, q, Item[string]{Value: "c"})
		if err := q.Flush(t.Context()); err != nil {
			t.Fatal(err)
		}
		if a.Status() != Delivered || c.Status() != Delivered {
			t.Fatalf("a %v, c %v", a.Status(), c.Status())
		}
		err := boom.Err()
		if boom.Status() != Failed || !errors.Is(err, ErrDropped) || !strings.Contains(err.Error(), "bad value") {
			t.Fatalf("boom: %v %v", boom.Status(), err)
		}
		rs := reps.get()
		if len(rs) != 1 || rs[0].Item.Value != "boom" || rs[0].Attempts != 1 || !errors.Is(rs[0].Err, ErrDropped) {
			t.Fatalf("reports %+v", rs)
		}
		mu.Lock()
		defer mu.Unlock()
		if !slices.Equal(sent, []string{"a", "c"}) {
			t.Fatalf("sent %v", sent)
		}
		mustClose(t, q)
	})
}

// A classifier that panics or returns a Class outside the three must not
// stop the loop, nor make it retry without consulting the back-off.
func TestBadClassifierResults(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		errOdd := errors.New("odd")
		errPanic := errors.New("panic please")
		var reps reportLog
		sink := &scriptSink{script: []error{errOdd, errOdd, errPanic}}
		bo := &recBackOff{waits: []time.Duration{time.Second, time.Second, time.Second}}
		q := New(sink.send, WithBackOff[string](bo), WithReport(reps.add),
			WithClassifier[string](func(err error) Class {
				if errors.Is(err, errPanic) {
					panic("classifier bug")
				}
				return Class(42)
			}))
		start := time.Now()
		a := mustPush(t, q, Item[string]{Value: "a"})
		b := mustPush(t, q, Item[string]{Value: "b"})
		err := a.Wait(t.Context())
		if !errors.Is(err, ErrDropped) || !errors.Is(err, errPanic) || !strings.Contains(err.Error(), "classifier bug") {
			t.Fatalf("a: %v", err)
		}
		if err := b.Wait(t.Context()); err != nil {
			t.Fatalf("b: %v", err)
		}
		// The two Class(42) failures were retried after the back-off (1 s each).
		if d := time.Since(start); d != 2*time.Second {
			t.Fatalf("a settled after %v, want 2s of back-off", d)
		}
		if got := sink.values(); !slices.Equal(got, []string{"a", "a", "a", "b"}) {
			t.Fatalf("attempts %v", got)
		}
		if rs := reps.get(); len(rs) != 1 || rs[0].Item.Value != "a" || rs[0].Attempts != 3 {
			t.Fatalf("reports %+v", rs)
		}
		mustClose(t, q)
	})
}

// The user-visible order of a failure: the report callback runs first, and
// the ticket settles only after it has returned, so a goroutine that waits
// on the ticket and then looks at what the report recorded always finds
// it. (TestMaxAttempts once saw "reports []" after Wait returned, about one
// run in six, because the ticket settled before the report ran.)
func TestIncident_TicketSettledBeforeReport(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		var reps reportLog
		q := New(func(context.Context, Item[string]) error { return &HTTPError{StatusCode: 400} },
			WithReport(func(r Report[string]) {
				<-release
				reps.add(r)
			}))
		tk := mustPush(t, q, Item[string]{Value: "a"})
		synctest.Wait() // the report callback is blocked
		if st := tk.Status(); st != Pending {
			t.Fatalf("ticket %v while its report is still running", st)
		}
		select {
		case <-tk.Done():
			t.Fatal("Done closed while the report is still running")
		default:
		}
		flushed := make(chan error, 1)
		go func() { flushed <- q.Flush(context.Background()) }()
		synctest.Wait()
		select {
		case err := <-flushed:
			t.Fatalf("Flush returned %v while a report was still running", err)
		default:
		}
		close(release)
		if err := tk.Wait(t.Context()); !errors.Is(err, ErrDropped) {
			t.Fatalf("Wait: %v", err)
		}
		if r := reps.get(); len(r) != 1 || r[0].Err != tk.Err() {
			t.Fatalf("after Wait: reports %+v, ticket %v", r, tk.Err())
		}
		if err := <-flushed; err != nil {
			t.Fatalf("Flush: %v", err)
		}
		mustClose(t, q)
	})
}

// An item whose send failed (a 404 from a stale connection id) and that
// is then evicted, or left at Close, is reported with its last send error
// as well as the reason it left: before, the report said only "evicted" or
// "queue closed", and the 404 that explained why it was still queued was
// lost.
func TestIncident_LastSendErrorLostOnEvictOrClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		notFound := &HTTPError{StatusCode: 404}
		var reps reportLog
		sink := &scriptSink{script: []error{notFound}}
		q := New(sink.send, WithCapacity[string](2), WithOverflow[string](DropOldest),
			WithBackOff[string](constBackOff{time.Minute}), WithReport(reps.add))
		a := mustPush(t, q, Item[string]{Value: "a"})
		synctest.Wait() // a failed with 404 and waits for its back-off
		if n := len(sink.values()); n != 1 {
			t.Fatalf("%d attempts, want 1", n)
		}
		b := mustPush(t, q, Item[string]{Value: "b"})
		mustPush(t, q, Item[string]{Value: "c"}) // evicts a, the oldest
		for _, want := range []error{ErrEvicted, notFound} {
			if !errors.Is(a.Err(), want) {
				t.Fatalf("evicted ticket: %v, want it to wrap %v", a.Err(), want)
			}
		}
		mustClose(t, q)
		if !errors.Is(b.Err(), ErrClosed) || errors.Is(b.Err(), notFound) {
			t.Fatalf("never-sent leftover: %v, want ErrClosed alone", b.Err())
		}
		r := reps.get()
		if len(r) != 3 || r[0].Item.Value != "a" || r[0].Err != a.Err() || r[0].Attempts != 1 {
			t.Fatalf("reports %+v", r)
		}
	})
}

// A head item that failed and is still queued at Close carries its last
// send error too.
func TestCloseReportsLastSendError(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		notFound := &HTTPError{StatusCode: 404}
		var reps reportLog
		sink := &scriptSink{script: []error{notFound}}
		q := New(sink.send, WithBackOff[string](constBackOff{time.Minute}), WithReport(reps.add))
		tk := mustPush(t, q, Item[string]{Value: "a"})
		synctest.Wait() // waiting for the back-off after the 404
		mustClose(t, q)
		if !errors.Is(tk.Err(), ErrClosed) || !errors.Is(tk.Err(), notFound) {
			t.Fatalf("ticket: %v", tk.Err())
		}
		if r := reps.get(); len(r) != 1 || r[0].Err != tk.Err() || r[0].Attempts != 1 {
			t.Fatalf("reports %+v", r)
		}
	})
}

// After Close, Push fails with ErrClosed whatever the item: before, an
// invalid or oversized item got ErrInvalid or ErrTooLarge, although the
// doc promised ErrClosed from then on.
func TestIncident_PushAfterCloseNotErrClosed(t *testing.T) {
	q := New((&scriptSink{}).send, WithMaxBytes(4, func(s string) int { return len(s) - 1 }))
	mustClose(t, q)
	for name, it := range map[string]Item[string]{
		"valid":          {Value: "ab"},
		"unknown policy": {Value: "ab", Policy: 9},
		"negative size":  {Value: ""},
		"too large":      {Value: "abcdefgh"},
	} {
		if tk, err := q.Push(it); !errors.Is(err, ErrClosed) || tk != nil {
			t.Errorf("%s: Push after Close = %v, %v; want ErrClosed", name, tk, err)
		}
	}
}

// Close is idempotent and waits for the delivery goroutine each time.
func TestCloseTwiceConcurrently(t *testing.T) {
	q := New((&scriptSink{}).send)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			if err := q.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			select {
			case <-q.loopDone:
			default:
				t.Errorf("Close returned before the delivery goroutine exited")
			}
		})
	}
	wg.Wait()
}

func TestDecide(t *testing.T) {
	e := errors.New("boom")
	for _, tc := range []struct {
		name        string
		err         error
		class       Class
		policy      Policy
		attempts    int
		maxAttempts int
		want        action
		wantReason  error
	}{
		{"delivered", nil, ClassRetry, Retry, 1, 0, delivered, nil},
		{"delivered ignores class", nil, ClassDrop, FireAndForget, 9, 1, delivered, nil},
		{"drop", e, ClassDrop, Retry, 1, 0, failed, ErrDropped},
		{"drop beats fire-and-forget", e, ClassDrop, FireAndForget, 1, 0, failed, ErrDropped},
		{"fire-and-forget", e, ClassRetry, FireAndForget, 1, 0, failed, ErrGaveUp},
		{"fire-and-forget pause", e, ClassPause, FireAndForget, 1, 0, failed, ErrGaveUp},
		{"out of attempts", e, ClassRetry, Retry, 3, 3, failed, ErrGaveUp},
		{"out of attempts while paused", e, ClassPause, Retry, 3, 3, failed, ErrGaveUp},
		{"attempts left", e, ClassRetry, Retry, 2, 3, retry, nil},
		{"no limit", e, ClassRetry, Retry, 1000, 0, retry, nil},
		{"pause", e, ClassPause, Retry, 1, 0, wait, nil},
	} {
		got, reason := decide(tc.err, tc.class, tc.policy, tc.attempts, tc.maxAttempts)
		if got != tc.want || (tc.wantReason == nil) != (reason == nil) ||
			(reason != nil && (!errors.Is(reason, tc.wantReason) || !errors.Is(reason, e))) {
			t.Errorf("%s: decide = %v, %v; want %v, %v", tc.name, got, reason, tc.want, tc.wantReason)
		}
	}
}

func TestPickVictims(t *testing.T) {
	type it struct {
		p Policy
		s int
	}
	for _, tc := range []struct {
		name     string
		items    []it
		capacity int
		maxBytes int64
		size     int
		sending  bool
		want     []int
	}{
		{"room left", []it{{Retry, 1}}, 2, 0, 1, false, []int{}},
		{"oldest", []it{{Retry, 1}, {Retry, 1}}, 2, 0, 1, false, []int{0}},
		{"skips the item being sent", []it{{Retry, 1}, {Retry, 1}}, 2, 0, 1, true, []int{1}},
		{"skips fire-and-forget", []it{{FireAndForget, 1}, {Retry, 1}}, 2, 0, 1, false, []int{1}},
		{"nothing evictable", []it{{FireAndForget, 1}}, 1, 0, 1, false, nil},
		{"only the one in flight", []it{{Retry, 1}}, 1, 0, 1, true, nil},
		{"bytes need two", []it{{Retry, 3}, {Retry, 3}, {Retry, 3}}, 10, 9, 5, false, []int{0, 1}},
		{"bytes and count", []it{{Retry, 1}, {Retry, 8}}, 2, 9, 2, false, []int{0, 1}},
		{"bytes impossible", []it{{FireAndForget, 9}}, 10, 9, 1, false, nil},
	} {
		var bytes int64
		for _, x := range tc.items {
			bytes += int64(x.s)
		}
		got := pickVictims(len(tc.items), tc.capacity, bytes, tc.maxBytes, tc.size, tc.sending,
			func(i int) (Policy, int) { return tc.items[i].p, tc.items[i].s })
		if (got == nil) != (tc.want == nil) || !slices.Equal(got, tc.want) {
			t.Errorf("%s: pickVictims = %v, want %v", tc.name, got, tc.want)
		}
	}
}
