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
	s.pos = res.Resume.Seq
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
//
// Errors: ErrStreamEnded once every event of an Ended stream has been
// delivered; an error wrapping ErrStreamDeleted (and ErrUnknownStream) once
// the stream was deleted with Log.Delete, at once, even if events were not
// delivered yet (they are gone), after which the subscription has ended; ErrSubscriptionClosed after Close or after Lagged; ErrClosed
// once the log is closed; ctx.Err() if ctx ends while waiting (the
// subscription stays usable); or the store's error.
func (s *Subscription) Next(ctx context.Context) (Result, error) {
	if r := s.first; r != nil {
		s.first = nil
		return *r, nil
	}
	l := s.log
	for {
		if s.err != nil {
			return Result{}, s.err
		}
		if s.ended {
			return Result{}, ErrSubscriptionClosed
		}
		select {
		case <-s.closed:
			return Result{}, ErrSubscriptionClosed
		case <-l.done:
			return Result{}, ErrClosed
		default:
		}
		if err := ctx.Err(); err != nil {
			return Result{}, err
		}
		first, head, err := l.store.Bounds(ctx, s.stream)
		if err != nil {
			return Result{}, s.fail(err)
		}
		if head > s.pos {
			if head-s.pos > uint64(s.opts.MaxLag) || s.pos+1 < first {
				return s.lagged(head), nil
			}
			evs, err := l.store.ReadAfter(ctx, s.stream, s.pos, s.opts.Batch, s.buf[:0])
			if err != nil {
				if errors.Is(err, ErrCursorExpired) {
					return s.lagged(head), nil
				}
				return Result{}, s.fail(err)
			}
			s.buf = evs
			if len(evs) > 0 {
				s.pos = evs[len(evs)-1].Seq
				if s.pos > head {
					head = s.pos
				}
				return Result{
					Outcome: Events,
					Events:  evs,
					Head:    l.Cursor(head),
					Resume:  l.Cursor(s.pos),
				}, nil
			}
		}
		st, err := l.store.State(s.stream)
		if err != nil {
			return Result{}, s.fail(err)
		}
		if st == Ended {
			// Re-check: an append may have landed between Bounds and State.
			if _, h, err := l.store.Bounds(ctx, s.stream); err == nil && h == s.pos {
				return Result{}, ErrStreamEnded
			}
			continue
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
	s.ended = true
	s.unregister()
	return Result{Outcome: Lagged, Head: s.log.Cursor(head), Resume: s.log.Cursor(s.pos)}
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
