package eventlog

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
)

// Event is one entry of a stream. It is a plain value, safe to copy and to
// read from several goroutines; its zero value (Seq 0) is never a stored
// event.
type Event struct {
	// Seq is the event's sequence number in its stream, from 1.
	Seq uint64
	// Type is an optional application-defined kind, such as the SSE
	// "event:" field; empty by default.
	Type string
	// Data is the payload. Slices returned by the Log and its stores must be
	// treated as read-only: they may share memory with the stored event.
	Data []byte
}

// Outcome says which kind of Result a replay or subscription produced. The
// zero Outcome is Events.
type Outcome uint8

// The outcomes of Replay and Subscription.Next.
const (
	// Events: Result.Events holds the events after the cursor, in order
	// (none if the cursor was at head).
	Events Outcome = iota
	// SkippedToHead: the cursor was more than the gap cap behind head;
	// Result.Gap events were not replayed and the holder should continue
	// from Result.Head (lazy-loading the history it wants another way).
	SkippedToHead
	// Unrecoverable: the cursor does not name a position that can be
	// resumed (Result.Reason says why); the holder should reset and continue
	// from Result.Head.
	Unrecoverable
	// Lagged: a subscriber fell more than SubscribeOptions.MaxLag events
	// behind head; the subscription has ended and the holder may subscribe
	// again from Result.Resume.
	Lagged
)

var outcomeNames = [...]string{"events", "skipped-to-head", "unrecoverable", "lagged"}

// String returns the outcome's name, such as "skipped-to-head".
func (o Outcome) String() string {
	if int(o) < len(outcomeNames) {
		return outcomeNames[o]
	}
	return "unknown"
}

// Reason says why a cursor was Unrecoverable. The zero Reason is NoReason.
type Reason uint8

// The reasons for an Unrecoverable result.
const (
	// NoReason is the Reason of every result that is not Unrecoverable.
	NoReason Reason = iota
	// WrongEpoch: the cursor was issued by another incarnation of the log
	// (before a restart that lost history, or by another server).
	WrongEpoch
	// Expired: the events right after the cursor are no longer retained.
	Expired
)

var reasonNames = [...]string{"none", "wrong-epoch", "expired"}

// String returns the reason's name, such as "wrong-epoch".
func (r Reason) String() string {
	if int(r) < len(reasonNames) {
		return reasonNames[r]
	}
	return "unknown"
}

// Result is the explicit answer to "what happens to a client at this
// cursor": see Outcome. Resume is always where the holder stands after
// applying the result.
//
// A Result is a plain value owned by the caller (its Events may share Data
// with the store; treat them as read-only). The zero Result is an Events
// result with no events.
type Result struct {
	// Outcome says which of the other fields are meaningful.
	Outcome Outcome
	// Events holds the replayed or live events (Outcome Events only).
	Events []Event
	// Gap is the number of events that were not replayed (SkippedToHead).
	Gap uint64
	// Reason says why the cursor could not be used (Unrecoverable).
	Reason Reason
	// Head is the stream's head when the result was computed.
	Head Cursor
	// Resume is the cursor after this result: the last event's cursor for
	// Events (the input cursor if there were none), Head for SkippedToHead
	// and Unrecoverable, the last delivered position for Lagged.
	Resume Cursor
}

// Log is a set of streams, each an ordered sequence of events with its own
// sequence numbers, its own head and its own state, kept in a Store.
//
// A Log is safe for concurrent use by multiple goroutines. The zero Log is
// not usable: create one with New. A Log must not be copied after first use.
//
// Ordering: appends to one stream are totally ordered; Append returns the
// sequence number it was given, and the n'th successful append to a stream
// gets seq n (counting from 1), with no gaps or duplicates however many
// goroutines append. Every reader (ReadAfter, Replay, subscribers) sees a
// stream's events in seq order, and sees seq n before seq n+1. The Log
// holds no lock across streams, so an append to one stream never waits on
// the Log for another; whether the store serializes streams is up to the
// store. The in-memory store locks each stream separately; sqlitestore
// commits every stream's appends through one writer, in batches.
type Log struct {
	store        Store
	maxEventSize int

	closed    atomic.Bool
	done      chan struct{} // closed by Close
	closeOnce sync.Once
	closeErr  error

	nsubs  atomic.Int64 // number of live subscriptions; 0 skips wake-ups on Append
	subsMu sync.RWMutex // protects subs
	subs   map[string]map[*Subscription]struct{}
}

