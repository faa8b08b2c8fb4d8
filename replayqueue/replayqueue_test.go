package replayqueue_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/steadfast-go/steadfast/replayqueue"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// sink records what a connection was sent. It is safe for concurrent use
// although the queue never calls send concurrently.
type sink[T any] struct {
	mu   sync.Mutex
	got  []T
	fail int // fail the send after this many successes; <0 never
}

func newSink[T any]() *sink[T] { return &sink[T]{fail: -1} }

var errBroken = errors.New("connection broken")

func (s *sink[T]) send(v T) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail == 0 {
		return errBroken
	}
	if s.fail > 0 {
		s.fail--
	}
	s.got = append(s.got, v)
	return nil
}

func (s *sink[T]) items() []T {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.got)
}

func mustConnect[T, R any](t *testing.T, q *replayqueue.Queue[T, R], send func(T) error) uint64 {
	t.Helper()
	gen, err := q.Connect(send)
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	return gen
}

func mustSend[T, R any](t *testing.T, q *replayqueue.Queue[T, R], v T) {
	t.Helper()
	if err := q.Send(context.Background(), v); err != nil {
		t.Fatalf("Send(%v): %v", v, err)
	}
}

func TestSendWhileConnectedGoesStraightThrough(t *testing.T) {
	q := replayqueue.New[int, int]()
	s := newSink[int]()
	mustConnect(t, q, s.send)
	for i := range 5 {
		mustSend(t, q, i)
		// Delivered before Send returned: no buffering, no goroutine hop.
		if got := s.items(); len(got) != i+1 || got[i] != i {
			t.Fatalf("after Send(%d) sink has %v", i, got)
		}
	}
	if q.Len() != 0 {
		t.Fatalf("Len = %d while connected, want 0", q.Len())
	}
}

func TestZeroValueIsUsable(t *testing.T) {
	var q replayqueue.Queue[string, string]
	mustSend(t, &q, "a")
	s := newSink[string]()
	mustConnect(t, &q, s.send)
	mustSend(t, &q, "b")
	if got := s.items(); !slices.Equal(got, []string{"a", "b"}) {
		t.Fatalf("sink = %v, want [a b]", got)
	}
	if !q.Disconnect(q.Generation(), nil) {
		t.Fatal("Disconnect of the current generation failed")
	}
	for i := range replayqueue.DefaultMaxItems {
		mustSend(t, &q, strconv.Itoa(i))
	}
	if err := q.Send(t.Context(), "x"); !errors.Is(err, replayqueue.ErrFull) {
		t.Fatalf("Send beyond DefaultMaxItems = %v, want ErrFull", err)
	}
	if got := q.Fail(nil); len(got) != replayqueue.DefaultMaxItems {
		t.Fatalf("Close handed back %d items, want %d", len(got), replayqueue.DefaultMaxItems)
	}
}

func TestOrderReplayThenBufferThenNew(t *testing.T) {
	q := replayqueue.New[string, string]()
	for _, k := range []string{"s1", "s2", "s3"} {
		if err := q.AddReplay(k, func(id replayqueue.ReplayID) string { return k }, nil); err != nil {
			t.Fatal(err)
		}
	}
	q.RemoveReplay("s2")
	mustSend(t, q, "b1")
	mustSend(t, q, "b2")
	s := newSink[string]()
	mustConnect(t, q, s.send)
	mustSend(t, q, "n1")
	want := []string{"s1", "s3", "b1", "b2", "n1"}
	if got := s.items(); !slices.Equal(got, want) {
		t.Fatalf("sent %v, want %v", got, want)
	}
	if got := q.ReplayKeys(); !slices.Equal(got, []string{"s1", "s3"}) {
		t.Fatalf("ReplayKeys = %v", got)
	}
	q.Close()
}

func TestAddReplaySameKeyReplacesAndMovesToEnd(t *testing.T) {
	q := replayqueue.New[string, string]()
	add := func(k, v string) {
		if err := q.AddReplay(k, func(replayqueue.ReplayID) string { return v }, nil); err != nil {
			t.Fatal(err)
		}
	}
	add("a", "a1")
	add("b", "b1")
	add("a", "a2")
	s := newSink[string]()
	mustConnect(t, q, s.send)
	if got := s.items(); !slices.Equal(got, []string{"b1", "a2"}) {
		t.Fatalf("sent %v, want [b1 a2]", got)
	}
	q.Close()
}

// The byte bound includes the new item: nats.go checks before appending and
// overshoots by one message; this queue never holds more than the bound.
func TestByteBoundNeverExceededEvenByOne(t *testing.T) {
	q := replayqueue.New[string, string](replayqueue.WithMaxBytes(10, func(s string) int { return len(s) }))
	mustSend(t, q, "aaaa")
	mustSend(t, q, "bbbb")
	if err := q.Send(t.Context(), "cccc"); !errors.Is(err, replayqueue.ErrFull) {
		t.Fatalf("third 4-byte item under a 10-byte bound: %v, want ErrFull", err)
	}
	mustSend(t, q, "dd") // exactly 10
	if st := q.Stats(); st.Bytes != 10 || st.Buffered != 3 {
		t.Fatalf("stats = %+v, want 10 bytes in 3 items", st)
	}
	if err := q.Send(t.Context(), "e"); !errors.Is(err, replayqueue.ErrFull) {
		t.Fatalf("one byte over: %v, want ErrFull", err)
	}
	if err := q.Send(t.Context(), "xxxxxxxxxxx"); !errors.Is(err, replayqueue.ErrTooLarge) {
		t.Fatalf("11-byte item: %v, want ErrTooLarge", err)
	}
	if got := q.Fail(nil); !slices.Equal(got, []string{"aaaa", "bbbb", "dd"}) {
		t.Fatalf("handed back %v", got)
	}
}

