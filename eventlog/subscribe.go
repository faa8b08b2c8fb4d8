package eventlog

import (
	"context"
	"errors"
	"sync"
)

// Subscription is a live tail of one stream: its first Next returns the
// replay from the subscription's starting cursor, and later calls return the
// events appended after that, with no gap and no duplicate between replay
// and live events. Subscribers are woken by Append (no polling), and a slow
// subscriber never blocks appenders or other subscribers: it holds no copy
// of the events, it reads them from the log when it calls Next, and when it
// falls more than MaxLag events behind head it receives Lagged (with the
// cursor to resume from) instead of being silently skipped.
//
// Next must be called from one goroutine at a time; Close may be called from
// any goroutine, at any time. The zero Subscription is not usable: create
// one with Log.Subscribe. A Subscription must not be copied. It starts no
// goroutine, but it stays registered with its Log (and is woken by every
// append to its stream) until Close, until Next returns Lagged, or until the
// Log is closed: call Close when done with it.
type Subscription struct {
	log    *Log
	stream string
	opts   SubscribeOptions

	wake      chan struct{} // capacity 1: a pending wake-up
	closed    chan struct{} // closed by Close
	closeOnce sync.Once

	// Used only by Next (one goroutine at a time).
	first *Result // the replay result, until the first Next returns it
	epoch string  // the epoch of pos
	pos   uint64  // seq of the last event delivered (or skipped past)
	ended bool    // Lagged was returned
	err   error   // terminal error (the stream was deleted), returned again
	buf   []Event // reused for every Next
}

// Subscribe starts a live tail of stream from cursor from (the zero Cursor
// for "from the start"). The subscription is registered before the replay is
// computed, so no event can fall between the replay and the live tail.
// The first Next returns the replay result (as Log.Replay with opts.GapCap:
// Events, SkippedToHead or Unrecoverable); after SkippedToHead or
// Unrecoverable the subscription continues from the head.
//
// Errors: ErrEmptyStream, ErrUnknownStream, ErrCursorAhead, ErrClosed,
// ctx.Err(), or the store's error. On error nothing needs closing.
func (l *Log) Subscribe(ctx context.Context, stream string, from Cursor, opts SubscribeOptions) (*Subscription, error) {
	if err := l.check(stream); err != nil {
		return nil, err
	}
	if opts.GapCap <= 0 {
		opts.GapCap = DefaultGapCap
	}
	if opts.MaxLag <= 0 {
		opts.MaxLag = DefaultMaxLag
	}
	if opts.Batch <= 0 {
		opts.Batch = DefaultBatch
	}
	s := &Subscription{
		log:    l,
		stream: stream,
		opts:   opts,
		wake:   make(chan struct{}, 1),
		closed: make(chan struct{}),
	}
	l.subsMu.Lock()
	m := l.subs[stream]
	if m == nil {
		m = make(map[*Subscription]struct{})
		l.subs[stream] = m
	}
	m[s] = struct{}{}
	l.nsubs.Add(1)
	l.subsMu.Unlock()

	res, err := l.ReplayInto(ctx, stream, from, opts.GapCap, nil)
	if err != nil {
		s.unregister()
		return nil, err
	}
	s.first = &res
	s.epoch, s.pos = res.Resume.Epoch, res.Resume.Seq
	return s, nil
}

// Stream returns the id of the subscribed stream.
func (s *Subscription) Stream() string { return s.stream }

// Next returns the next result: first the replay result, then batches of
// live events (Outcome Events, at most opts.Batch events, never empty),
// waiting for an append if there is nothing new. The returned Events are
// valid until the next call of Next.
//
// When the subscriber is more than MaxLag events behind head, or the next
// event it needs is no longer retained, Next returns a Lagged result whose
// Resume is the cursor to subscribe again from; the subscription then ends.
// When the store's epoch changed under the subscription (a shared store
// restored from backup), Next returns Unrecoverable with Reason WrongEpoch
// and the new head, and the subscription ends: its position belongs to a
// history the store no longer holds.
//
// Errors: ErrStreamEnded once every event of an Ended stream has been
// delivered; an error wrapping ErrStreamDeleted (and ErrUnknownStream) once
// the stream was deleted with Log.Delete, at once, even if events were not
// delivered yet (they are gone), after which the subscription has ended; ErrSubscriptionClosed after
// Close or after a Lagged or Unrecoverable result; ErrClosed once the log is closed; ctx.Err() if ctx ends while waiting (the
// subscription stays usable); or the store's error.
func (s *Subscription) Next(ctx context.Context) (Result, error) {
	if r := s.first; r != nil {
		s.first = nil
		return *r, nil
	}
	l := s.log
	for {
		if err := s.usable(ctx); err != nil {
			return Result{}, err
		}
		res, done, err := s.poll(ctx)
		if done || err != nil {
			return res, err
		}
		select {
		case <-s.wake:
		case <-ctx.Done():
			return Result{}, ctx.Err()
		case <-s.closed:
			return Result{}, ErrSubscriptionClosed
		case <-l.done:
			return Result{}, ErrClosed
		}
	}
}