// New returns a Log. Without WithStore it keeps events in a new MemoryStore
// (with a fresh random epoch) using the retention set by WithRetention.
// New panics if WithStore and WithRetention are both given: retention is a
// setting of the store, and silently ignoring it would keep more (or less)
// history than the caller asked for.
func New(opts ...Option) *Log {
	c := config{maxEventSize: DefaultMaxEventSize}
	for _, o := range opts {
		o.apply(&c)
	}
	if c.store != nil && c.retention != nil {
		panic("eventlog: WithRetention configures the default store only; configure the store given to WithStore instead")
	}
	if c.store == nil {
		r := Retention{}
		if c.retention != nil {
			r = *c.retention
		}
		c.store = NewMemoryStore(r)
	}
	l := &Log{
		store:        c.store,
		maxEventSize: c.maxEventSize,
		done:         make(chan struct{}),
		subs:         make(map[string]map[*Subscription]struct{}),
	}
	c.store.Watch(l.changed)
	return l
}

// Epoch returns the store's current epoch. It is not cached: a shared store
// can change its epoch under a running Log (see Store), so a caller that
// pairs a seq with an epoch should take both from one answer (Append's
// cursor, Head, a Result) instead.
//
// Errors: ErrClosed, ctx.Err(), or the store's error.
func (l *Log) Epoch(ctx context.Context) (string, error) {
	if l.closed.Load() {
		return "", ErrClosed
	}
	return l.store.Epoch(ctx)
}

// Append adds an event with data and no type to stream, creating the stream
// (in state Created) if needed, wakes the stream's subscribers, and returns
// the event's cursor: the epoch it was committed under and its seq. The log
// copies data; the caller may reuse it.
//
// Errors: ErrEmptyStream, ErrEventTooLarge, ErrStreamEnded, ErrClosed,
// ctx.Err(), or the store's error.
func (l *Log) Append(ctx context.Context, stream string, data []byte) (Cursor, error) {
	return l.AppendEvent(ctx, stream, "", data)
}

// AppendEvent is Append with an event type (see Event.Type).
//
// Errors: as Append.
func (l *Log) AppendEvent(ctx context.Context, stream, typ string, data []byte) (Cursor, error) {
	if l.closed.Load() {
		return Cursor{}, ErrClosed
	}
	if stream == "" {
		return Cursor{}, ErrEmptyStream
	}
	if n := len(typ) + len(data); n > l.maxEventSize {
		return Cursor{}, errorf(ErrEventTooLarge, "%d bytes, limit %d", n, l.maxEventSize)
	}
	return l.store.Append(ctx, stream, typ, data)
}

// Head returns the cursor of the last event appended to stream (Seq 0 if
// none was), in the store's current epoch.
//
// Errors: ErrEmptyStream, ErrUnknownStream, ErrClosed, ctx.Err(), or the
// store's error.
func (l *Log) Head(ctx context.Context, stream string) (Cursor, error) {
	if err := l.check(stream); err != nil {
		return Cursor{}, err
	}
	b, err := l.store.Bounds(ctx, stream)
	if err != nil {
		return Cursor{}, err
	}
	return Cursor{Epoch: b.Epoch, Seq: b.Head}, nil
}

// ReadAfter returns up to limit retained events of stream with seq >
// after.Seq, in order (limit <= 0 means DefaultGapCap). A cursor with an
// epoch is checked against the store's: the events are then known to belong
// to after's history. The zero Cursor reads from the start of whatever
// history the store holds; take the epoch from Head first when it matters.
//
// Errors: ErrEmptyStream, ErrWrongEpoch (after is from another epoch),
// ErrUnknownStream, ErrCursorAhead (after.Seq > head), ErrCursorExpired
// (event after.Seq+1 is no longer retained), ErrClosed, ctx.Err(), or the
// store's error.
func (l *Log) ReadAfter(ctx context.Context, stream string, after Cursor, limit int) ([]Event, error) {
	return l.ReadAfterInto(ctx, stream, after, limit, nil)
}

// ReadAfterInto is ReadAfter appending to dst[:0], so a caller that reuses
// dst reads without allocating.
//
// Errors: as ReadAfter.
func (l *Log) ReadAfterInto(ctx context.Context, stream string, after Cursor, limit int, dst []Event) ([]Event, error) {
	if err := l.check(stream); err != nil {
		return dst[:0], err
	}
	if limit <= 0 {
		limit = DefaultGapCap
	}
	return l.store.ReadAfter(ctx, stream, after, limit, dst[:0])
}