// A byte bound near math.MaxInt must not overflow the running total: the
// second half-of-the-bound item does not fit and is rejected.
func TestByteBoundDoesNotOverflow(t *testing.T) {
	half := math.MaxInt/2 + 1
	q := replayqueue.New[int, int](replayqueue.WithMaxBytes(math.MaxInt, func(n int) int { return n }))
	mustSend(t, q, half)
	if err := q.Send(t.Context(), half); !errors.Is(err, replayqueue.ErrFull) {
		t.Fatalf("second item of %d bytes under a %d-byte bound: %v, want ErrFull", half, math.MaxInt, err)
	}
	if st := q.Stats(); st.Bytes != half || st.Buffered != 1 {
		t.Fatalf("stats %+v, want %d bytes in 1 item", st, half)
	}
	if got := q.Fail(nil); !slices.Equal(got, []int{half}) {
		t.Fatalf("handed back %v", got)
	}
}

func TestItemBound(t *testing.T) {
	q := replayqueue.New[int, int](replayqueue.WithMaxItems[int](2))
	mustSend(t, q, 1)
	mustSend(t, q, 2)
	if err := q.Send(t.Context(), 3); !errors.Is(err, replayqueue.ErrFull) {
		t.Fatalf("Send = %v, want ErrFull", err)
	}
	if got := q.Fail(nil); !slices.Equal(got, []int{1, 2}) {
		t.Fatalf("handed back %v", got)
	}
}

func TestDropOldestReportsEveryEviction(t *testing.T) {
	var dropped []string
	q := replayqueue.New[string, string](
		replayqueue.WithMaxItems[string](3),
		replayqueue.WithMaxBytes(6, func(s string) int { return len(s) }),
		replayqueue.WithOverflow[string](replayqueue.DropOldest),
		replayqueue.WithDropped(func(s string, reason error) {
			if !errors.Is(reason, replayqueue.ErrEvicted) {
				t.Errorf("reason = %v, want ErrEvicted", reason)
			}
			dropped = append(dropped, s)
		}),
	)
	for _, s := range []string{"a", "b", "c", "d"} { // item bound evicts a
		mustSend(t, q, s)
	}
	mustSend(t, q, "eeee") // item bound evicts b; c,d,eeee = 6 bytes fits
	if !slices.Equal(dropped, []string{"a", "b"}) {
		t.Fatalf("dropped %v, want [a b]", dropped)
	}
	mustSend(t, q, "fffff") // byte bound: evicts c, d and eeee
	if !slices.Equal(dropped, []string{"a", "b", "c", "d", "eeee"}) {
		t.Fatalf("dropped %v, want [a b c d eeee]", dropped)
	}
	if st := q.Stats(); st.Dropped != 5 || st.Bytes != 5 || st.Buffered != 1 {
		t.Fatalf("stats = %+v", st)
	}
	if got := q.Fail(nil); !slices.Equal(got, []string{"fffff"}) {
		t.Fatalf("handed back %v, want [fffff]", got)
	}
}

func TestBlockWaitsForReconnect(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		q := replayqueue.New[int, int](replayqueue.WithMaxItems[int](1), replayqueue.WithOverflow[int](replayqueue.Block))
		mustSend(t, q, 1)
		done := make(chan error, 1)
		go func() { done <- q.Send(context.Background(), 2) }()
		synctest.Wait()
		select {
		case err := <-done:
			t.Fatalf("Send returned %v while the buffer was full", err)
		default:
		}
		s := newSink[int]()
		mustConnect(t, q, s.send)
		if err := <-done; err != nil {
			t.Fatalf("blocked Send: %v", err)
		}
		if got := s.items(); !slices.Equal(got, []int{1, 2}) {
			t.Fatalf("sent %v, want [1 2]", got)
		}
		q.Close()
	})
}

func TestBlockHonoursContextAndLeavesQueueUnchanged(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		q := replayqueue.New[int, int](replayqueue.WithMaxItems[int](1), replayqueue.WithOverflow[int](replayqueue.Block))
		mustSend(t, q, 1)
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		start := time.Now()
		if err := q.Send(ctx, 2); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Send = %v, want DeadlineExceeded", err)
		}
		if d := time.Since(start); d != time.Second {
			t.Fatalf("Send waited %v, want 1s", d)
		}
		if got := q.Fail(nil); !slices.Equal(got, []int{1}) {
			t.Fatalf("handed back %v, want [1]", got)
		}
	})
}

func TestFailWakesBlockedSenders(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		q := replayqueue.New[int, int](replayqueue.WithMaxItems[int](1), replayqueue.WithOverflow[int](replayqueue.Block))
		mustSend(t, q, 1)
		cause := errors.New("gave up reconnecting")
		done := make(chan error, 1)
		go func() { done <- q.Send(context.Background(), 2) }()
		synctest.Wait()
		if got := q.Fail(cause); !slices.Equal(got, []int{1}) {
			t.Fatalf("Fail handed back %v, want [1]", got)
		}
		err := <-done
		if !errors.Is(err, replayqueue.ErrClosed) || !errors.Is(err, cause) {
			t.Fatalf("blocked Send after Fail = %v, want ErrClosed wrapping the cause", err)
		}
	})
}

