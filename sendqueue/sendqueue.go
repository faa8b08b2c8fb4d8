package sendqueue

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/cenkalti/backoff/v4"

	"github.com/steadfast-go/steadfast/internal/ring"
)

// Errors returned by Push, Flush and Close, and wrapped by the reasons in
// [Report] and [Ticket.Err]. Test for them with errors.Is.
var (
	// ErrFull: Push found the queue at its cap (count or bytes) and the
	// overflow policy could not make room.
	ErrFull = errors.New("sendqueue: queue full")
	// ErrTooLarge: the item alone is larger than the WithMaxBytes limit.
	ErrTooLarge = errors.New("sendqueue: item larger than the byte limit")
	// ErrInvalid: the item has an unknown Policy or a negative size.
	ErrInvalid = errors.New("sendqueue: invalid item")
	// ErrClosed: the queue is closed. Items still queued at Close are
	// reported with it.
	ErrClosed = errors.New("sendqueue: queue closed")
	// ErrEvicted: the item was removed to make room for a newer one
	// (DropOldest).
	ErrEvicted = errors.New("sendqueue: evicted to make room")
	// ErrDropped: the send failed with an error classified [ClassDrop].
	ErrDropped = errors.New("sendqueue: dropped after a permanent send error")
	// ErrGaveUp: the item will not be tried again: it was FireAndForget
	// and its one attempt failed, or it ran out of attempts
	// (WithMaxAttempts) or the BackOff returned Stop.
	ErrGaveUp = errors.New("sendqueue: gave up")
	// ErrDisconnected is for send functions to wrap when the connection is
	// down. [DefaultClassifier] classifies it [ClassPause]: the item keeps
	// its place and the queue waits for Resume.
	ErrDisconnected = errors.New("sendqueue: disconnected")
)

// Policy says how an item is retried. The zero value is [Retry].
type Policy uint8

const (
	// Retry (the default) items stay at the head of the queue after a
	// retryable failure and are tried again until delivered, dropped by
	// the classifier, or out of attempts. Use it for user messages.
	Retry Policy = iota
	// FireAndForget items get exactly one attempt, in their FIFO turn; if
	// it fails they are reported with [ErrGaveUp] and never retried. Use it
	// for control requests such as "stop" or "interrupt" that are
	// meaningless later.
	FireAndForget
)

// String returns "retry" or "fire-and-forget".
func (p Policy) String() string {
	switch p {
	case Retry:
		return "retry"
	case FireAndForget:
		return "fire-and-forget"
	}
	return fmt.Sprintf("Policy(%d)", uint8(p))
}

// Item is one outgoing send. It is a plain value: the queue keeps its own
// copy. The zero Item is a Retry item with a generated key and T's zero
// value.
type Item[T any] struct {
	// Key is the idempotency key a deduplicating receiver uses to execute a
	// retried send only once (e.g. a client message id). If empty, Push
	// generates one that is unique for the process's lifetime: a random
	// per-queue prefix and a counter, 33 bytes.
	Key string
	// Policy is Retry (the zero value) or FireAndForget.
	Policy Policy
	// Value is what the send function sends.
	Value T
}

// Report tells the user about an item that left the queue undelivered. It
// is a plain value handed to the [WithReport] function.
type Report[T any] struct {
	Item Item[T] // the item, with its key
	// Err is why: it wraps ErrEvicted, ErrDropped, ErrGaveUp or ErrClosed
	// and, when a send of the item had failed, the last send error, so
	// errors.Is matches both (an item that got a 404 and was then evicted
	// is both ErrEvicted and the 404).
	Err error
	// Attempts is how many times the item was sent.
	Attempts int
}

