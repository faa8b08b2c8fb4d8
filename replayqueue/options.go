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
// the queue is disconnected. The names are shared with sendqueue, where they
// mean the same thing. The zero value is [RejectNew].
type Overflow int

const (
	// RejectNew rejects the new item: Send returns [ErrFull] and the caller
	// keeps the item. It is the default.
	RejectNew Overflow = iota
	// DropOldest evicts the oldest buffered items until the new one fits.
	// Every evicted item is reported to the [WithDropped] callback with
	// reason [ErrEvicted], and counted in Stats.Dropped. Without
	// WithDropped each eviction is logged with [log/slog]'s default logger
	// at Warn level (the count, not the items), so no eviction is silent;
	// register the callback to handle the items.
	DropOldest
	// Block makes Send wait, under its context, until the buffer has room
	// (after a reconnect flushed it), the queue connects, or the queue
	// fails.
	Block
)

// String returns "reject-new", "drop-oldest" or "block".
func (o Overflow) String() string {
	switch o {
	case RejectNew:
		return "reject-new"
	case DropOldest:
		return "drop-oldest"
	case Block:
		return "block"
	}
	return fmt.Sprintf("Overflow(%d)", int(o))
}

// An Option configures a Queue of element type T in [New]; an option for
// another element type does not compile. Invalid option values make the
// With function panic, so a bad configuration fails at construction.
type Option[T any] interface {
	apply(*config[T])
}

type config[T any] struct {
	maxItems      int
	maxBytes      int
	size          func(T) int
	overflow      Overflow
	dropped       func(T, error)
	replayTimeout time.Duration
}

type optionFunc[T any] func(*config[T])

func (f optionFunc[T]) apply(c *config[T]) { f(c) }

// WithMaxItems bounds the buffer to n items. The bound is checked before an
// item is stored, so the buffer never holds more than n items, not even
// transiently. It panics if n < 1.
func WithMaxItems[T any](n int) Option[T] {
	if n < 1 {
		panic("replayqueue: WithMaxItems needs n >= 1")
	}
	return optionFunc[T](func(c *config[T]) { c.maxItems = n })
}

// WithMaxBytes bounds the buffer to n bytes as measured by size, which is
// called once per buffered item (never for items sent straight through) and
// must be deterministic and cheap; a negative size counts as 0. The bound
// is never exceeded, not even by one item: unlike a check made before the
// append, the new item's size is included. An item larger than n can never
// be buffered: while disconnected, Send rejects it with [ErrTooLarge]
// whatever the overflow policy (while connected it is sent as usual).
//
// It panics if n < 1 or size is nil.
func WithMaxBytes[T any](n int, size func(T) int) Option[T] {
	if n < 1 || size == nil {
		panic("replayqueue: WithMaxBytes needs n >= 1 and a size function")
	}
	return optionFunc[T](func(c *config[T]) { c.maxBytes = n; c.size = size })
}

// WithOverflow sets the overflow policy; the default is [RejectNew].
// It panics on an unknown policy.
func WithOverflow[T any](p Overflow) Option[T] {
	if p < RejectNew || p > Block {
		panic("replayqueue: unknown overflow policy")
	}
	return optionFunc[T](func(c *config[T]) { c.overflow = p })
}

// WithDropped registers fn to learn about every item the queue drops on its
// own: items evicted by [DropOldest] (reason [ErrEvicted]) and items still
// buffered at [Queue.Close] (reason [ErrClosed]). Items the queue hands back
// (the return value of [Queue.Fail]) and items rejected by Send (the caller
// still has them) are not reported here, so each item has exactly one fate:
// sent, handed back, rejected, or reported dropped. Without WithDropped
// drops are logged with [log/slog] (the count, not the items).
//
// fn runs on the goroutine that caused the drop after the queue's locks are
// released, so it may call the Queue's methods. A nil fn restores the
// default.
func WithDropped[T any](fn func(item T, reason error)) Option[T] {
	return optionFunc[T](func(c *config[T]) { c.dropped = fn })
}

// WithReplayTimeout sets how long a replayed item waits for its reply
// before its reply callback receives [ErrReplayTimeout]. It panics if
// d <= 0.
func WithReplayTimeout[T any](d time.Duration) Option[T] {
	if d <= 0 {
		panic("replayqueue: WithReplayTimeout needs d > 0")
	}
	return optionFunc[T](func(c *config[T]) { c.replayTimeout = d })
}