func TestFailHandsBackEverythingAndRejectsAfter(t *testing.T) {
	q := replayqueue.New[int, int]()
	for i := range 5 {
		mustSend(t, q, i)
	}
	cause := errors.New("upstreams exhausted")
	if got := q.Fail(cause); !slices.Equal(got, []int{0, 1, 2, 3, 4}) {
		t.Fatalf("Fail handed back %v", got)
	}
	if got := q.Fail(errors.New("again")); got != nil {
		t.Fatalf("second Fail handed back %v", got)
	}
	err := q.Send(t.Context(), 9)
	if !errors.Is(err, replayqueue.ErrClosed) || !errors.Is(err, cause) {
		t.Fatalf("Send after Fail = %v", err)
	}
	if _, err := q.Connect(newSink[int]().send); !errors.Is(err, replayqueue.ErrClosed) {
		t.Fatalf("Connect after Fail = %v", err)
	}
	if err := q.AddReplay("k", func(replayqueue.ReplayID) int { return 0 }, nil); !errors.Is(err, replayqueue.ErrClosed) {
		t.Fatalf("AddReplay after Fail = %v", err)
	}
	if st := q.Stats(); st.Buffered != 0 || st.Bytes != 0 {
		t.Fatalf("stats after Fail = %+v", st)
	}
}

func TestSendFailureDisconnectsAndKeepsItem(t *testing.T) {
	q := replayqueue.New[int, int]()
	s := newSink[int]()
	gen := mustConnect(t, q, s.send)
	s.fail = 1
	mustSend(t, q, 1)
	mustSend(t, q, 2) // the send fails: queue disconnects, 2 is buffered
	if q.Connected() || q.Generation() != gen+1 {
		t.Fatalf("after a failed send: connected=%v gen=%d, want disconnected gen %d", q.Connected(), q.Generation(), gen+1)
	}
	mustSend(t, q, 3)
	if q.Disconnect(gen, errBroken) {
		t.Fatal("Disconnect of the already-lost generation reported true")
	}
	s2 := newSink[int]()
	mustConnect(t, q, s2.send)
	if got := append(s.items(), s2.items()...); !slices.Equal(got, []int{1, 2, 3}) {
		t.Fatalf("delivered %v, want [1 2 3]", got)
	}
	q.Close()
}

func TestConnectFlushFailureKeepsFailedItemAtHead(t *testing.T) {
	q := replayqueue.New[int, int]()
	for i := range 4 {
		mustSend(t, q, i)
	}
	s := newSink[int]()
	s.fail = 2
	gen, err := q.Connect(s.send)
	if !errors.Is(err, errBroken) {
		t.Fatalf("Connect = %v, want the send error", err)
	}
	if q.Connected() || q.Generation() != gen+1 || gen%2 != 1 {
		t.Fatalf("connected=%v gen=%d (Connect said %d)", q.Connected(), q.Generation(), gen)
	}
	mustSend(t, q, 4)
	s2 := newSink[int]()
	mustConnect(t, q, s2.send)
	if got := append(s.items(), s2.items()...); !slices.Equal(got, []int{0, 1, 2, 3, 4}) {
		t.Fatalf("delivered %v, want each item once in order", got)
	}
	q.Close()
}

func TestConnectTwiceAndStaleDisconnect(t *testing.T) {
	q := replayqueue.New[int, int]()
	if q.Generation() != 0 {
		t.Fatalf("initial generation %d", q.Generation())
	}
	g1 := mustConnect(t, q, newSink[int]().send)
	if _, err := q.Connect(newSink[int]().send); !errors.Is(err, replayqueue.ErrConnected) {
		t.Fatalf("second Connect = %v, want ErrConnected", err)
	}
	if !q.Disconnect(g1, nil) {
		t.Fatal("Disconnect of the current generation reported false")
	}
	g2 := mustConnect(t, q, newSink[int]().send)
	if g1 != 1 || g2 != 3 {
		t.Fatalf("generations %d, %d; want 1, 3", g1, g2)
	}
	if q.Disconnect(g1, nil) || !q.Connected() {
		t.Fatal("a stale Disconnect took down the new connection")
	}
	q.Close()
	if q.Generation() != 4 {
		t.Fatalf("generation after Close = %d, want 4", q.Generation())
	}
}

// Invalid option values panic at construction with the package prefix.
// (An option for another element type is a compile error: Option[T].)
func TestInvalidOptionsPanic(t *testing.T) {
	for name, mk := range map[string]func(){
		"max items": func() { replayqueue.WithMaxItems[int](0) },
		"max bytes": func() { replayqueue.WithMaxBytes(0, func(int) int { return 0 }) },
		"size func": func() { replayqueue.WithMaxBytes[int](1, nil) },
		"overflow":  func() { replayqueue.WithOverflow[int](replayqueue.Overflow(9)) },
		"timeout":   func() { replayqueue.WithReplayTimeout[int](0) },
		"nil build": func() { replayqueue.New[int, int]().AddReplay("k", nil, nil) },
		"nil send":  func() { replayqueue.New[int, int]().Connect(nil) },
	} {
		t.Run(name, func(t *testing.T) {
			defer func() {
				if r := recover(); r == nil || !strings.HasPrefix(fmt.Sprint(r), "replayqueue: ") {
					t.Fatalf("recover() = %v, want a replayqueue: panic", r)
				}
			}()
			mk()
		})
	}
}

