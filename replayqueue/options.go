package replayqueue

import (
	"fmt"
	"time"
)

// DefaultMaxItems is the buffer's item bound unless [WithMaxItems] says
// otherwise. The origin proxy buffered up to 1000 messages during its 2-5 s
// reconnect window; a power of two just above that keeps the ring compact.
const DefaultMaxItems = 1024

// DefaultReplayTimeout is how long a replayed item waits for its reply
// unless [WithReplayTimeout] says otherwise.
const DefaultReplayTimeout = 30 * time.Second

// Overflow is the policy [Queue.Send] applies when the buffer is full while
// the queue is disconnected.
type Overflow int

const (
	// OverflowError rejects the new item: Send returns [ErrFull] and the
	// caller keeps the item. It is the default.
	OverflowError Overflow = iota
	// OverflowDropOldest evicts the oldest buffered items until the new
	// one fits. Every evicted item is reported to the [WithDropped]
	// callback with reason [ErrEvicted], and counted in Stats.Dropped.
	// Without WithDropped each eviction is logged with [log/slog]'s
	// default logger at Warn level (the count, not the items), so no
	// eviction is silent; register the callback to handle the items.
	OverflowDropOldest
	// OverflowBlock makes Send wait, under its context, until the buffer
	// has room (after a reconnect flushed it), the queue connects, or the
	// queue fails.
	OverflowBlock
)

// String returns the policy's name.
func (o Overflow) String() string {
	switch o {
	case OverflowError:
		return "error"
	case OverflowDropOldest:
		return "drop-oldest"
	case OverflowBlock:
		return "block"
	}
	return fmt.Sprintf("Overflow(%d)", int(o))
}

// An Option configures a Queue created by [New].
type Option interface {
	apply(*config)
}

type config struct {
	maxItems      int
	maxBytes      int
	size          any // func(T) int, checked by New
	overflow      Overflow
	dropped       any // func(T, error), checked by New
	replayTimeout time.Duration
}

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

// WithMaxItems bounds the buffer to n items. The bound is checked before an
// item is stored, so the buffer never holds more than n items, not even
// transiently. It panics if n < 1.
func WithMaxItems(n int) Option {
	if n < 1 {
		panic("replayqueue: WithMaxItems needs n >= 1")
	}
	return optionFunc(func(c *config) { c.maxItems = n })
}

// WithMaxBytes bounds the buffer to n bytes as measured by size, which is
// called once per buffered item (never for items sent straight through) and
// must be deterministic and cheap; a negative size counts as 0. The bound
// is never exceeded, not even by one item: unlike a check made before the
// append, the new item's size is included. An item larger than n can never
// be buffered: while disconnected, Send rejects it with [ErrTooLarge]
// whatever the overflow policy (while connected it is sent as usual).
//
// T must be the Queue's element type; [New] panics otherwise. It panics if
// n < 1 or size is nil.
func WithMaxBytes[T any](n int, size func(T) int) Option {
	if n < 1 || size == nil {
		panic("replayqueue: WithMaxBytes needs n >= 1 and a size function")
	}
	return optionFunc(func(c *config) { c.maxBytes = n; c.size = size })
}

// WithOverflow sets the overflow policy; the default is [OverflowError].
// It panics on an unknown policy.
func WithOverflow(p Overflow) Option {
	if p < OverflowError || p > OverflowBlock {
		panic("replayqueue: unknown overflow policy")
	}
	return optionFunc(func(c *config) { c.overflow = p })
}

// WithDropped registers fn to learn about every item the queue drops on its
// own: items evicted by [OverflowDropOldest] (reason [ErrEvicted]). Items
// the queue hands back (the return value of [Queue.Fail] and [Queue.Close])
// and items rejected by Send (the caller still has them) are not reported
// here, so each item has exactly one fate: sent, handed back, rejected, or
// reported dropped.
//
// fn runs on the goroutine that caused the drop after the queue's locks are
// released, so it may call the Queue's methods. T must be the Queue's
// element type; [New] panics otherwise.
func WithDropped[T any](fn func(item T, reason error)) Option {
	return optionFunc(func(c *config) { c.dropped = fn })
}

// WithReplayTimeout sets how long a replayed item waits for its reply
// before its reply callback receives [ErrReplayTimeout]. It panics if
// d <= 0.
func WithReplayTimeout(d time.Duration) Option {
	if d <= 0 {
		panic("replayqueue: WithReplayTimeout needs d > 0")
	}
	return optionFunc(func(c *config) { c.replayTimeout = d })
}
