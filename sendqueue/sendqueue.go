package sendqueue

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
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
	// ErrClosed: the queue is closed. Items still queued at Close fail
	// with it.
	ErrClosed = errors.New("sendqueue: queue closed")
	// ErrEvicted: the item was removed to make room for a newer one
	// (EvictOldest).
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
	// generates one that is unique for the process's lifetime (a random
	// per-queue prefix and a counter, 33 bytes; generated keys are cut
	// from a shared 1 KiB block, so holding one keeps its block alive).
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
	// and, when a send failed, that send's error.
	Err      error
	Attempts int // how many times the item was sent
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
	keyPrefix   string
	sendCtx     context.Context // passed to send; canceled by Close
	cancel      context.CancelFunc
	wake        chan struct{} // cap 1: work arrived, or Resume
	stop        chan struct{} // closed by Close
	loopDone    chan struct{} // closed when the delivery goroutine exits

	mu        sync.Mutex // protects the fields below and every queued Ticket
	buf       []slot[T]  // ring buffer; grows up to capacity
	head, n   int        // first element, element count
	bytes     int64      // total size of queued items
	sending   bool       // a send of the head item is running
	paused    bool
	closed    bool
	abandoned bool          // Close found items still queued
	idle      bool          // the loop waits for work and needs a wake
	resumeGen uint64        // counts Resume calls
	empty     chan struct{} // made by Flush; closed when n reaches 0
	keyBlock  string        // keysPerBlock generated keys, back to back
	keyIdx    int           // next unused key in keyBlock
	keyCtr    uint64        // counter part of the next generated block
}

// slot is one queued item, held by value in the ring buffer so that a Push
// allocates only the Ticket the caller keeps.
type slot[T any] struct {
	item     Item[T]
	size     int
	attempts int // written only by the delivery goroutine (and Close after it)
	ticket   *Ticket
}