// New skips nil options.
func TestNilOptionsAreSkipped(t *testing.T) {
	q := replayqueue.New[int, int](nil, replayqueue.WithMaxItems[int](1), nil)
	mustSend(t, q, 1)
	if err := q.Send(context.Background(), 2); !errors.Is(err, replayqueue.ErrFull) {
		t.Fatalf("second Send with one slot: %v", err)
	}
}

func TestParseReplayID(t *testing.T) {
	for _, id := range []replayqueue.ReplayID{{1, 1}, {3, 42}, {^uint64(0), ^uint64(0)}, {0, 0}} {
		got, ok := replayqueue.ParseReplayID(id.String())
		if !ok || got != id {
			t.Fatalf("round trip of %v: %v, %v", id, got, ok)
		}
		if !replayqueue.IsReserved(id.String()) {
			t.Fatalf("%q is not reserved", id.String())
		}
	}
	for _, s := range []string{"", "1", "steadfast-replay:", "steadfast-replay:1", "steadfast-replay:1:",
		"steadfast-replay:01:1", "steadfast-replay:1:+1", "steadfast-replay:1:2:3",
		"steadfast-replay:18446744073709551616:1", "Steadfast-replay:1:1"} {
		if _, ok := replayqueue.ParseReplayID(s); ok {
			t.Fatalf("ParseReplayID(%q) accepted it", s)
		}
	}
}

func FuzzParseReplayID(f *testing.F) {
	f.Add("steadfast-replay:1:2")
	f.Add("steadfast-replay:007:2")
	f.Add("42")
	f.Fuzz(func(t *testing.T, s string) {
		id, ok := replayqueue.ParseReplayID(s)
		if ok && id.String() != s {
			t.Fatalf("ParseReplayID(%q) = %v, whose String is %q", s, id, id.String())
		}
		if ok && !replayqueue.IsReserved(s) {
			t.Fatalf("parsed an unreserved id %q", s)
		}
	})
}

// ---- replay replies ----

type replies struct {
	mu  sync.Mutex
	got []replayqueue.Reply[string]
}

func (r *replies) on(x replayqueue.Reply[string]) {
	r.mu.Lock()
	r.got = append(r.got, x)
	r.mu.Unlock()
}

func (r *replies) all() []replayqueue.Reply[string] {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.got)
}

func TestReplayTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var rs replies
		q := replayqueue.New[string, string](replayqueue.WithReplayTimeout[string](5 * time.Second))
		if err := q.AddReplay("sub", func(id replayqueue.ReplayID) string { return id.String() }, rs.on); err != nil {
			t.Fatal(err)
		}
		s := newSink[string]()
		gen := mustConnect(t, q, s.send)
		sentID := s.items()[0]
		time.Sleep(5*time.Second - time.Nanosecond)
		synctest.Wait()
		if n := len(rs.all()); n != 0 {
			t.Fatalf("callback ran %d times before the timeout", n)
		}
		time.Sleep(time.Nanosecond)
		synctest.Wait()
		got := rs.all()
		if len(got) != 1 || !errors.Is(got[0].Err, replayqueue.ErrReplayTimeout) || got[0].Key != "sub" ||
			got[0].ID.String() != sentID || got[0].ID.Gen != gen {
			t.Fatalf("after the timeout: %+v", got)
		}
		// The late reply is still consumed, never forwarded, and not delivered twice.
		if !q.HandleReply(sentID, "late") {
			t.Fatal("late reply to a timed-out replay was not consumed")
		}
		if len(rs.all()) != 1 || q.Stats().StaleReplies != 1 || q.Stats().Pending != 0 {
			t.Fatalf("late reply: replies %v stats %+v", rs.all(), q.Stats())
		}
		q.Close()
	})
}

func TestReplyFromOlderGenerationIsDropped(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var rs replies
		q := replayqueue.New[string, string]()
		if err := q.AddReplay("sub", func(id replayqueue.ReplayID) string { return id.String() }, rs.on); err != nil {
			t.Fatal(err)
		}
		s1 := newSink[string]()
		g1 := mustConnect(t, q, s1.send)
		cause := errors.New("upstream gone")
		q.Disconnect(g1, cause)
		got := rs.all()
		if len(got) != 1 || !errors.Is(got[0].Err, replayqueue.ErrDisconnected) || !errors.Is(got[0].Err, cause) {
			t.Fatalf("after Disconnect: %+v", got)
		}
		s2 := newSink[string]()
		g2 := mustConnect(t, q, s2.send)
		oldID, newID := s1.items()[0], s2.items()[0]
		if !q.HandleReply(oldID, "0xold") {
			t.Fatal("reply from generation 1 was forwarded")
		}
		if !q.HandleReply(newID, "0xnew") {
			t.Fatal("reply from the current generation was not consumed")
		}
		got = rs.all()
		if len(got) != 2 || got[1].Err != nil || got[1].Value != "0xnew" || got[1].ID.Gen != g2 {
			t.Fatalf("replies %+v", got)
		}
		if st := q.Stats(); st.StaleReplies != 1 || st.Pending != 0 {
			t.Fatalf("stats %+v", st)
		}
		// No timer is left behind: advancing far past the timeout delivers nothing.
		time.Sleep(2 * replayqueue.DefaultReplayTimeout)
		synctest.Wait()
		if len(rs.all()) != 2 {
			t.Fatalf("extra callbacks %+v", rs.all())
		}
		q.Close()
	})
}