// Replay answers a client reconnecting to stream at cursor from, with at
// most gapCap events (gapCap <= 0 means DefaultGapCap):
//
//   - from is from another epoch: Unrecoverable, WrongEpoch;
//   - from is at head: Events with no events (nothing is re-sent);
//   - from is more than gapCap behind head: SkippedToHead with the gap;
//   - the events after from are no longer retained: Unrecoverable, Expired;
//   - otherwise Events with every event after from (at most gapCap).
//
// The cases are checked in this order, so a cursor both far behind and
// expired gets SkippedToHead. The zero Cursor is "nothing seen yet" in any
// epoch: it asks for the whole stream, so once count or age retention has
// dropped event 1 a new client gets Unrecoverable with Reason Expired (or
// SkippedToHead if head > gapCap), never the retained tail with a silent
// hole before it; it then continues from Result.Resume (the head) and loads
// the history it wants another way.
//
// Errors: ErrEmptyStream, ErrUnknownStream, ErrCursorAhead (from is in this
// epoch but beyond head: never silently treated as "nothing to send"),
// ErrClosed, ctx.Err(), or the store's error.
func (l *Log) Replay(ctx context.Context, stream string, from Cursor, gapCap int) (Result, error) {
	return l.ReplayInto(ctx, stream, from, gapCap, nil)
}

// ReplayInto is Replay appending the events to dst[:0], so a caller that
// reuses dst replays without allocating.
//
// Errors: as Replay.
func (l *Log) ReplayInto(ctx context.Context, stream string, from Cursor, gapCap int, dst []Event) (Result, error) {
	if err := l.check(stream); err != nil {
		return Result{}, err
	}
	if gapCap <= 0 {
		gapCap = DefaultGapCap
	}
	// Two tries: the epoch may change between Bounds and ReadAfter (a shared
	// store that was restored); the second round reports the new epoch.
	for try := 0; ; try++ {
		b, err := l.store.Bounds(ctx, stream)
		if err != nil {
			return Result{}, err
		}
		res, read, err := decideReplay(stream, from, b, gapCap)
		if err != nil || !read {
			return res, err
		}
		evs, err := l.store.ReadAfter(ctx, stream, Cursor{Epoch: b.Epoch, Seq: from.Seq}, gapCap, dst[:0])
		switch {
		case errors.Is(err, ErrWrongEpoch) && try == 0:
			continue
		case errors.Is(err, ErrCursorExpired): // retention moved on since Bounds
			return Result{Outcome: Unrecoverable, Reason: Expired, Head: res.Head, Resume: res.Head}, nil
		case err != nil:
			return Result{}, err
		}
		res.Events = evs
		if n := len(evs); n > 0 {
			res.Resume.Seq = evs[n-1].Seq
			res.Head.Seq = max(res.Head.Seq, res.Resume.Seq)
		}
		return res, nil
	}
}

// decideReplay is the decision of Replay for a cursor and the stream's
// bounds: a final result (read false), or an Events result whose events
// are still to be read from the store (read true; Resume is the input
// cursor in b's epoch). The cases are checked in the order Replay's doc
// lists them.
func decideReplay(stream string, from Cursor, b Bounds, gapCap int) (res Result, read bool, err error) {
	head := Cursor{Epoch: b.Epoch, Seq: b.Head}
	stop := func(o Outcome, r Reason, gap uint64) (Result, bool, error) {
		return Result{Outcome: o, Reason: r, Gap: gap, Head: head, Resume: head}, false, nil
	}
	switch gap := b.Head - from.Seq; {
	case !from.IsZero() && from.Epoch != b.Epoch:
		return stop(Unrecoverable, WrongEpoch, 0)
	case from.Seq > b.Head:
		return Result{}, false, errorf(ErrCursorAhead, "stream %q: cursor %d, head %d", stream, from.Seq, b.Head)
	case gap == 0:
		return stop(Events, NoReason, 0)
	case gap > uint64(gapCap):
		return stop(SkippedToHead, NoReason, gap)
	case from.Seq+1 < b.First:
		return stop(Unrecoverable, Expired, 0)
	}
	return Result{Outcome: Events, Head: head, Resume: Cursor{Epoch: b.Epoch, Seq: from.Seq}}, true, nil
}