// Queue is a capped FIFO queue of outgoing sends with one delivery
// goroutine. Create it with [New]; the zero value is not usable. A Queue is
// safe for concurrent use and must not be copied after first use.
//
// Ordering: items are sent one at a time in Push order. The delivery loop
// peeks at the head, sends it, and removes it only when the attempt is
// settled; a failed Retry item keeps its place at the head, so an item is
// never sent before an older one that is still queued. The cap counts the
// item being sent, and no path (Push, retry, Resume) can exceed it.
//
// Each pushed item has exactly one fate: delivered (its ticket settles
// Delivered), or failed (it is reported once to the [WithReport] function
// and then its ticket settles Failed with the same reason). Nothing is
// handed back to the caller: items left at Close are reported, not
// returned.
type Queue[T any] struct {
	// Immutable after New.
	send        func(context.Context, Item[T]) error
	classify    func(error) Class
	bo          BackOff // used only by the delivery goroutine
	maxAttempts int
	capacity    int
	maxBytes    int64 // 0: no byte cap
	size        func(T) int
	overflow    Overflow
	report      func(Report[T])
	keyPrefix   string          // random, hex, per Queue
	sendCtx     context.Context // passed to send; canceled by Close
	cancel      context.CancelFunc
	wake        chan struct{} // cap 1: work arrived, or Resume
	stop        chan struct{} // closed by Close
	loopDone    chan struct{} // closed when the delivery goroutine exits

	mu        sync.Mutex // protects the fields below
	buf       ring.Buffer[slot[T]]
	bytes     int64 // total size of queued items
	sending   bool  // a send of the head item is running
	paused    bool
	closed    bool
	abandoned bool          // Close found items still queued
	idle      bool          // the loop waits for work and needs a wake
	resumeGen uint64        // counts Resume calls
	settling  int           // items out of buf whose tickets have not settled
	empty     chan struct{} // made by Flush; closed when nothing is queued or settling
	keyCtr    uint64        // counter part of the next generated key
}

// slot is one queued item, held by value in the ring buffer so that a Push
// allocates only the Ticket the caller keeps.
type slot[T any] struct {
	item     Item[T]
	size     int
	attempts int   // written only by the delivery goroutine
	lastErr  error // the last send error, nil if no send failed
	ticket   *Ticket
}

// reason wraps sentinel (ErrEvicted or ErrClosed) with the item's last send
// error, if a send of it had failed.
func (s *slot[T]) reason(sentinel error) error {
	if s.lastErr == nil {
		return sentinel
	}
	return fmt.Errorf("%w (last send error: %w)", sentinel, s.lastErr)
}

// New returns a Queue that delivers items with send and starts its delivery
// goroutine; call [Queue.Close] to stop it.
//
// send is called from that one goroutine, never concurrently with itself,
// with the head item and a context that Close cancels. A nil error means
// delivered. Otherwise the error is classified (see [DefaultClassifier]):
// Retry items stay at the head and are tried again after the back-off, or
// when Resume is called; Pause-class errors also pause the queue. A panic in
// send does not crash the program: the attempt fails, and the item is
// dropped and reported with [ErrDropped] and an error carrying the panic
// value (sending it again would most likely panic again). send may call
// Push, Len, Pause or Resume, but not Close or Flush: they wait for the
// delivery goroutine, which is the one running send.
//
// New skips nil options. It panics if send is nil.
func New[T any](send func(ctx context.Context, it Item[T]) error, opts ...Option[T]) *Queue[T] {
	if send == nil {
		panic("sendqueue: New needs a send function")
	}
	c := config[T]{capacity: DefaultCapacity}
	for _, o := range opts {
		if o != nil {
			o.apply(&c)
		}
	}
	q := &Queue[T]{
		send:        send,
		classify:    c.classify,
		bo:          c.backoff,
		maxAttempts: c.maxAttempts,
		capacity:    c.capacity,
		maxBytes:    c.maxBytes,
		size:        c.size,
		overflow:    c.overflow,
		report:      c.report,
		wake:        make(chan struct{}, 1),
		stop:        make(chan struct{}),
		loopDone:    make(chan struct{}),
	}
	if q.classify == nil {
		q.classify = DefaultClassifier
	}
	if q.bo == nil {
		q.bo = DefaultBackOff()
	}
	if q.report == nil {
		q.report = logReport[T]
	}
	var p [8]byte
	_, _ = rand.Read(p[:]) // crypto/rand.Read never fails
	q.keyPrefix = hex.EncodeToString(p[:]) + "-"
	q.sendCtx, q.cancel = context.WithCancel(context.Background())
	go q.run()
	return q
}

// DefaultBackOff returns the back-off a Queue uses unless [WithBackOff] is
// given: exponential, starting at 500 ms, factor 1.5, at most 60 s between
// attempts, with ±50% jitter, and no time limit (it never returns Stop).
func DefaultBackOff() BackOff {
	b := backoff.NewExponentialBackOff()
	b.MaxElapsedTime = 0
	return b
}

func logReport[T any](r Report[T]) {
	slog.Warn("sendqueue: item not delivered", "key", r.Item.Key,
		"policy", r.Item.Policy.String(), "attempts", r.Attempts, "err", r.Err)
}