func TestRemovedReplayStillGetsItsPendingReply(t *testing.T) {
	var rs replies
	q := replayqueue.New[string, string]()
	if err := q.AddReplay("sub", func(id replayqueue.ReplayID) string { return id.String() }, rs.on); err != nil {
		t.Fatal(err)
	}
	s := newSink[string]()
	mustConnect(t, q, s.send)
	q.RemoveReplay("sub")
	if !q.HandleReply(s.items()[0], "0xorphan") {
		t.Fatal("not consumed")
	}
	if got := rs.all(); len(got) != 1 || got[0].Value != "0xorphan" || got[0].Key != "sub" {
		t.Fatalf("replies %+v", got)
	}
	q.Close()
}

func TestCloseFailsPendingReplays(t *testing.T) {
	var rs replies
	q := replayqueue.New[string, string]()
	for _, k := range []string{"a", "b"} {
		if err := q.AddReplay(k, func(id replayqueue.ReplayID) string { return id.String() }, rs.on); err != nil {
			t.Fatal(err)
		}
	}
	mustConnect(t, q, newSink[string]().send)
	q.Close()
	got := rs.all()
	if len(got) != 2 || got[0].Key != "a" || got[1].Key != "b" ||
		!errors.Is(got[0].Err, replayqueue.ErrClosed) || !errors.Is(got[1].Err, replayqueue.ErrClosed) {
		t.Fatalf("replies after Close %+v", got)
	}
}

// ---- incident regressions ----

// TestIncident_MessageSentDuringReconnectIsDelivered reproduces the original
// flag/flush race: producers send while the connection drops and comes
// back. With a "reconnecting" flag beside the queue, a producer could read
// the flag, the flusher could drain and clear it, and the producer's
// message was then appended to a queue nobody flushed. Here every message
// must arrive exactly once, in per-producer order, and nothing may remain
// buffered once the queue is connected.
func TestIncident_MessageSentDuringReconnectIsDelivered(t *testing.T) {
	// The race window is narrow; a few independent runs make a regression
	// all but certain to show.
	for range 5 {
		issue1Run(t)
		if t.Failed() {
			return
		}
	}
}