// usable returns the error Next must return before looking at the store.
func (s *Subscription) usable(ctx context.Context) error {
	switch {
	case s.err != nil:
		return s.err
	case s.ended:
		return ErrSubscriptionClosed
	}
	select {
	case <-s.closed:
		return ErrSubscriptionClosed
	case <-s.log.done:
		return ErrClosed
	default:
	}
	return ctx.Err()
}

// poll looks at the stream once: done reports a result (or error) for
// Next; otherwise there is nothing new and Next waits for a wake-up.
func (s *Subscription) poll(ctx context.Context) (res Result, done bool, err error) {
	st := s.log.store
	b, err := st.Bounds(ctx, s.stream)
	if err != nil {
		return Result{}, true, s.fail(err)
	}
	if b.Epoch != s.epoch {
		return s.wrongEpoch(b), true, nil
	}
	if b.Head > s.pos {
		if b.Head-s.pos > uint64(s.opts.MaxLag) || s.pos+1 < b.First {
			return s.lagged(b.Head), true, nil
		}
		evs, err := st.ReadAfter(ctx, s.stream, Cursor{Epoch: s.epoch, Seq: s.pos}, s.opts.Batch, s.buf[:0])
		switch {
		case errors.Is(err, ErrCursorExpired):
			return s.lagged(b.Head), true, nil
		case errors.Is(err, ErrWrongEpoch): // the store changed history since Bounds
			if b, err = st.Bounds(ctx, s.stream); err != nil {
				return Result{}, true, s.fail(err)
			}
			return s.wrongEpoch(b), true, nil
		case err != nil:
			return Result{}, true, s.fail(err)
		}
		s.buf = evs
		if len(evs) > 0 {
			s.pos = evs[len(evs)-1].Seq
			head := max(b.Head, s.pos)
			return Result{Outcome: Events, Events: evs, Head: Cursor{s.epoch, head}, Resume: Cursor{s.epoch, s.pos}}, true, nil
		}
	}
	state, err := st.State(ctx, s.stream)
	if err != nil {
		return Result{}, true, s.fail(err)
	}
	if state == Ended {
		// Re-check: an append may have landed between Bounds and State.
		if b, err := st.Bounds(ctx, s.stream); err == nil && b.Head == s.pos && b.Epoch == s.epoch {
			return Result{}, true, ErrStreamEnded
		}
		return Result{}, false, nil
	}
	return Result{}, false, nil
}

// fail ends the subscription if err says its stream was deleted, and
// returns err.
func (s *Subscription) fail(err error) error {
	if errors.Is(err, ErrStreamDeleted) {
		s.err = err
		s.unregister()
	}
	return err
}

func (s *Subscription) lagged(head uint64) Result {
	return s.end(Result{Outcome: Lagged, Head: Cursor{s.epoch, head}, Resume: Cursor{s.epoch, s.pos}})
}

// wrongEpoch ends the subscription: the store's history is no longer the
// one its position belongs to.
func (s *Subscription) wrongEpoch(b Bounds) Result {
	head := Cursor{Epoch: b.Epoch, Seq: b.Head}
	return s.end(Result{Outcome: Unrecoverable, Reason: WrongEpoch, Head: head, Resume: head})
}

// end ends the subscription with res, its last result.
func (s *Subscription) end(res Result) Result {
	s.ended = true
	s.unregister()
	return res
}

// Close ends the subscription; a Next blocked in another goroutine returns
// ErrSubscriptionClosed. Close is idempotent and always returns nil.
func (s *Subscription) Close() error {
	s.closeOnce.Do(func() { close(s.closed) })
	s.unregister()
	return nil
}

func (s *Subscription) unregister() {
	l := s.log
	l.subsMu.Lock()
	if m := l.subs[s.stream]; m != nil {
		if _, ok := m[s]; ok {
			delete(m, s)
			l.nsubs.Add(-1)
			if len(m) == 0 {
				delete(l.subs, s.stream)
			}
		}
	}
	l.subsMu.Unlock()
}