// SetState sets the state of stream, creating the stream if it does not
// exist, and wakes its subscribers. Ended is terminal.
//
// Errors: ErrEmptyStream, ErrInvalidState, ErrStreamEnded (changing an
// Ended stream to another state), ErrClosed, ctx.Err(), or the store's
// error.
func (l *Log) SetState(ctx context.Context, stream string, st State) error {
	if err := l.check(stream); err != nil {
		return err
	}
	if !st.Valid() {
		return errorf(ErrInvalidState, "%d", st)
	}
	return l.store.SetState(ctx, stream, st)
}

// State returns the state of stream.
//
// Errors: ErrEmptyStream, ErrUnknownStream, ErrClosed, ctx.Err(), or the
// store's error.
func (l *Log) State(ctx context.Context, stream string) (State, error) {
	if err := l.check(stream); err != nil {
		return 0, err
	}
	return l.store.State(ctx, stream)
}

// Delete removes stream from the log: its events, head and state are freed
// by the store (memory is released, database rows are deleted), later reads
// of it fail with an error wrapping ErrUnknownStream and ErrStreamDeleted,
// and its live subscriptions are woken and end: their Next returns that
// error (never a hang, never events of another stream).
//
// A deleted id is never recreated in this epoch: Append and SetState on it
// fail with ErrStreamDeleted. Seqs of a recreated stream would restart at 1
// under the same epoch, so a client's cursor from the deleted stream would
// silently look like a valid position in the new one; refusing the id keeps
// every cursor meaningful. Use a fresh id for a new stream. (The store keeps
// only the id as a tombstone, not the events.)
//
// Errors: ErrEmptyStream, ErrUnknownStream (no such stream), an error
// wrapping ErrStreamDeleted (already deleted), ErrClosed, ctx.Err(), or the
// store's error.
func (l *Log) Delete(ctx context.Context, stream string) error {
	if err := l.check(stream); err != nil {
		return err
	}
	return l.store.Delete(ctx, stream)
}

// Streams returns every stream of the log (not deleted ones) whose state
// satisfies keep, sorted by id; a nil keep returns them all. It lists
// streams from the store, so after a restart on a persistent store it
// covers every stream, not only those the process has touched since:
//
//	syncable, err := l.Streams(ctx, eventlog.State.Syncable)
//
// The list is a snapshot: streams may be created, change state or be
// deleted while or after it is taken.
//
// Errors: ErrClosed, ctx.Err(), or the store's error.
func (l *Log) Streams(ctx context.Context, keep func(State) bool) ([]StreamInfo, error) {
	if l.closed.Load() {
		return nil, ErrClosed
	}
	all, err := l.store.Streams(ctx, nil)
	if err != nil {
		return nil, err
	}
	if keep == nil {
		return all, nil
	}
	out := all[:0]
	for _, si := range all {
		if keep(si.State) {
			out = append(out, si)
		}
	}
	return out, nil
}

// Oldest returns the seq of the oldest event of stream that is still
// retained: events Oldest..head can be read, older ones were dropped by
// retention. A stream with no retained event (none appended yet, or all
// expired) returns head+1. A history view can use it to answer "there is
// nothing older" precisely, instead of probing for ErrCursorExpired.
//
// Errors: ErrEmptyStream, ErrUnknownStream (including a deleted stream),
// ErrClosed, ctx.Err(), or the store's error.
func (l *Log) Oldest(ctx context.Context, stream string) (uint64, error) {
	if err := l.check(stream); err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	b, err := l.store.Bounds(ctx, stream)
	if err != nil {
		return 0, err
	}
	return b.First, nil
}

// Close closes the log and its store. Blocked Subscription.Next calls
// return ErrClosed, and every later call returns ErrClosed. Close is
// idempotent; it returns the store's Close error.
func (l *Log) Close() error {
	l.closeOnce.Do(func() {
		l.closed.Store(true)
		close(l.done)
		l.closeErr = l.store.Close()
	})
	return l.closeErr
}

func (l *Log) check(stream string) error {
	if l.closed.Load() {
		return ErrClosed
	}
	if stream == "" {
		return ErrEmptyStream
	}
	return nil
}

// changed is the store's Watch callback: it tells every subscriber of
// stream (of every stream, for "") that it has news. It never blocks.
func (l *Log) changed(stream string) {
	if l.nsubs.Load() == 0 {
		return
	}
	l.subsMu.RLock()
	if stream == "" {
		for _, m := range l.subs {
			wakeAll(m)
		}
	} else {
		wakeAll(l.subs[stream])
	}
	l.subsMu.RUnlock()
}

func wakeAll(m map[*Subscription]struct{}) {
	for s := range m {
		select {
		case s.wake <- struct{}{}:
		default: // a wake-up is already pending
		}
	}
}
