package sendqueue

import (
	"fmt"
	"time"
)

// DefaultCapacity is the item cap of a [Queue] built without [WithCapacity].
// It matches the 100-message cap of the SSE client the package comes from.
const DefaultCapacity = 100

// Stop is the value a [BackOff] returns from NextBackOff to say "give up":
// the head item is then failed with [ErrGaveUp]. It equals backoff.Stop from
// github.com/cenkalti/backoff, so those back-offs can be passed as they are.
const Stop time.Duration = -1

// BackOff decides how long the delivery loop waits between two attempts of
// the same item. github.com/cenkalti/backoff/v4's BackOff types satisfy it.
//
// A Queue calls its BackOff only from its delivery goroutine, so an
// implementation need not be safe for concurrent use. Reset is called after
// every successful send, after an item leaves the head for any reason, and on
// [Queue.Resume].
type BackOff interface {
	// NextBackOff returns the wait before the next attempt, or Stop.
	NextBackOff() time.Duration
	// Reset returns the back-off to its initial state.
	Reset()
}

// Overflow chooses what [Queue.Push] does when the queue is full. The zero
// value is [RejectNew]. The names are shared with replayqueue, where they
// mean the same thing.
type Overflow uint8

const (
	// RejectNew (the default) makes Push fail with [ErrFull] and leaves the
	// queue unchanged.
	RejectNew Overflow = iota
	// DropOldest makes room by removing the oldest queued Retry items
	// (never the item being sent, never FireAndForget items). Each dropped
	// item is reported with [ErrEvicted] and its ticket settles with
	// ErrEvicted. If the evictable items cannot make room, Push fails with
	// ErrFull and nothing is dropped.
	DropOldest
)

// String returns "reject-new" or "drop-oldest".
func (o Overflow) String() string {
	switch o {
	case RejectNew:
		return "reject-new"
	case DropOldest:
		return "drop-oldest"
	}
	return fmt.Sprintf("Overflow(%d)", uint8(o))
}

// An Option configures a [Queue] of element type T in [New]; an option for
// another element type does not compile. Options are immutable values, safe
// to reuse for several queues (except a [WithBackOff] value). Invalid
// option values make the With function panic, so a bad configuration fails
// at construction, not at the first Push.
type Option[T any] interface {
	apply(*config[T])
}

type optionFunc[T any] func(*config[T])

func (f optionFunc[T]) apply(c *config[T]) { f(c) }

type config[T any] struct {
	capacity    int
	maxBytes    int64
	size        func(T) int
	overflow    Overflow
	classify    func(error) Class
	backoff     BackOff
	maxAttempts int
	report      func(Report[T])
}

// WithCapacity caps the number of queued items, the one being sent included.
// The default is [DefaultCapacity]. It panics if n < 1.
func WithCapacity[T any](n int) Option[T] {
	if n < 1 {
		panic("sendqueue: WithCapacity needs n >= 1")
	}
	return optionFunc[T](func(c *config[T]) { c.capacity = n })
}

// WithMaxBytes also caps the total size of the queued items, the one being
// sent included, as measured by size (called once per item, in Push). A
// single item larger than n is rejected with [ErrTooLarge]. WithMaxBytes
// panics if n < 1 or size is nil.
func WithMaxBytes[T any](n int64, size func(T) int) Option[T] {
	if n < 1 || size == nil {
		panic("sendqueue: WithMaxBytes needs n >= 1 and a size function")
	}
	return optionFunc[T](func(c *config[T]) { c.maxBytes, c.size = n, size })
}

// WithOverflow sets what Push does when the queue is full. The default is
// [RejectNew].
// It panics on an unknown Overflow.
func WithOverflow[T any](o Overflow) Option[T] {
	if o > DropOldest {
		panic("sendqueue: unknown Overflow")
	}
	return optionFunc[T](func(c *config[T]) { c.overflow = o })
}

// WithClassifier sets how send errors are classified. The default is
// [DefaultClassifier]. A nil classify restores the default. A Class other
// than the three defined ones counts as [ClassRetry]; a panic in classify
// counts as [ClassDrop], and the reported error carries the panic value.
func WithClassifier[T any](classify func(error) Class) Option[T] {
	return optionFunc[T](func(c *config[T]) { c.classify = classify })
}

// WithBackOff sets the wait between attempts of a failed item. The default
// is an exponential back-off (500 ms initial, factor 1.5, 60 s max, with
// jitter) that never gives up. b is used only by the queue's delivery
// goroutine and must not be shared with another Queue. A nil b restores the
// default.
func WithBackOff[T any](b BackOff) Option[T] {
	return optionFunc[T](func(c *config[T]) { c.backoff = b })
}

// WithMaxAttempts makes a Retry item fail with [ErrGaveUp] after n attempts
// (attempts that failed with a [ClassPause] error count too). The default,
// 0, never gives up. It panics if n < 0.
func WithMaxAttempts[T any](n int) Option[T] {
	if n < 0 {
		panic("sendqueue: WithMaxAttempts needs n >= 0")
	}
	return optionFunc[T](func(c *config[T]) { c.maxAttempts = n })
}

// WithReport sets the function that receives every item that leaves the
// queue without being delivered: evictions, dropped or given-up items, and
// items still queued at Close. Without WithReport those events are logged
// with [log/slog]'s default logger at Warn level, so nothing is ever lost
// silently.
//
// report is called outside the queue's lock, on the goroutine that caused
// the event (Push for evictions, the delivery goroutine for failures, Close
// for leftovers), so it may be called concurrently with itself. It may call
// Len, Push, Pause or Resume, but must not call Close or Flush (they wait
// for the delivery goroutine, which may be the one calling report). report
// must not panic: a panic on the delivery goroutine is not recovered.
//
// Each item reaches report at most once, and its [Ticket] settles only
// after report has returned, so a goroutine that waits on the ticket sees
// everything report did. A nil report restores the default.
func WithReport[T any](report func(Report[T])) Option[T] {
	return optionFunc[T](func(c *config[T]) { c.report = report })
}
