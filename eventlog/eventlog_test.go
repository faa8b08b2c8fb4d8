package eventlog_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/steadfast-go/steadfast/eventlog"
)

func appendN(t *testing.T, l *eventlog.Log, stream string, n int) {
	t.Helper()
	for range n {
		if _, err := l.Append(context.Background(), stream, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
}

// TestIncident_GlobalSeqOvercountedGap: the origin numbered every session's
// events from one global sequence, so head - cursor for one session counted
// the other sessions' events too and far-behind detection misfired.
func TestIncident_GlobalSeqOvercountedGap(t *testing.T) {
	l := eventlog.New()
	defer l.Close()
	ctx := context.Background()
	for i := range 300 {
		// Interleave a busy session with a quiet one.
		if _, err := l.Append(ctx, "busy", []byte("b")); err != nil {
			t.Fatal(err)
		}
		if i%30 == 0 {
			if _, err := l.Append(ctx, "quiet", []byte("q")); err != nil {
				t.Fatal(err)
			}
		}
	}
	head, err := l.Head(context.Background(), "quiet")
	if err != nil || head.Seq != 10 {
		t.Fatalf("quiet head = %v, %v; want 10 (its own events only)", head, err)
	}
	// A quiet-session client 5 events behind replays 5 events; with one
	// global sequence the gap would have looked like ~150 events.
	res, err := l.Replay(ctx, "quiet", at(l, 5), 0)
	if err != nil || res.Outcome != eventlog.Events || len(res.Events) != 5 {
		t.Fatalf("Replay = %v with %d events, %v; want 5 events", res.Outcome, len(res.Events), err)
	}
}

// TestIncident_ReplayStormForFarBehindCursor: after the crash, clients
// thousands of events behind were fed the whole backlog 50 events per 5 s
// sync (8-minute delays). A cursor more than the gap cap behind gets one
// SkippedToHead with the size of the gap instead, and the live tail starts
// at head at once.
func TestIncident_ReplayStormForFarBehindCursor(t *testing.T) {
	l := eventlog.New()
	defer l.Close()
	ctx := context.Background()
	appendN(t, l, "s", 6000)
	res, err := l.Replay(ctx, "s", at(l, 100), 0)
	if err != nil || res.Outcome != eventlog.SkippedToHead || res.Gap != 5900 || len(res.Events) != 0 || res.Resume != at(l, 6000) {
		t.Fatalf("Replay(far behind) = %+v, %v; want SkippedToHead gap 5900, resume at head", res, err)
	}
	sub, err := l.Subscribe(ctx, "s", at(l, 100), eventlog.SubscribeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if res, err := sub.Next(ctx); err != nil || res.Outcome != eventlog.SkippedToHead || res.Gap != 5900 {
		t.Fatalf("first Next = %+v, %v; want SkippedToHead", res, err)
	}
	if _, err := l.Append(ctx, "s", []byte("new")); err != nil {
		t.Fatal(err)
	}
	res, err = sub.Next(ctx)
	if err != nil || len(res.Events) != 1 || res.Events[0].Seq != 6001 {
		t.Fatalf("after skip, Next = %+v, %v; want just the new event 6001", res, err)
	}
	// Exactly at the cap is still replayed in full.
	res, err = l.Replay(ctx, "s", at(l, 6001-eventlog.DefaultGapCap), 0)
	if err != nil || res.Outcome != eventlog.Events || len(res.Events) != eventlog.DefaultGapCap {
		t.Fatalf("Replay(cap behind) = %v with %d events, %v", res.Outcome, len(res.Events), err)
	}
}

// TestIncident_CursorAtHeadResentBuffer: tmaxmax/go-sse v0.12.0 re-sends its
// whole buffer to a client whose Last-Event-ID is the newest event. Here a
// cursor at head replays nothing, and a cursor past head is an error.
func TestIncident_CursorAtHeadResentBuffer(t *testing.T) {
	l := eventlog.New()
	defer l.Close()
	ctx := context.Background()
	appendN(t, l, "s", 50)
	res, err := l.Replay(ctx, "s", at(l, 50), 0)
	if err != nil || res.Outcome != eventlog.Events || len(res.Events) != 0 || res.Resume != at(l, 50) {
		t.Fatalf("Replay(head) = %+v, %v; want no events", res, err)
	}
	if _, err := l.Replay(ctx, "s", at(l, 51), 0); !errors.Is(err, eventlog.ErrCursorAhead) {
		t.Fatalf("Replay(head+1) err = %v, want ErrCursorAhead", err)
	}
	if _, err := l.Subscribe(ctx, "s", at(l, 9999), eventlog.SubscribeOptions{}); !errors.Is(err, eventlog.ErrCursorAhead) {
		t.Fatalf("Subscribe(ahead) err = %v, want ErrCursorAhead", err)
	}
}

// TestIncident_UnknownStreamSilentlySkipped: the origin's sync treated a
// session id missing from the store like an inactive one and skipped it
// without a word. It also synced suspended and detached sessions.
func TestIncident_UnknownStreamSilentlySkipped(t *testing.T) {
	l := eventlog.New()
	defer l.Close()
	ctx := context.Background()
	states := map[string]eventlog.State{
		"created": eventlog.Created, "starting": eventlog.Starting, "active": eventlog.Active,
		"suspended": eventlog.Suspended, "detached": eventlog.Detached, "ended": eventlog.Ended,
	}
	for id, st := range states {
		if err := l.SetState(ctx, id, st); err != nil {
			t.Fatal(err)
		}
	}
	ids := []string{"created", "ghost", "starting", "active", "suspended", "detached", "ended", ""}
	var called []string
	rep, err := l.Sync(ctx, ids, func(ctx context.Context, id string, st eventlog.State) error {
		called = append(called, id)
		if st != states[id] {
			t.Errorf("sync of %q got state %v", id, st)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	want := eventlog.SyncReport{
		Synced:  []string{"created", "starting", "active"},
		Skipped: []string{"suspended", "detached", "ended"},
		Unknown: []string{"ghost", ""},
	}
	if !slices.Equal(rep.Synced, want.Synced) || !slices.Equal(rep.Skipped, want.Skipped) || !slices.Equal(rep.Unknown, want.Unknown) || len(rep.Failed) != 0 {
		t.Fatalf("Sync report = %+v, want %+v", rep, want)
	}
	if !slices.Equal(called, want.Synced) {
		t.Fatalf("sync func called for %v, want %v", called, want.Synced)
	}
	if _, err := l.State(context.Background(), "ghost"); !errors.Is(err, eventlog.ErrUnknownStream) {
		t.Fatalf("State(ghost) err = %v, want ErrUnknownStream", err)
	}
	// A failing sync is reported, and does not stop the round.
	boom := errors.New("boom")
	rep, err = l.Sync(ctx, []string{"active", "created"}, func(ctx context.Context, id string, st eventlog.State) error {
		if id == "active" {
			return boom
		}
		return nil
	})
	if err != nil || len(rep.Failed) != 1 || rep.Failed[0].Stream != "active" || !errors.Is(rep.Failed[0].Err, boom) || !slices.Equal(rep.Synced, []string{"created"}) {
		t.Fatalf("Sync with failure = %+v, %v", rep, err)
	}
}

func TestSyncEvery(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := eventlog.New()
		defer l.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 16*time.Second)
		defer cancel()
		if err := l.SetState(ctx, "a", eventlog.Active); err != nil {
			t.Fatal(err)
		}
		if err := l.SetState(ctx, "d", eventlog.Detached); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		var synced []time.Duration
		var reports []eventlog.SyncReport
		err := l.SyncEvery(ctx, 5*time.Second, func() []string { return []string{"a", "d", "x"} },
			func(ctx context.Context, id string, st eventlog.State) error {
				synced = append(synced, time.Since(start))
				return nil
			},
			func(r eventlog.SyncReport) { reports = append(reports, r) })
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("SyncEvery returned %v, want the context's deadline", err)
		}
		if want := []time.Duration{5 * time.Second, 10 * time.Second, 15 * time.Second}; !slices.Equal(synced, want) {
			t.Fatalf("synced at %v, want %v", synced, want)
		}
		for _, r := range reports {
			if !slices.Equal(r.Synced, []string{"a"}) || !slices.Equal(r.Skipped, []string{"d"}) || !slices.Equal(r.Unknown, []string{"x"}) {
				t.Fatalf("report %+v", r)
			}
		}
	})
}

func TestBadInput(t *testing.T) {
	l := eventlog.New(eventlog.WithMaxEventSize(8))
	ctx := context.Background()
	if _, err := l.Append(ctx, "", []byte("x")); !errors.Is(err, eventlog.ErrEmptyStream) {
		t.Errorf("Append(\"\") err = %v", err)
	}
	if _, err := l.Append(ctx, "s", []byte("123456789")); !errors.Is(err, eventlog.ErrEventTooLarge) {
		t.Errorf("Append(9 bytes, limit 8) err = %v", err)
	}
	if _, err := l.AppendEvent(ctx, "s", "type", []byte("12345")); !errors.Is(err, eventlog.ErrEventTooLarge) {
		t.Errorf("AppendEvent(type+data 9 bytes) err = %v", err)
	}
	if _, err := l.Append(ctx, "s", []byte("12345678")); err != nil {
		t.Errorf("Append(8 bytes) err = %v", err)
	}
	for name, err := range map[string]error{
		"Head":      second(l.Head(context.Background(), "")),
		"State":     second(l.State(context.Background(), "")),
		"SetState":  l.SetState(ctx, "", eventlog.Active),
		"Replay":    second(l.Replay(ctx, "", eventlog.Cursor{}, 0)),
		"ReadAfter": second(l.ReadAfter(ctx, "", eventlog.Cursor{Seq: 0}, 1)),
		"Subscribe": second(l.Subscribe(ctx, "", eventlog.Cursor{}, eventlog.SubscribeOptions{})),
	} {
		if !errors.Is(err, eventlog.ErrEmptyStream) {
			t.Errorf("%s(\"\") err = %v, want ErrEmptyStream", name, err)
		}
	}
	if err := l.SetState(ctx, "s", eventlog.State(42)); !errors.Is(err, eventlog.ErrInvalidState) {
		t.Errorf("SetState(42) err = %v", err)
	}
	if _, err := l.Subscribe(ctx, "nope", eventlog.Cursor{}, eventlog.SubscribeOptions{}); !errors.Is(err, eventlog.ErrUnknownStream) {
		t.Errorf("Subscribe(unknown) err = %v", err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	for name, err := range map[string]error{
		"Append":    second(l.Append(ctx, "s", nil)),
		"Head":      second(l.Head(context.Background(), "s")),
		"State":     second(l.State(context.Background(), "s")),
		"SetState":  l.SetState(ctx, "s", eventlog.Active),
		"Replay":    second(l.Replay(ctx, "s", eventlog.Cursor{}, 0)),
		"ReadAfter": second(l.ReadAfter(ctx, "s", eventlog.Cursor{Seq: 0}, 1)),
		"Subscribe": second(l.Subscribe(ctx, "s", eventlog.Cursor{}, eventlog.SubscribeOptions{})),
		"Sync":      second(l.Sync(ctx, []string{"s"}, func(context.Context, string, eventlog.State) error { return nil })),
	} {
		if !errors.Is(err, eventlog.ErrClosed) {
			t.Errorf("%s after Close err = %v, want ErrClosed", name, err)
		}
	}
}

func second[T any](_ T, err error) error { return err }

func TestStateNames(t *testing.T) {
	for st := eventlog.Created; st <= eventlog.Ended; st++ {
		got, err := eventlog.ParseState(st.String())
		if err != nil || got != st {
			t.Errorf("ParseState(%q) = %v, %v", st.String(), got, err)
		}
		if want := st <= eventlog.Active; st.Syncable() != want {
			t.Errorf("%v.Syncable() = %v", st, !want)
		}
	}
	if eventlog.State(0).String() != "unknown" || eventlog.State(200).String() != "unknown" || eventlog.State(0).Syncable() {
		t.Error("invalid states must format as unknown and not be syncable")
	}
	if _, err := eventlog.ParseState("paused"); !errors.Is(err, eventlog.ErrInvalidState) {
		t.Errorf("ParseState(paused) err = %v", err)
	}
	if eventlog.SkippedToHead.String() != "skipped-to-head" || eventlog.WrongEpoch.String() != "wrong-epoch" {
		t.Error("outcome/reason names")
	}
}

func TestEpochsDiffer(t *testing.T) {
	// A restarted in-memory server (a new Log) must not accept its
	// predecessor's cursors as positions.
	a, b := eventlog.New(), eventlog.New()
	defer a.Close()
	defer b.Close()
	ctx := context.Background()
	appendN(t, a, "s", 10)
	appendN(t, b, "s", 10)
	res, err := b.Replay(ctx, "s", at(a, 5), 0)
	if err != nil || res.Outcome != eventlog.Unrecoverable || res.Reason != eventlog.WrongEpoch {
		t.Fatalf("Replay(cursor of another log) = %+v, %v", res, err)
	}
}

func TestAgeRetentionReplay(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		l := eventlog.New(eventlog.WithRetention(eventlog.Retention{MaxAge: time.Hour}))
		defer l.Close()
		ctx := context.Background()
		appendN(t, l, "s", 3)
		time.Sleep(90 * time.Minute)
		appendN(t, l, "s", 2)
		res, err := l.Replay(ctx, "s", at(l, 1), 0)
		if err != nil || res.Outcome != eventlog.Unrecoverable || res.Reason != eventlog.Expired || res.Resume != at(l, 5) {
			t.Fatalf("Replay(cursor before age retention) = %+v, %v; want Unrecoverable/Expired", res, err)
		}
		res, err = l.Replay(ctx, "s", at(l, 3), 0)
		if err != nil || res.Outcome != eventlog.Events || len(res.Events) != 2 {
			t.Fatalf("Replay(3) = %+v, %v; want events 4 and 5", res, err)
		}
		time.Sleep(59 * time.Minute)
		if res, err := l.Replay(ctx, "s", at(l, 3), 0); err != nil || len(res.Events) != 2 {
			t.Fatalf("at 59 min, events 4-5 must still be there: %+v, %v", res, err)
		}
		time.Sleep(time.Minute)
		if res, err := l.Replay(ctx, "s", at(l, 3), 0); err != nil || res.Reason != eventlog.Expired {
			t.Fatalf("at 60 min, events 4-5 must be gone: %+v, %v", res, err)
		}
	})
}

// TestConcurrentAppendersAndSubscribers: under -race, with appenders on
// several streams and subscribers that join before and during the appends,
// every subscriber sees every seq of its stream exactly once, in order.
func TestConcurrentAppendersAndSubscribers(t *testing.T) {
	l := eventlog.New()
	defer l.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	streams := []string{"s0", "s1"}
	const appenders, per = 4, 150
	total := uint64(appenders * per / len(streams))
	for _, s := range streams {
		if err := l.SetState(ctx, s, eventlog.Active); err != nil {
			t.Fatal(err)
		}
	}
	opts := eventlog.SubscribeOptions{GapCap: int(total), MaxLag: int(total), Batch: 7}
	var subs sync.WaitGroup
	var mu sync.Mutex
	appended := map[string]map[uint64]string{} // what appenders were told
	seen := map[string]map[uint64]string{}     // what one subscriber per stream saw
	subscribe := func(stream string, from eventlog.Cursor, record bool) {
		sub, err := l.Subscribe(ctx, stream, from, opts)
		if err != nil {
			t.Error(err)
			return
		}
		subs.Go(func() {
			defer sub.Close()
			next := from.Seq + 1
			for next <= total {
				res, err := sub.Next(ctx)
				if err != nil {
					t.Errorf("%s: Next: %v", stream, err)
					return
				}
				if res.Outcome != eventlog.Events {
					t.Errorf("%s: outcome %v", stream, res.Outcome)
					return
				}
				for _, ev := range res.Events {
					if ev.Seq != next {
						t.Errorf("%s: got seq %d, want %d (gap or duplicate)", stream, ev.Seq, next)
						return
					}
					if record {
						mu.Lock()
						seen[stream][ev.Seq] = string(ev.Data)
						mu.Unlock()
					}
					next++
				}
			}
		})
	}
	for _, s := range streams {
		appended[s] = map[uint64]string{}
		seen[s] = map[uint64]string{}
	}
	for _, s := range streams {
		subscribe(s, eventlog.Cursor{}, true)
		subscribe(s, eventlog.Cursor{}, false)
	}
	var apps sync.WaitGroup
	for a := range appenders {
		apps.Go(func() {
			for i := range per {
				stream := streams[(a+i)%len(streams)]
				data := fmt.Sprintf("a%d-%d", a, i)
				cur, err := l.Append(ctx, stream, []byte(data))
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				appended[stream][cur.Seq] = data
				mu.Unlock()
				if a == 0 && i == per/2 {
					// Join mid-stream, from the current head.
					head, err := l.Head(context.Background(), stream)
					if err != nil {
						t.Error(err)
						return
					}
					subscribe(stream, head, false)
				}
			}
		})
	}
	apps.Wait()
	subs.Wait()
	for _, s := range streams {
		if head, err := l.Head(context.Background(), s); err != nil || head.Seq != total {
			t.Fatalf("Head(%s) = %v, %v; want %d", s, head, err, total)
		}
		if !maps.Equal(appended[s], seen[s]) {
			t.Fatalf("%s: subscriber saw different data than appenders were assigned", s)
		}
	}
}

// A brand-new client (zero Cursor) on a stream whose start was trimmed by
// retention is told the history is incomplete (Unrecoverable/Expired, or
// SkippedToHead when the gap exceeds the cap), never handed the retained
// tail as if it were the whole stream; its subscription then goes live from
// head with no gap.
func TestZeroCursorOnTrimmedStream(t *testing.T) {
	ctx := context.Background()
	l := eventlog.New(eventlog.WithRetention(eventlog.Retention{MaxEvents: 4}))
	defer l.Close()
	appendN(t, l, "s", 10)
	res, err := l.Replay(ctx, "s", eventlog.Cursor{}, 0)
	if err != nil || res.Outcome != eventlog.Unrecoverable || res.Reason != eventlog.Expired || res.Resume != at(l, 10) || len(res.Events) != 0 {
		t.Fatalf("Replay(zero) on a trimmed stream = %+v, %v; want Unrecoverable/Expired resuming at 10", res, err)
	}
	res, err = l.Replay(ctx, "s", eventlog.Cursor{}, 5)
	if err != nil || res.Outcome != eventlog.SkippedToHead || res.Gap != 10 || res.Resume != at(l, 10) {
		t.Fatalf("Replay(zero, cap 5) = %+v, %v; want SkippedToHead gap 10", res, err)
	}
	sub, err := l.Subscribe(ctx, "s", eventlog.Cursor{}, eventlog.SubscribeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if res, err := sub.Next(ctx); err != nil || res.Outcome != eventlog.Unrecoverable || res.Resume != at(l, 10) {
		t.Fatalf("first Next = %+v, %v", res, err)
	}
	appendN(t, l, "s", 1)
	if res, err := sub.Next(ctx); err != nil || res.Outcome != eventlog.Events || len(res.Events) != 1 || res.Events[0].Seq != 11 {
		t.Fatalf("live Next = %+v, %v; want event 11", res, err)
	}
}

// Impossible arguments panic at once, with the package prefix: nil
// functions for Sync and SyncEvery (instead of a nil dereference on the
// first syncable stream), and a retention for a store given with WithStore.
func TestImpossibleArgumentsPanic(t *testing.T) {
	l := eventlog.New()
	defer l.Close()
	streams := func() []string { return nil }
	fn := func(context.Context, string, eventlog.State) error { return nil }
	for name, call := range map[string]func(){
		"Sync":              func() { l.Sync(context.Background(), []string{"x"}, nil) },
		"SyncEvery(nil fn)": func() { l.SyncEvery(context.Background(), time.Second, streams, nil, nil) },
		"SyncEvery(nil streams)": func() {
			l.SyncEvery(context.Background(), time.Second, nil, fn, nil)
		},
		// Retention belongs to the store: silently ignoring it would keep
		// a different amount of history than asked for.
		"New(WithStore, WithRetention)": func() {
			eventlog.New(eventlog.WithStore(eventlog.NewMemoryStore(eventlog.Retention{})),
				eventlog.WithRetention(eventlog.Retention{MaxEvents: 5}))
		},
	} {
		func() {
			defer func() {
				if msg, ok := recover().(string); !ok || len(msg) < 10 || msg[:10] != "eventlog: " {
					t.Errorf("%s: panic %v, want an \"eventlog: \" message", name, msg)
				}
			}()
			call()
		}()
	}
}

func TestSyncErrorIsAnError(t *testing.T) {
	cause := errors.New("disk full")
	var err error = eventlog.SyncError{Stream: "s1", Err: cause}
	if !errors.Is(err, cause) || err.Error() != "eventlog: sync s1: disk full" {
		t.Fatalf("SyncError: %v (Is cause: %v)", err, errors.Is(err, cause))
	}
}