func issue1Run(t *testing.T) {
	t.Helper()
	const producers, perProducer, maxReconnects = 8, 400, 20000
	type msg struct{ p, n int }
	q := replayqueue.New[msg, msg](replayqueue.WithMaxItems[msg](producers*perProducer), replayqueue.WithOverflow[msg](replayqueue.Block))
	var mu sync.Mutex
	var got []msg
	send := func(m msg) error {
		mu.Lock()
		got = append(got, m)
		mu.Unlock()
		return nil
	}
	gen := mustConnect(t, q, send)
	var wg sync.WaitGroup
	var done atomic.Bool
	for p := range producers {
		wg.Go(func() {
			for n := range perProducer {
				if err := q.Send(context.Background(), msg{p, n}); err != nil {
					t.Errorf("Send: %v", err)
					return
				}
			}
		})
	}
	go func() { wg.Wait(); done.Store(true) }()
	// Flap the connection for as long as the producers run. Only this
	// goroutine changes the connection, and sends never fail, so while it
	// holds a connection the buffer must be empty: a message buffered after
	// the flush (the origin's race) shows up here, or as a reordering below.
	stranded := 0
	for k := 0; k < maxReconnects && !done.Load(); k++ {
		q.Disconnect(gen, errBroken)
		gen = mustConnect(t, q, send)
		stranded = max(stranded, q.Len())
	}
	wg.Wait()
	if n := q.Len(); n != 0 || stranded != 0 {
		t.Fatalf("messages stranded in the buffer while connected: %d at the end, up to %d during the run", n, stranded)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != producers*perProducer {
		t.Fatalf("delivered %d messages, want %d", len(got), producers*perProducer)
	}
	next := make([]int, producers)
	for _, m := range got {
		if m.n != next[m.p] {
			t.Fatalf("producer %d: got message %d, want %d (lost, duplicated or reordered)", m.p, m.n, next[m.p])
		}
		next[m.p]++
	}
	q.Close()
}

// TestConcurrentReconnectsWithReplaySet hammers Send, Disconnect/Connect
// and HandleReply at once under -race, with a replay set, and checks that
// each connection saw its replay set first and that every reply callback
// ran exactly once per transmission.
func TestConcurrentReconnectsWithReplaySet(t *testing.T) {
	const producers, perProducer = 4, 300
	type frame struct {
		replay string // replay key, "" for a client message
		id     string
		p, n   int
	}
	q := replayqueue.New[frame, frame](replayqueue.WithMaxItems[frame](producers*perProducer), replayqueue.WithOverflow[frame](replayqueue.Block))
	var cbMu sync.Mutex
	callbacks := map[string]int{}
	for _, k := range []string{"a", "b", "c"} {
		err := q.AddReplay(k, func(id replayqueue.ReplayID) frame { return frame{replay: k, id: id.String()} },
			func(r replayqueue.Reply[frame]) {
				cbMu.Lock()
				callbacks[r.ID.String()]++
				cbMu.Unlock()
			})
		if err != nil {
			t.Fatal(err)
		}
	}
	var conns [][]frame
	var sent []string
	var mu sync.Mutex
	connect := func() uint64 {
		mu.Lock()
		conns = append(conns, nil)
		i := len(conns) - 1
		mu.Unlock()
		return mustConnect(t, q, func(f frame) error {
			mu.Lock()
			conns[i] = append(conns[i], f)
			if f.replay != "" {
				sent = append(sent, f.id)
			}
			mu.Unlock()
			return nil
		})
	}
	gen := connect()
	var wg sync.WaitGroup
	for p := range producers {
		wg.Go(func() {
			for n := range perProducer {
				if err := q.Send(context.Background(), frame{p: p, n: n}); err != nil {
					t.Errorf("Send: %v", err)
					return
				}
			}
		})
	}
	wg.Go(func() { // a reader answering replays of whatever connection is current
		for i := 0; i < 200; i++ {
			mu.Lock()
			ids := slices.Clone(sent)
			mu.Unlock()
			for _, id := range ids {
				if !q.HandleReply(id, frame{}) {
					t.Errorf("reserved id %q not consumed", id)
				}
			}
		}
	})
	for range 30 {
		q.Disconnect(gen, errBroken)
		gen = connect()
	}
	wg.Wait()
	q.Close()
	mu.Lock()
	defer mu.Unlock()
	next := make([]int, producers)
	for i, c := range conns {
		if len(c) < 3 || c[0].replay != "a" || c[1].replay != "b" || c[2].replay != "c" {
			t.Fatalf("connection %d did not start with the replay set: %+v", i, c[:min(3, len(c))])
		}
		for _, f := range c[3:] {
			if f.replay != "" {
				t.Fatalf("connection %d: replay item after client items", i)
			}
			if f.n != next[f.p] {
				t.Fatalf("producer %d: got %d want %d", f.p, f.n, next[f.p])
			}
			next[f.p]++
		}
	}
	for p, n := range next {
		if n != perProducer {
			t.Fatalf("producer %d: %d of %d delivered", p, n, perProducer)
		}
	}
	cbMu.Lock()
	defer cbMu.Unlock()
	if len(callbacks) != len(sent) {
		t.Fatalf("%d transmissions but %d distinct callbacks", len(sent), len(callbacks))
	}
	for id, n := range callbacks {
		if n != 1 {
			t.Fatalf("callback for %s ran %d times", id, n)
		}
	}
}

// rpc is a JSON-RPC 2.0 frame, enough for the fake upstream below.
type rpc struct {
	JSONRPC string          `json:"jsonrpc"`
	ID      json.RawMessage `json:"id,omitempty"`
	Method  string          `json:"method,omitempty"`
	Params  json.RawMessage `json:"params,omitempty"`
	Result  json.RawMessage `json:"result,omitempty"`
	Error   *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error,omitempty"`
}

// idString is the rule a JSON-RPC proxy follows: a string id by its decoded
// value, any other id by its JSON text (which can never be reserved).
func idString(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	return string(raw)
}

// TestIncident_ReplayedSubscribeReplyNeverReachesClient reproduces the
// origin's second bug: after a reconnect the proxy replayed eth_subscribe
// with the client's own id, and the upstream's reply (and, for a rejected
// subscription, its error) reached a client that never sent that request.
// Here replayed items carry reserved ids, their replies (results and errors)
// are consumed and delivered to the replay's callback with the new upstream
// subscription id, and a client request reusing the original id 1 gets its
// own reply forwarded untouched.
func TestIncident_ReplayedSubscribeReplyNeverReachesClient(t *testing.T) {
	q := replayqueue.New[[]byte, []byte]()
	var toClient [][]byte
	var upstreamSubs = map[string]string{} // new upstream sub id -> client's sub id
	var replayErrs []string

	// The upstream: answers every request; refuses "logs" subscriptions.
	nextSub := 100
	upstream := func(req []byte) []byte {
		var r rpc
		if err := json.Unmarshal(req, &r); err != nil {
			t.Fatalf("bad frame %s", req)
		}
		resp := rpc{JSONRPC: "2.0", ID: r.ID}
		switch {
		case r.Method == "eth_subscribe" && string(r.Params) == `["logs"]`:
			resp.Error = &struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
			}{-32000, "logs subscriptions disabled"}
		case r.Method == "eth_subscribe":
			nextSub++
			resp.Result = json.RawMessage(fmt.Sprintf(`"0x%d"`, nextSub))
		default:
			resp.Result = json.RawMessage(`"0x10"`)
		}
		b, _ := json.Marshal(resp)
		return b
	}
	// route is the proxy's upstream reader.
	route := func(frame []byte) {
		var r rpc
		if err := json.Unmarshal(frame, &r); err != nil {
			t.Fatal(err)
		}
		if q.HandleReply(idString(r.ID), frame) {
			return
		}
		toClient = append(toClient, frame)
	}
	var inflight [][]byte
	send := func(f []byte) error { inflight = append(inflight, f); return nil }
	drain := func() {
		for len(inflight) > 0 {
			f := inflight[0]
			inflight = inflight[1:]
			route(upstream(f))
		}
	}

	gen := mustConnect(t, q, send)
	// The client subscribes to newHeads with id 1 and to logs with id 2;
	// the logs subscription is assumed to have worked on the first node.
	mustSend(t, q, []byte(`{"jsonrpc":"2.0","id":1,"method":"eth_subscribe","params":["newHeads"]}`))
	drain()
	if len(toClient) != 1 || !jsonHas(toClient[0], `"id":1`, `"result":"0x101"`) {
		t.Fatalf("client got %s", toClient)
	}
	clientSub := "0x101"
	for key, params := range map[string]string{clientSub: `["newHeads"]`, "0xlogs": `["logs"]`} {
		err := q.AddReplay(key, func(id replayqueue.ReplayID) []byte {
			b, _ := json.Marshal(rpc{JSONRPC: "2.0", ID: json.RawMessage(strconv.Quote(id.String())),
				Method: "eth_subscribe", Params: json.RawMessage(params)})
			return b
		}, func(r replayqueue.Reply[[]byte]) {
			if r.Err != nil {
				t.Errorf("replay %s failed: %v", r.Key, r.Err)
				return
			}
			var resp rpc
			_ = json.Unmarshal(r.Value, &resp)
			if resp.Error != nil {
				replayErrs = append(replayErrs, r.Key+": "+resp.Error.Message)
				return
			}
			var sub string
			_ = json.Unmarshal(resp.Result, &sub)
			upstreamSubs[sub] = r.Key
		})
		if err != nil {
			t.Fatal(err)
		}
	}

	// Upstream lost; the client keeps talking, reusing id 1.
	q.Disconnect(gen, errBroken)
	mustSend(t, q, []byte(`{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"}`))
	mustSend(t, q, []byte(`{"jsonrpc":"2.0","id":"1","method":"eth_blockNumber"}`))
	mustConnect(t, q, send)
	if len(inflight) != 4 {
		t.Fatalf("after reconnect %d frames in flight, want 2 replays + 2 buffered", len(inflight))
	}
	for _, f := range inflight[:2] {
		var r rpc
		_ = json.Unmarshal(f, &r)
		if !replayqueue.IsReserved(idString(r.ID)) {
			t.Fatalf("replayed frame %s does not carry a reserved id", f)
		}
	}
	toClient = nil
	drain()

	if len(toClient) != 2 || !jsonHas(toClient[0], `"id":1`, `"result":"0x10"`) || !jsonHas(toClient[1], `"id":"1"`) {
		t.Fatalf("client got %q; want only the two eth_blockNumber replies", toClient)
	}
	// "logs" was refused and takes no upstream id: newHeads gets 0x102.
	if !maps.Equal(upstreamSubs, map[string]string{"0x102": clientSub}) {
		t.Fatalf("the new upstream subscription id was not learned: %v", upstreamSubs)
	}
	if !slices.Equal(replayErrs, []string{"0xlogs: logs subscriptions disabled"}) {
		t.Fatalf("replay error replies: %v", replayErrs)
	}
	if st := q.Stats(); st.Pending != 0 {
		t.Fatalf("pending replays left: %+v", st)
	}
	q.Close()
}