// Push appends it to the queue and returns its ticket. If it.Key is empty a
// unique key is generated (see [Item]). Push never blocks on the send.
//
// When the queue is at its cap, the overflow policy decides: RejectNew
// returns ErrFull; DropOldest evicts the oldest Retry items not being sent
// (each is reported with ErrEvicted, then its ticket settles) or, if that
// cannot make room, returns ErrFull without evicting anything.
//
// Errors, in this order of precedence: [ErrClosed] once Close has been
// called (whatever the item); [ErrInvalid]; [ErrTooLarge]; [ErrFull]. On
// error the queue is unchanged and the item was not queued.
func (q *Queue[T]) Push(it Item[T]) (*Ticket, error) {
	size := 0
	if q.size != nil {
		size = q.size(it.Value) // user code: outside the lock
	}
	t := new(Ticket)
	q.mu.Lock()
	if err := q.check(it, size); err != nil {
		q.mu.Unlock()
		return nil, err
	}
	var evicted []slot[T]
	if !q.fits(size) {
		if q.overflow == DropOldest {
			evicted = q.evictFor(size)
		}
		if evicted == nil {
			q.mu.Unlock()
			return nil, ErrFull
		}
	}
	if it.Key == "" {
		it.Key = q.nextKey()
	}
	t.key = it.Key
	q.buf.PushBack(slot[T]{item: it, size: size, ticket: t})
	q.bytes += int64(size)
	if q.idle {
		q.idle = false
		select {
		case q.wake <- struct{}{}:
		default:
		}
	}
	q.mu.Unlock()
	q.fail(evicted, ErrEvicted)
	return t, nil
}

// check returns the error, if any, that Push must fail with before looking
// at the room left. The caller holds q.mu.
func (q *Queue[T]) check(it Item[T], size int) error {
	switch {
	case q.closed:
		return ErrClosed
	case it.Policy > FireAndForget:
		return fmt.Errorf("%w: unknown policy %d", ErrInvalid, it.Policy)
	case size < 0:
		return fmt.Errorf("%w: negative size %d", ErrInvalid, size)
	case q.maxBytes > 0 && int64(size) > q.maxBytes:
		return ErrTooLarge
	}
	return nil
}

// fits reports whether one more item of the given size fits under both
// caps. The caller holds q.mu.
func (q *Queue[T]) fits(size int) bool {
	return q.buf.Len() < q.capacity && (q.maxBytes == 0 || q.bytes+int64(size) <= q.maxBytes)
}

// evictFor removes the oldest evictable items so that one more item of the
// given size fits and returns them, in queue order, for the caller to
// report and settle once q.mu is released. It returns nil and changes
// nothing if that is impossible. The caller holds q.mu.
func (q *Queue[T]) evictFor(size int) []slot[T] {
	victims := pickVictims(q.buf.Len(), q.capacity, q.bytes, q.maxBytes, size, q.sending,
		func(i int) (Policy, int) { s := q.buf.At(i); return s.item.Policy, s.size })
	if victims == nil {
		return nil
	}
	evicted := make([]slot[T], 0, len(victims))
	j := 0
	for i := range q.buf.Len() {
		s := q.buf.At(i)
		if len(evicted) < len(victims) && i == victims[len(evicted)] {
			evicted = append(evicted, *s)
			q.bytes -= int64(s.size)
			continue
		}
		*q.buf.At(j) = *s
		j++
	}
	q.buf.Truncate(j)
	q.settling += len(evicted)
	return evicted
}

// pickVictims is the eviction rule: the indexes, oldest first, of the
// fewest oldest items whose removal makes room for one more item of the
// given size. The head is skipped while it is being sent, and so is every
// FireAndForget item. It returns nil if no choice makes room. item(i)
// returns the policy and size of the i-th queued item.
func pickVictims(n, capacity int, bytes, maxBytes int64, size int, sending bool, item func(int) (Policy, int)) []int {
	needN := n + 1 - capacity
	needB := int64(0)
	if maxBytes > 0 {
		needB = bytes + int64(size) - maxBytes
	}
	victims := []int{} // not nil: nil means "impossible"
	for i := 0; i < n && (needN > 0 || needB > 0); i++ {
		policy, sz := item(i)
		if (i == 0 && sending) || policy != Retry {
			continue
		}
		victims = append(victims, i)
		needN--
		needB -= int64(sz)
	}
	if needN > 0 || needB > 0 {
		return nil
	}
	return victims
}