// New returns a Queue that delivers items with send and starts its delivery
// goroutine; call [Queue.Close] to stop it.
//
// send is called from that one goroutine, never concurrently with itself,
// with the head item and a context that Close cancels if its own context
// ends first. A nil error means delivered. Otherwise the error is classified
// (see [DefaultClassifier]): Retry items stay at the head and are tried
// again after the back-off, or when Resume is called; Pause-class errors also
// pause the queue. A panic in send does not crash the program: the attempt
// fails, and the item is dropped and reported with [ErrDropped] and an error
// carrying the panic value (sending it again would most likely panic again).
// send may call Push, Len, Pause or Resume, but not Close or Flush: they
// wait for the delivery goroutine, which is the one running send.
//
// New panics if send is nil or an option's type parameter does not match T.
func New[T any](send func(ctx context.Context, it Item[T]) error, opts ...Option) *Queue[T] {
	if send == nil {
		panic("sendqueue: New needs a send function")
	}
	c := config{capacity: DefaultCapacity}
	for _, o := range opts {
		o.apply(&c)
	}
	q := &Queue[T]{
		send:        send,
		classify:    c.classify,
		bo:          c.backoff,
		maxAttempts: c.maxAttempts,
		capacity:    c.capacity,
		maxBytes:    c.maxBytes,
		overflow:    c.overflow,
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
	if c.size != nil {
		size, ok := c.size.(func(T) int)
		if !ok {
			panic(fmt.Sprintf("sendqueue: WithMaxBytes size function is %T, want func(%T) int", c.size, *new(T)))
		}
		q.size = size
	}
	if c.report != nil {
		report, ok := c.report.(func(Report[T]))
		if !ok {
			panic(fmt.Sprintf("sendqueue: WithReport function is %T, want func(sendqueue.Report[%T])", c.report, *new(T)))
		}
		q.report = report
	} else {
		q.report = logReport[T]
	}
	var p [8]byte
	_, _ = rand.Read(p[:]) // crypto/rand.Read never fails
	q.keyPrefix = hex.EncodeToString(p[:])
	q.buf = make([]slot[T], min(q.capacity, 16))
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
// returns ErrFull; EvictOldest evicts the oldest Retry items not being sent
// (each is reported with ErrEvicted) or, if that cannot make room, returns
// ErrFull without evicting anything.
//
// Errors: [ErrFull], [ErrTooLarge], [ErrInvalid], [ErrClosed]. On error the
// queue is unchanged and the item was not queued.
func (q *Queue[T]) Push(it Item[T]) (*Ticket, error) {
	if it.Policy > FireAndForget {
		return nil, fmt.Errorf("%w: unknown policy %d", ErrInvalid, it.Policy)
	}
	size := 0
	if q.size != nil {
		size = q.size(it.Value)
		if size < 0 {
			return nil, fmt.Errorf("%w: negative size %d", ErrInvalid, size)
		}
		if int64(size) > q.maxBytes {
			return nil, ErrTooLarge
		}
	}
	t := new(Ticket)
	var evicted []slot[T]
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil, ErrClosed
	}
	if q.n >= q.capacity || (q.maxBytes > 0 && q.bytes+int64(size) > q.maxBytes) {
		if q.overflow == RejectNew {
			q.mu.Unlock()
			return nil, ErrFull
		}
		evicted = q.evictFor(size)
		if evicted == nil {
			q.mu.Unlock()
			return nil, ErrFull
		}
	}
	if it.Key == "" {
		it.Key = q.nextKey()
	}
	t.key = it.Key
	q.pushBack(slot[T]{item: it, size: size, ticket: t})
	if q.idle {
		q.idle = false
		select {
		case q.wake <- struct{}{}:
		default:
		}
	}
	q.mu.Unlock()
	for _, v := range evicted {
		q.report(Report[T]{Item: v.item, Err: ErrEvicted, Attempts: v.attempts})
	}
	return t, nil
}

// evictFor removes the oldest evictable items so that one more item of the
// given size fits, settles their tickets and returns them. It returns nil
// and changes nothing if that is impossible. The caller holds q.mu.
func (q *Queue[T]) evictFor(size int) []slot[T] {
	needN := q.n + 1 - q.capacity
	needB := int64(0)
	if q.maxBytes > 0 {
		needB = q.bytes + int64(size) - q.maxBytes
	}
	var victims []int // indexes, in queue order
	for i := 0; i < q.n && (needN > 0 || needB > 0); i++ {
		s := q.at(i)
		if (i == 0 && q.sending) || s.item.Policy != Retry {
			continue
		}
		victims = append(victims, i)
		needN--
		needB -= int64(s.size)
	}
	if needN > 0 || needB > 0 {
		return nil
	}
	evicted := make([]slot[T], 0, len(victims))
	j := 0
	for i := range q.n {
		s := q.at(i)
		if len(evicted) < len(victims) && i == victims[len(evicted)] {
			evicted = append(evicted, *s)
			q.bytes -= int64(s.size)
			s.ticket.settle(Failed, ErrEvicted)
			continue
		}
		*q.at(j) = *s
		j++
	}
	for i := j; i < q.n; i++ {
		*q.at(i) = slot[T]{}
	}
	q.n = j
	return evicted
}

const (
	keysPerBlock = 32
	keyLen       = 16 + 1 + 16 // hex prefix, '-', hex counter
)

// nextKey returns a fresh key. Keys are cut from a block of keysPerBlock
// keys built at once, so a key costs 1/keysPerBlock of an allocation. The
// caller holds q.mu.
func (q *Queue[T]) nextKey() string {
	if q.keyIdx == 0 {
		const digits = "0123456789abcdef"
		// keyCtr is a multiple of keysPerBlock (32), so within a block
		// only the last two hex digits change, without carry.
		var tmpl [keyLen]byte
		copy(tmpl[:], q.keyPrefix)
		tmpl[16] = '-'
		c := q.keyCtr
		for i := keyLen - 1; i > 16; i-- {
			tmpl[i] = digits[c&15]
			c >>= 4
		}
		low := byte(q.keyCtr)
		// A Builder hands over its buffer without the copy that
		// string([]byte) makes.
		var sb strings.Builder
		sb.Grow(keysPerBlock * keyLen)
		for i := range keysPerBlock {
			n := low | byte(i)
			tmpl[keyLen-2], tmpl[keyLen-1] = digits[n>>4], digits[n&15]
			sb.Write(tmpl[:])
		}
		q.keyCtr += keysPerBlock
		q.keyBlock = sb.String()
	}
	k := q.keyBlock[q.keyIdx*keyLen : (q.keyIdx+1)*keyLen]
	q.keyIdx = (q.keyIdx + 1) % keysPerBlock
	return k
}

// Ring buffer helpers; the caller holds q.mu.

// at returns the i-th queued slot (0 is the head).
func (q *Queue[T]) at(i int) *slot[T] {
	i += q.head
	if i >= len(q.buf) {
		i -= len(q.buf)
	}
	return &q.buf[i]
}

func (q *Queue[T]) pushBack(s slot[T]) {
	if q.n == len(q.buf) {
		nb := make([]slot[T], min(2*len(q.buf), q.capacity))
		for i := range q.n {
			nb[i] = *q.at(i)
		}
		q.buf, q.head = nb, 0
	}
	*q.at(q.n) = s
	q.n++
	q.bytes += int64(s.size)
}

func (q *Queue[T]) popHead() {
	q.bytes -= int64(q.buf[q.head].size)
	q.buf[q.head] = slot[T]{} // let the item be collected
	q.head++
	if q.head == len(q.buf) {
		q.head = 0
	}
	q.n--
	if q.n == 0 && q.empty != nil {
		close(q.empty)
		q.empty = nil
	}
}

// run is the delivery goroutine: peek at the head, send it, then commit.
func (q *Queue[T]) run() {
	defer close(q.loopDone)
	var (
		boEntry *Ticket // the item the back-off state belongs to
		boGen   uint64  // resumeGen when the back-off was last reset
	)
	q.mu.Lock()
	for {
		for !q.closed && (q.paused || q.n == 0) {
			q.idle = true
			q.mu.Unlock()
			select {
			case <-q.wake:
			case <-q.stop:
			}
			q.mu.Lock()
			q.idle = false
		}
		if q.closed {
			q.mu.Unlock()
			return
		}
		// The head cannot change while sending is set: Push does not
		// evict it and Close waits for this goroutine before emptying.
		head := &q.buf[q.head]
		item, ticket, attempts := head.item, head.ticket, head.attempts+1
		// Read the ticket now: its cache line then arrives during the
		// send instead of stalling the atomic store in settle.
		_ = ticket.Status()
		q.sending = true
		gen := q.resumeGen
		q.mu.Unlock()

		err, panicked := q.trySend(item)
		var (
			class  Class
			reason error
			wait   time.Duration
		)
		if err != nil {
			if panicked {
				class = ClassDrop // sending it again would panic again
			} else {
				class, err = q.tryClassify(err)
			}
			switch {
			case class == ClassDrop:
				reason = fmt.Errorf("%w: %w", ErrDropped, err)
			case item.Policy == FireAndForget:
				reason = fmt.Errorf("%w: fire-and-forget send failed: %w", ErrGaveUp, err)
			case q.maxAttempts > 0 && attempts >= q.maxAttempts:
				reason = fmt.Errorf("%w after %d attempts: %w", ErrGaveUp, attempts, err)
			case class == ClassRetry:
				if boEntry != ticket || boGen != gen {
					q.bo.Reset()
					boEntry, boGen = ticket, gen
				}
				if wait = q.bo.NextBackOff(); wait == Stop {
					reason = fmt.Errorf("%w: back-off stopped after %d attempts: %w", ErrGaveUp, attempts, err)
				}
			}
		}
		if (err == nil || reason != nil) && boEntry != nil {
			q.bo.Reset()
			boEntry = nil
		}

		q.mu.Lock()
		q.sending = false
		q.buf[q.head].attempts = attempts
		// A Resume that raced with this attempt means the connection is
		// back already: try again instead of waiting for another Resume.
		if err != nil && class == ClassPause && q.resumeGen == gen {
			q.paused = true
		}
		switch {
		case err == nil:
			q.popHead()
			ticket.settle(Delivered, nil)
			continue
		case reason != nil:
			q.popHead()
			ticket.settle(Failed, reason)
			q.mu.Unlock()
			q.report(Report[T]{Item: item, Err: reason, Attempts: attempts})
			q.mu.Lock()
			continue
		case class == ClassPause:
			continue // wait for Resume (or retry now if it came already)
		}
		// Retry after the back-off. Push does not wake us (idle is false);
		// Resume and Close do.
		select {
		case <-q.wake: // stale token from before this attempt
		default:
		}
		if q.resumeGen != gen {
			continue
		}
		q.mu.Unlock()
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-q.wake:
		case <-q.stop:
		}
		t.Stop()
		q.mu.Lock()
	}
}