func jsonHas(b []byte, parts ...string) bool {
	for _, p := range parts {
		if !strings.Contains(string(b), p) {
			return false
		}
	}
	return true
}

// Reply and drop callbacks run with no queue lock held, so they may call
// the queue (a regression deadlocks, and go test -timeout reports it).
func TestCallbacksMayCallBackIntoQueue(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var q *replayqueue.Queue[string, string]
		var seen []string
		q = replayqueue.New[string, string](
			replayqueue.WithMaxItems[string](1),
			replayqueue.WithOverflow[string](replayqueue.DropOldest),
			replayqueue.WithDropped(func(s string, _ error) {
				seen = append(seen, fmt.Sprintf("dropped %s, %d buffered", s, q.Len()))
			}),
			replayqueue.WithReplayTimeout[string](time.Second),
		)
		err := q.AddReplay("sub", func(id replayqueue.ReplayID) string { return "sub" }, func(r replayqueue.Reply[string]) {
			// Re-register from the callback, as a proxy does after a
			// failed replay, and look at the queue.
			_ = q.AddReplay("sub2", func(replayqueue.ReplayID) string { return "sub2" }, nil)
			seen = append(seen, fmt.Sprintf("reply %v, %d replays, connected %v", r.Err != nil, q.Stats().Replays, q.Connected()))
		})
		if err != nil {
			t.Fatal(err)
		}
		s := newSink[string]()
		gen := mustConnect(t, q, s.send)
		q.Disconnect(gen, errBroken) // the pending replay fails: callback
		mustSend(t, q, "a")
		mustSend(t, q, "b") // evicts a: drop callback
		mustConnect(t, q, s.send)
		time.Sleep(time.Second) // both replays time out: callback on a timer goroutine
		synctest.Wait()
		want := []string{
			"reply true, 2 replays, connected false",
			"dropped a, 1 buffered",
			"reply true, 2 replays, connected true",
		}
		if !slices.Equal(seen, want) {
			t.Fatalf("callbacks saw %q, want %q", seen, want)
		}
		if got := s.items(); !slices.Equal(got, []string{"sub", "sub", "sub2", "b"}) {
			t.Fatalf("sent %v", got)
		}
		q.Close()
	})
}

// Sending while connected, and buffering once the ring has grown, allocate
// nothing (the benchmarks measure the time).
func TestSteadyStateDoesNotAllocate(t *testing.T) {
	q := replayqueue.New[int, int](replayqueue.WithMaxItems[int](64))
	send := func(int) error { return nil }
	ctx := context.Background()
	gen := mustConnect(t, q, send)
	if n := testing.AllocsPerRun(100, func() { _ = q.Send(ctx, 1) }); n != 0 {
		t.Fatalf("Send while connected allocates %v times", n)
	}
	q.Disconnect(gen, nil)
	for range 64 { // grow the ring once
		mustSend(t, q, 1)
	}
	gen = mustConnect(t, q, send)
	if n := testing.AllocsPerRun(20, func() {
		q.Disconnect(gen, nil)
		for range 64 {
			_ = q.Send(ctx, 1)
		}
		gen, _ = q.Connect(send)
	}); n != 0 {
		t.Fatalf("a buffer/flush cycle of 64 items allocates %v times", n)
	}
	q.Close()
}