// fail reports each of the slots with the given sentinel (and its last send
// error), then settles its ticket, in that order, so that a goroutine that
// waits on a ticket sees what the report did. The slots have left the
// buffer and were counted in q.settling; the caller does not hold q.mu.
func (q *Queue[T]) fail(slots []slot[T], sentinel error) {
	if len(slots) == 0 {
		return
	}
	for i := range slots {
		s := &slots[i]
		reason := s.reason(sentinel)
		q.report(Report[T]{Item: s.item, Err: reason, Attempts: s.attempts})
		s.ticket.settle(Failed, reason)
	}
	q.mu.Lock()
	q.settling -= len(slots)
	q.signalEmpty()
	q.mu.Unlock()
}

// signalEmpty wakes Flush callers when nothing is queued or settling. The
// caller holds q.mu.
func (q *Queue[T]) signalEmpty() {
	if q.buf.Len() == 0 && q.settling == 0 && q.empty != nil {
		close(q.empty)
		q.empty = nil
	}
}

// nextKey returns a fresh key: the queue's random prefix and a counter in
// 16 hex digits. The caller holds q.mu.
func (q *Queue[T]) nextKey() string {
	const digits = "0123456789abcdef"
	var b [keyLen]byte
	n := copy(b[:], q.keyPrefix)
	c := q.keyCtr
	q.keyCtr++
	for i := keyLen - 1; i >= n; i-- {
		b[i] = digits[c&15]
		c >>= 4
	}
	return string(b[:])
}

const keyLen = 16 + 1 + 16 // hex prefix, '-', hex counter

// Pause stops delivery, for example when the connection is lost: nothing
// is attempted until Resume. A send already running finishes and its result
// is kept. Pausing a paused or closed queue does nothing.
func (q *Queue[T]) Pause() {
	q.mu.Lock()
	q.paused = true
	q.mu.Unlock()
}

// Resume restarts delivery, for example after a reconnect: the backlog is
// sent in order, before any item pushed later, and a head item waiting for
// its back-off is tried at once (the back-off is reset). Resuming a running
// or closed queue does nothing but that.
func (q *Queue[T]) Resume() {
	q.mu.Lock()
	q.paused = false
	q.resumeGen++
	q.mu.Unlock()
	select {
	case q.wake <- struct{}{}:
	default:
	}
}

// Paused reports whether the queue is paused (by Pause or by a
// [ClassPause] send error).
func (q *Queue[T]) Paused() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.paused
}

// Len returns the number of queued items, the one being sent included. It
// is never more than the cap.
func (q *Queue[T]) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.buf.Len()
}

// Bytes returns the total size of the queued items as measured by the
// WithMaxBytes size function (0 without one).
func (q *Queue[T]) Bytes() int64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.bytes
}

// Flush waits until the queue is empty: every item pushed before the call
// (and since) has settled, and its report, if any, has returned. A paused
// queue does not empty until Resume.
//
// Errors: ctx.Err() if ctx ends first; [ErrClosed] if the queue was closed
// with items still queued.
func (q *Queue[T]) Flush(ctx context.Context) error {
	q.mu.Lock()
	for (q.buf.Len() > 0 || q.settling > 0) && !q.closed {
		if q.empty == nil {
			q.empty = make(chan struct{})
		}
		ch := q.empty
		q.mu.Unlock()
		select {
		case <-ch:
		case <-q.stop:
			select {
			case <-q.loopDone:
			case <-ctx.Done():
				return ctx.Err()
			}
		case <-ctx.Done():
			return ctx.Err()
		}
		q.mu.Lock()
	}
	defer q.mu.Unlock()
	if q.buf.Len() > 0 || q.abandoned {
		return ErrClosed
	}
	return nil
}

// Close stops the queue and waits for its delivery goroutine: Push fails
// with ErrClosed from now on, the context of a send that is running is
// canceled, and Close waits for that send to return (its result is kept: a
// nil error still delivers the item). A send function must therefore return
// promptly once its context is canceled. To deliver everything first, call
// [Queue.Flush] before Close.
//
// Items still queued are not sent and not returned: each is reported once
// with an error wrapping [ErrClosed] (and its last send error, if a send of
// it had failed), and then its ticket settles with that error. Close
// returns after those reports.
//
// Close always returns nil; calling it again waits for the delivery
// goroutine and returns nil.
func (q *Queue[T]) Close() error {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		<-q.loopDone
		return nil
	}
	q.closed = true
	close(q.stop)
	q.mu.Unlock()
	q.cancel()
	<-q.loopDone

	q.mu.Lock()
	left := make([]slot[T], q.buf.Len())
	for i := range left {
		left[i] = q.buf.PopFront()
	}
	q.bytes = 0
	q.abandoned = len(left) > 0
	q.settling += len(left)
	q.mu.Unlock()
	q.fail(left, ErrClosed)
	return nil
}