// trySend calls the send function, turning a panic into an error so that a
// bug in send fails one item (reported, with [ErrDropped]) instead of
// crashing the program from the delivery goroutine.
func (q *Queue[T]) trySend(it Item[T]) (err error, panicked bool) {
	defer func() {
		if r := recover(); r != nil {
			err, panicked = fmt.Errorf("sendqueue: send panicked: %v", r), true
		}
	}()
	return q.send(q.sendCtx, it), false
}

// tryClassify calls the classifier. A panic, like a Class that is not one of
// the three, must not stop the loop or make it retry without a back-off: a
// panic drops the item (the error says why), an unknown Class is ClassRetry.
// It returns err, extended with the panic if there was one.
func (q *Queue[T]) tryClassify(sendErr error) (c Class, err error) {
	defer func() {
		if r := recover(); r != nil {
			c, err = ClassDrop, fmt.Errorf("%w (the classifier panicked: %v)", sendErr, r)
		}
	}()
	if c = q.classify(sendErr); c > ClassPause {
		c = ClassRetry
	}
	return c, sendErr
}

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
	return q.n
}

// Bytes returns the total size of the queued items as measured by the
// WithMaxBytes size function (0 without one).
func (q *Queue[T]) Bytes() int64 {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.bytes
}

// Flush waits until the queue is empty: every item pushed before the call
// (and since) has settled. A paused queue does not empty until Resume.
//
// Errors: ctx.Err() if ctx ends first; [ErrClosed] if the queue was closed
// with items still queued.
func (q *Queue[T]) Flush(ctx context.Context) error {
	q.mu.Lock()
	for q.n > 0 && !q.closed {
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
	if q.n > 0 || q.abandoned {
		return ErrClosed
	}
	return nil
}

// Close stops the queue: Push fails with ErrClosed from now on, a send that
// is running finishes (and its result is kept), and the delivery goroutine
// exits; Close waits for it. If ctx ends before the running send returns,
// the send's context is canceled and Close still waits for it, so that no
// goroutine outlives Close: a send function must return promptly once its
// context is canceled, or Close waits as long as it runs.
//
// Items still queued are not sent: Close returns them in order, settles
// their tickets with [ErrClosed] and reports them with ErrClosed. To deliver
// everything first, call [Queue.Flush] before Close.
//
// Errors: ctx.Err() if ctx ended before the delivery goroutine exited (the
// items are still returned); [ErrClosed] (and no items) if the queue was already
// closed.
func (q *Queue[T]) Close(ctx context.Context) ([]Item[T], error) {
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil, ErrClosed
	}
	q.closed = true
	close(q.stop)
	q.mu.Unlock()

	var err error
	select {
	case <-q.loopDone:
	case <-ctx.Done():
		q.cancel()
		<-q.loopDone
		err = ctx.Err()
	}
	q.cancel()

	q.mu.Lock()
	left := make([]slot[T], q.n)
	for i := range q.n {
		s := q.at(i)
		left[i] = *s
		*s = slot[T]{}
	}
	q.n, q.bytes = 0, 0
	q.abandoned = len(left) > 0
	items := make([]Item[T], len(left))
	for i, s := range left {
		s.ticket.settle(Failed, ErrClosed)
		items[i] = s.item
	}
	if q.empty != nil {
		close(q.empty)
		q.empty = nil
	}
	q.mu.Unlock()
	for _, s := range left {
		q.report(Report[T]{Item: s.item, Err: ErrClosed, Attempts: s.attempts})
	}
	if len(items) == 0 {
		items = nil
	}
	return items, err
}