// TestEvictionWithoutCallbackIsLogged: with DropOldest and no
// WithDropped callback, an eviction still leaves a trace in the log, so no
// item is dropped silently.
func TestEvictionWithoutCallbackIsLogged(t *testing.T) {
	var buf bytes.Buffer
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&buf, nil)))
	defer slog.SetDefault(old)

	q := replayqueue.New[string, string](
		replayqueue.WithMaxItems[string](2),
		replayqueue.WithOverflow[string](replayqueue.DropOldest),
	)
	defer q.Close()
	for _, s := range []string{"a", "b", "c", "d"} {
		if err := q.Send(context.Background(), s); err != nil {
			t.Fatalf("Send(%q): %v", s, err)
		}
	}
	if got := q.Stats().Dropped; got != 2 {
		t.Fatalf("Stats().Dropped = %d, want 2", got)
	}
	logged := buf.String()
	if n := strings.Count(logged, `dropped=1 reason="replayqueue: evicted to make room"`); n != 2 {
		t.Fatalf("want one warning per evicting Send (2), got %d in log:\n%s", n, logged)
	}
	if !strings.Contains(logged, "level=WARN") {
		t.Fatalf("eviction not logged at Warn:\n%s", logged)
	}
}

// Len, Connected, Stats, Generation and the replay set answer while a send
// is blocked on a slow connection (a metrics scrape must not stall behind
// it), both for a direct Send and for Connect's flush.
func TestObserversDoNotWaitForABlockedSend(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		q := replayqueue.New[string, string]()
		mustSend(t, q, "buffered")
		release := make(chan struct{})
		blocking := func(string) error { <-release; return nil }

		connected := make(chan uint64)
		go func() {
			gen, err := q.Connect(blocking) // blocks flushing "buffered"
			if err != nil {
				t.Error(err)
			}
			connected <- gen
		}()
		synctest.Wait() // Connect is durably blocked inside send

		observed := make(chan replayqueue.Stats)
		go func() {
			if q.Connected() || q.Len() != 1 {
				t.Errorf("during the flush: connected=%v len=%d, want false 1", q.Connected(), q.Len())
			}
			if err := q.AddReplay("k", func(replayqueue.ReplayID) string { return "k" }, nil); err != nil {
				t.Error(err)
			}
			_ = q.ReplayKeys()
			observed <- q.Stats()
		}()
		synctest.Wait()
		select {
		case st := <-observed:
			if st.Buffered != 1 || st.Replays != 1 || st.Generation%2 != 1 {
				t.Fatalf("stats during the flush: %+v", st)
			}
		default:
			t.Fatal("observers waited for a send blocked in Connect")
		}
		close(release)
		<-connected

		// Now a direct Send that blocks.
		release = make(chan struct{})
		q2 := replayqueue.New[string, string]()
		mustConnect(t, q2, blocking)
		go func() { _ = q2.Send(context.Background(), "slow") }()
		synctest.Wait()
		go func() { observed <- q2.Stats() }()
		synctest.Wait()
		select {
		case st := <-observed:
			if st.Buffered != 0 || !q2.Connected() {
				t.Fatalf("stats during a direct send: %+v connected=%v", st, q2.Connected())
			}
		default:
			t.Fatal("Stats waited for a blocked direct Send")
		}
		close(release)
		synctest.Wait()
		q.Close()
		q2.Close()
	})
}

// A transport that answers inside its write call (HandleReply from within
// the send function, which Connect's doc allows) runs the reply callback
// there; the callback may look at the queue and change the replay set
// without deadlocking.
func TestReplyCallbackFromInsideSend(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var q *replayqueue.Queue[string, string]
		var seen []string
		q = replayqueue.New[string, string]()
		onReply := func(r replayqueue.Reply[string]) {
			st := q.Stats()
			if err := q.AddReplay("renamed", func(replayqueue.ReplayID) string { return "renamed" }, nil); err != nil {
				t.Error(err)
			}
			seen = append(seen, fmt.Sprintf("%s %v len=%d pending=%d keys=%v", r.Value, r.Err, q.Len(), st.Pending, q.ReplayKeys()))
		}
		if err := q.AddReplay("sub", func(id replayqueue.ReplayID) string { return id.String() }, onReply); err != nil {
			t.Fatal(err)
		}
		answering := func(item string) error {
			if replayqueue.IsReserved(item) {
				q.HandleReply(item, "ok:"+item[len(replayqueue.ReservedPrefix):])
			}
			return nil
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			if _, err := q.Connect(answering); err != nil {
				t.Error(err)
			}
		}()
		synctest.Wait()
		select {
		case <-done:
		default:
			t.Fatal("Connect deadlocked: the reply callback ran inside send and waited for the queue")
		}
		want := []string{"ok:1:1 <nil> len=0 pending=0 keys=[sub renamed]"}
		if !slices.Equal(seen, want) {
			t.Fatalf("callback saw %q, want %q", seen, want)
		}
		q.Close()
	})
}
