package replayqueue

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/steadfast-go/steadfast/internal/ring"
)

var (
	// ErrClosed is returned (wrapped together with the failure cause) by
	// every method that needs a live queue after [Queue.Fail] or
	// [Queue.Close].
	ErrClosed = errors.New("replayqueue: closed")
	// ErrFull is returned by [Queue.Send] under [RejectNew] when the
	// item does not fit in the buffer; the caller keeps the item.
	ErrFull = errors.New("replayqueue: buffer full")
	// ErrTooLarge is returned by [Queue.Send] when the item alone is
	// larger than the byte bound and has to be buffered.
	ErrTooLarge = errors.New("replayqueue: item larger than the byte bound")
	// ErrEvicted is the reason [WithDropped] receives for items evicted by
	// [DropOldest].
	ErrEvicted = errors.New("replayqueue: evicted to make room")
	// ErrConnected is returned by [Queue.Connect] when the queue is
	// already connected.
	ErrConnected = errors.New("replayqueue: already connected")
	// ErrDisconnected is wrapped, with the disconnect cause, in the Err of
	// a [Reply] whose connection went away before its reply arrived.
	ErrDisconnected = errors.New("replayqueue: disconnected before the reply")
	// ErrReplayTimeout is the Err of a [Reply] whose reply did not arrive
	// within the replay timeout ([WithReplayTimeout]).
	ErrReplayTimeout = errors.New("replayqueue: replay reply timed out")
)

// A Reply is what a replay's reply callback receives, exactly once for each
// time its item was sent: either the upstream's reply (Err == nil; a
// JSON-RPC error response is a reply too) or the reason none will come.
type Reply[R any] struct {
	// Key is the replay key the item was registered under. The callback
	// runs even if the key was removed or replaced after the item was
	// sent, so the user can undo what the replayed item did upstream
	// (for example unsubscribe an orphaned subscription).
	Key string
	// ID is the reserved id the item was sent with.
	ID ReplayID
	// Value is the reply passed to [Queue.HandleReply]; the zero value
	// when Err != nil.
	Value R
	// Err is nil when a reply arrived. Otherwise it is [ErrReplayTimeout],
	// an error wrapping [ErrDisconnected] and the disconnect cause, or one
	// wrapping [ErrClosed] and the failure cause.
	Err error
}

// Stats is a snapshot of a Queue's counters.
type Stats struct {
	Buffered     int    // items in the buffer now
	Bytes        int    // bytes in the buffer now (0 without WithMaxBytes)
	Replays      int    // entries in the replay set
	Pending      int    // replayed items waiting for their reply
	Dropped      uint64 // items evicted by DropOldest so far
	StaleReplies uint64 // reserved-id replies consumed with no pending replay
	Generation   uint64 // see Queue.Generation
}

type replayEntry[T, R any] struct {
	key     string
	build   func(id ReplayID) T
	onReply func(Reply[R])
}

type pending[R any] struct {
	key     string
	onReply func(Reply[R])
	timer   *time.Timer
}

// Queue sits between producers and a connection that comes and goes.
//
// While connected, [Queue.Send] hands the item to the connection's send
// function at once, on the caller's goroutine, with no buffering. While
// disconnected, Send buffers the item, within the item and byte bounds and
// under the overflow policy. [Queue.Connect] sends, in this order and
// atomically with respect to producers, every item of the replay set (in
// registration order, each with a fresh reserved [ReplayID]), then the
// buffered items oldest first, and only then lets Send through: a new item
// never overtakes a buffered one, and an item sent by one goroutine never
// overtakes an earlier item sent by the same goroutine. One mutex covers
// the connection state and the buffer, so there is no window in which a
// producer can see "connected" and still land in a buffer nobody flushes.
// The observers (Len, Connected, Stats, Generation) and the replay set do
// not take that mutex, so they answer at once while a send is blocked on a
// slow connection.
//
// Replies to replayed items are consumed by [Queue.HandleReply], which
// never blocks on a send in progress.
//
// A Queue is safe for concurrent use. The zero value is an empty,
// disconnected queue with the default options ([DefaultMaxItems],
// [RejectNew], [DefaultReplayTimeout], no byte bound). A Queue must not
// be copied after first use.
type Queue[T, R any] struct {
	// mu, connected and send come first so the hot path (Send while
	// connected) touches a single cache line.
	//
	// mu is held across calls of the send function, so it is the send
	// lock too. Nothing an observer needs waits for it: Len, Connected and
	// Stats read the obs mirror, and the replay set has a lock of its own.
	mu        sync.Mutex // protects the fields below, down to setMu
	connected bool
	send      func(T) error // non-nil iff connected
	closed    bool
	closeErr  error // wraps ErrClosed and the cause; set iff closed
	buf       ring.Buffer[entry[T]]
	bytes     int
	room      chan struct{} // closed and cleared when room may have appeared
	seq       uint64
	nDropped  uint64

	// obs mirrors connected, buf.Len(), bytes and nDropped. It is written
	// under mu (publishLocked) and read lock-free by Len, Connected and
	// Stats, so they answer while a send is blocked on a slow connection.
	obs struct {
		connected atomic.Bool
		buffered  atomic.Int64
		bytes     atomic.Int64
		dropped   atomic.Uint64
	}

	// setMu protects replays and setErr. It is never held during a
	// send, so a reply callback run from inside one may change the replay
	// set. Lock order: mu before setMu.
	setMu   sync.Mutex
	replays []replayEntry[T, R] // registration order
	setErr  error               // closeErr, once closed

	// Immutable after New.
	maxItems int
	maxBytes int
	size     func(T) int
	overflow Overflow
	dropped  func(T, error)
	timeout  time.Duration

	gen atomic.Uint64 // written under mu; read lock-free by Generation

	// replyMu protects pend, nStale, expiring and expired. It is never held while user code
	// runs and never held while taking mu, so HandleReply (called by the
	// connection's reader) cannot wait behind a send that is blocked on a
	// full socket.
	replyMu  sync.Mutex
	pend     map[ReplayID]*pending[R]
	nStale   uint64
	expiring int           // timer callbacks running now
	expired  chan struct{} // made by Close; closed when expiring reaches 0
}

// New returns an empty, disconnected Queue for items of type T and replies
// of type R, configured by opts (nil options are skipped).
func New[T, R any](opts ...Option[T]) *Queue[T, R] {
	var c config[T]
	for _, o := range opts {
		if o != nil {
			o.apply(&c)
		}
	}
	return &Queue[T, R]{
		maxItems: c.maxItems,
		maxBytes: c.maxBytes,
		size:     c.size,
		overflow: c.overflow,
		dropped:  c.dropped,
		timeout:  c.replayTimeout,
	}
}

func (q *Queue[T, R]) limitItems() int {
	if q.maxItems == 0 {
		return DefaultMaxItems
	}
	return q.maxItems
}

func (q *Queue[T, R]) replayTimeout() time.Duration {
	if q.timeout == 0 {
		return DefaultReplayTimeout
	}
	return q.timeout
}

// Generation returns the connection generation. It starts at 0 and grows by
// one on every change of connection: Connect, Disconnect, a send failure
// that disconnects (also during Connect), and Fail of a connected queue. It
// is odd while the queue is connected (and while Connect is sending the
// replay set and the buffer), even otherwise, so a callback that captured
// the generation returned by [Queue.Connect] can recognise that its
// connection is gone. Lock-free.
func (q *Queue[T, R]) Generation() uint64 { return q.gen.Load() }

// Connected reports whether the queue currently has a connection. It
// never waits for a send in progress.
func (q *Queue[T, R]) Connected() bool { return q.obs.connected.Load() }

// Len returns the number of buffered items. It never waits for a send in
// progress; an item that Connect is flushing counts as buffered until its
// send call has returned.
func (q *Queue[T, R]) Len() int { return int(q.obs.buffered.Load()) }

// Stats returns the queue's counters. It never waits for a send in
// progress, so a metrics scrape cannot stall behind a slow connection. Each
// field is read atomically; while producers and a connection are active,
// fields may come from instants a few operations apart.
func (q *Queue[T, R]) Stats() Stats {
	s := Stats{
		Buffered:   int(q.obs.buffered.Load()),
		Bytes:      int(q.obs.bytes.Load()),
		Dropped:    q.obs.dropped.Load(),
		Generation: q.gen.Load(),
	}
	q.setMu.Lock()
	s.Replays = len(q.replays)
	q.setMu.Unlock()
	q.replyMu.Lock()
	s.Pending = len(q.pend)
	s.StaleReplies = q.nStale
	q.replyMu.Unlock()
	return s
}

// Send delivers item: while connected it calls the connection's send
// function on the caller's goroutine and returns; while disconnected it
// buffers the item for the next [Queue.Connect]. The context matters only
// under [Block], while Send waits for room.
//
// If the send function fails, the connection is treated as lost: the queue
// disconnects (the generation advances and pending replays are failed) and
// item is buffered as the first item for the next connection, so Send still
// returns nil. The send function is expected to notice the broken
// connection itself and start a reconnect.
//
// Errors: an error wrapping [ErrClosed] (and the failure cause) after Fail
// or Close; [ErrFull] under RejectNew when the buffer is full;
// [ErrTooLarge] when the item alone exceeds the byte bound; ctx.Err() when
// the context ends while Send blocks. On error the item was neither sent
// nor buffered, and the queue is unchanged (except that a failed send
// function has still disconnected it).
func (q *Queue[T, R]) Send(ctx context.Context, item T) error {
	q.mu.Lock()
	if q.connected {
		err := q.send(item)
		if err == nil {
			q.mu.Unlock()
			return nil
		}
		return q.sendFailed(ctx, item, err)
	}
	if !q.closed && q.size == nil && q.buf.Len() < q.limitItems() {
		// Fast path for buffering without a byte bound.
		q.buf.PushBack(entry[T]{item: item})
		q.obs.buffered.Store(int64(q.buf.Len()))
		q.mu.Unlock()
		return nil
	}
	return q.bufferSlow(ctx, item, nil)
}

// sendFailed handles a failed direct send; q.mu is held and is released.
func (q *Queue[T, R]) sendFailed(ctx context.Context, item T, err error) error {
	fails := q.disconnectLocked(err)
	return q.bufferSlow(ctx, item, fails)
}

// bufferSlow buffers item under the bounds and overflow policy. q.mu is held
// on entry and released on return; fails are reply callbacks to run after
// unlocking.
func (q *Queue[T, R]) bufferSlow(ctx context.Context, item T, fails []callback[R]) error {
	var evicted []T
	var err error
	n := 0
	if q.size != nil {
		n = max(q.size(item), 0)
	}
	for {
		if q.closed {
			err = q.closeErr
			break
		}
		if q.connected {
			// Connected while we were blocked waiting for room.
			if e := q.send(item); e == nil {
				break
			} else {
				fails = append(fails, q.disconnectLocked(e)...)
			}
		}
		if q.maxBytes > 0 && n > q.maxBytes {
			err = ErrTooLarge
			break
		}
		if q.fits(n) {
			q.buf.PushBack(entry[T]{item: item, size: n})
			q.bytes += n
			break
		}
		if q.overflow == RejectNew {
			err = ErrFull
			break
		}
		if q.overflow == DropOldest {
			evicted = q.evictLocked(n, evicted)
			continue
		}
		// Block: wait for room, then look again.
		if err = q.waitRoom(ctx, fails); err != nil {
			return err
		}
		fails = nil
	}
	q.publishLocked()
	q.mu.Unlock()
	q.runFails(fails)
	q.reportDropped(evicted, ErrEvicted)
	return err
}

// evictLocked drops the oldest items until an item of size n fits and
// appends them to evicted; q.mu is held.
func (q *Queue[T, R]) evictLocked(n int, evicted []T) []T {
	for !q.fits(n) {
		e := q.buf.PopFront()
		q.bytes -= e.size
		q.nDropped++
		evicted = append(evicted, e.item)
	}
	return evicted
}

// waitRoom releases q.mu, runs fails, and waits until room may have
// appeared or ctx ends. It returns with q.mu held and nil, or with q.mu
// released and ctx.Err().
func (q *Queue[T, R]) waitRoom(ctx context.Context, fails []callback[R]) error {
	if q.room == nil {
		q.room = make(chan struct{})
	}
	room := q.room
	q.publishLocked()
	q.mu.Unlock()
	q.runFails(fails)
	select {
	case <-room:
	case <-ctx.Done():
		return ctx.Err()
	}
	q.mu.Lock()
	return nil
}

// reportDropped hands items the queue dropped to the WithDropped callback
// or, when there is none, logs how many, so that no drop is ever silent.
func (q *Queue[T, R]) reportDropped(items []T, reason error) {
	if len(items) == 0 {
		return
	}
	if q.dropped == nil {
		slog.Warn("replayqueue: items dropped; register WithDropped to handle them",
			"dropped", len(items), "reason", reason)
		return
	}
	for _, it := range items {
		q.dropped(it, reason)
	}
}

// publishLocked copies the observable state to q.obs; q.mu is held. It is
// called after every change of that state and before every send call.
func (q *Queue[T, R]) publishLocked() {
	q.obs.connected.Store(q.connected)
	q.obs.buffered.Store(int64(q.buf.Len()))
	q.obs.bytes.Store(int64(q.bytes))
	q.obs.dropped.Store(q.nDropped)
}

// fits reports whether an item of size n fits in the buffer now.
func (q *Queue[T, R]) fits(n int) bool {
	if q.buf.Len() >= q.limitItems() {
		return false
	}
	// Subtract rather than add: q.bytes+n can overflow when the bound is
	// near math.MaxInt, and 0 <= n <= maxBytes and q.bytes <= maxBytes here.
	return q.maxBytes == 0 || n <= q.maxBytes-q.bytes
}

// wakeLocked wakes every Send blocked waiting for room.
func (q *Queue[T, R]) wakeLocked() {
	if q.room != nil {
		close(q.room)
		q.room = nil
	}
}

// Connect attaches a connection whose send function is send and returns
// its generation. Before returning, with producers held off, it sends every
// item of the replay set in registration order (each built with a fresh
// [ReplayID] and registered as pending before it is sent, so even an
// immediate reply is matched), then every buffered item oldest first.
// Only then does Send pass items straight to send.
//
// send is called with the queue's send lock held, one call at a time, by
// Connect and by Send. It must not call Send, Connect, Disconnect, Fail or
// Close (they wait for that lock); every other method answers without it,
// so send may call HandleReply (a transport that reads the reply inside its
// write call), and a reply callback run from there may call Len,
// Connected, Stats, Generation, AddReplay, RemoveReplay and ReplayKeys.
// Replay build functions run under the same rule.
//
// If send fails during the replay or the flush, the connection is treated
// as lost: items already flushed stay sent, the item that failed stays at
// the head of the buffer, replays sent so far are failed with
// [ErrDisconnected], the queue stays disconnected, and Connect returns an
// error wrapping send's error (and the generation it used).
//
// Errors: [ErrConnected] if the queue is already connected; an error
// wrapping [ErrClosed] after Fail or Close; the wrapped send error. It
// panics if send is nil.
func (q *Queue[T, R]) Connect(send func(T) error) (gen uint64, err error) {
	if send == nil {
		panic("replayqueue: Connect with a nil send function")
	}
	q.mu.Lock()
	if q.closed {
		err = q.closeErr
		q.mu.Unlock()
		return 0, err
	}
	if q.connected {
		q.mu.Unlock()
		return 0, ErrConnected
	}
	gen = q.gen.Add(1)
	err = q.replayLocked(gen, send)
	if err == nil {
		err = q.flushLocked(send)
	}
	if err != nil {
		q.gen.Add(1)
		fails := q.failPending(ErrDisconnected, errors.Unwrap(err))
		q.wakeLocked()
		q.publishLocked()
		q.mu.Unlock()
		q.runFails(fails)
		return gen, err
	}
	q.connected = true
	q.send = send
	q.wakeLocked()
	q.publishLocked()
	q.mu.Unlock()
	return gen, nil
}

// replayLocked sends the replay set for connection gen; q.mu is held. The
// set is copied first, so a reply callback run from inside send may change
// it (the change applies from the next connection on).
func (q *Queue[T, R]) replayLocked(gen uint64, send func(T) error) error {
	q.setMu.Lock()
	replays := slices.Clone(q.replays)
	q.setMu.Unlock()
	for _, r := range replays {
		q.seq++
		id := ReplayID{Gen: gen, Seq: q.seq}
		item := r.build(id)
		q.addPending(id, r.key, r.onReply)
		if e := send(item); e != nil {
			return fmt.Errorf("replayqueue: connect: replay %q: %w", r.key, e)
		}
	}
	return nil
}

// flushLocked sends the buffer oldest first; q.mu is held. An item leaves
// the buffer only once its send has succeeded.
func (q *Queue[T, R]) flushLocked(send func(T) error) error {
	for q.buf.Len() > 0 {
		if e := send(q.buf.At(0).item); e != nil {
			return fmt.Errorf("replayqueue: connect: flush: %w", e)
		}
		e := q.buf.PopFront()
		q.bytes -= e.size
		q.publishLocked()
	}
	return nil
}

// Disconnect detaches the connection of generation gen: from now on Send
// buffers. Replayed items still waiting for their reply are failed with an
// error wrapping [ErrDisconnected] and cause, and any reply to them that
// arrives later is consumed and dropped. Disconnect reports false, and
// does nothing, if gen is not the current connection (it already ended, or
// a newer one replaced it), so a stale reader goroutine cannot disconnect
// its successor.
func (q *Queue[T, R]) Disconnect(gen uint64, cause error) bool {
	q.mu.Lock()
	if !q.connected || q.gen.Load() != gen {
		q.mu.Unlock()
		return false
	}
	fails := q.disconnectLocked(cause)
	q.publishLocked()
	q.mu.Unlock()
	q.runFails(fails)
	return true
}

// disconnectLocked closes the gate; q.mu is held. It returns the reply
// callbacks to run once q.mu is released.
func (q *Queue[T, R]) disconnectLocked(cause error) []callback[R] {
	q.connected = false
	q.send = nil
	q.gen.Add(1)
	return q.failPending(ErrDisconnected, cause)
}

// Fail permanently fails the queue with cause (nil means [ErrClosed]) and
// hands back every buffered item, oldest first: nothing is dropped, and the
// items handed back are not also reported to [WithDropped]. Pending
// replays are failed with an error wrapping ErrClosed and cause, Sends
// blocked for room return that error, and every later Send, Connect and
// AddReplay returns it too. Only the first call of Fail or Close has an
// effect; later calls return nil.
func (q *Queue[T, R]) Fail(cause error) []T {
	items, _ := q.shut(cause)
	return items
}

// Close fails the queue with [ErrClosed], like Fail(nil), but reports each
// item still buffered to the [WithDropped] callback with reason ErrClosed
// instead of handing it back (so each item has one fate). It stops every
// replay timer and waits for reply callbacks already started by a timer,
// so a closed Queue holds no goroutines or timers; a reply callback must
// therefore not call Close. Close always returns nil; calling it again, or
// after Fail, does nothing.
func (q *Queue[T, R]) Close() error {
	if items, first := q.shut(nil); first {
		q.reportDropped(items, ErrClosed)
	}
	q.replyMu.Lock()
	for q.expiring > 0 {
		if q.expired == nil {
			q.expired = make(chan struct{})
		}
		ch := q.expired
		q.replyMu.Unlock()
		<-ch
		q.replyMu.Lock()
	}
	q.replyMu.Unlock()
	return nil
}

// shut is Fail: it closes the queue and returns the buffered items, and
// false if the queue was already closed.
func (q *Queue[T, R]) shut(cause error) ([]T, bool) {
	closeErr := ErrClosed
	if cause != nil && !errors.Is(cause, ErrClosed) {
		closeErr = fmt.Errorf("%w: %w", ErrClosed, cause)
	} else if cause != nil {
		closeErr = cause
	}
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil, false
	}
	q.closed = true
	q.closeErr = closeErr
	if q.connected {
		q.connected = false
		q.send = nil
		q.gen.Add(1)
	}
	var items []T
	if n := q.buf.Len(); n > 0 {
		items = make([]T, 0, n)
		for q.buf.Len() > 0 {
			items = append(items, q.buf.PopFront().item)
		}
	}
	q.bytes = 0
	q.buf = ring.Buffer[entry[T]]{}
	q.setMu.Lock()
	q.replays = nil
	q.setErr = closeErr
	q.setMu.Unlock()
	fails := q.failPending(closeErr, nil)
	q.wakeLocked()
	q.publishLocked()
	q.mu.Unlock()
	q.runFails(fails)
	return items, true
}

// AddReplay registers an entry of the replay set under key, to be sent on
// every later [Queue.Connect], after the entries registered before it.
// Registering an existing key replaces that entry and moves it to the end.
// AddReplay does not send anything now: the user sends the original item
// through Send as usual and registers it so it survives reconnects.
//
// build returns the item to send for one transmission, carrying id (for
// JSON-RPC: id.String() as the request id); it runs under the queue's mutex
// (see Connect). onReply, which may be nil, receives exactly one [Reply]
// per transmission: the reply passed to HandleReply, or the reason none
// will come. It runs with no queue lock held, and may call every method of
// the Queue, except when HandleReply is called from inside a send function:
// then the send rule of Connect applies to it too.
//
// Errors: an error wrapping [ErrClosed] after Fail or Close. It panics if
// build is nil.
func (q *Queue[T, R]) AddReplay(key string, build func(id ReplayID) T, onReply func(Reply[R])) error {
	if build == nil {
		panic("replayqueue: AddReplay with a nil build function")
	}
	q.setMu.Lock()
	defer q.setMu.Unlock()
	if q.setErr != nil {
		return q.setErr
	}
	q.removeReplayLocked(key)
	q.replays = append(q.replays, replayEntry[T, R]{key: key, build: build, onReply: onReply})
	return nil
}

// RemoveReplay removes key from the replay set and reports whether it was
// there. A transmission of it that is still pending keeps its reply
// callback: the reply (or its failure) is still delivered.
func (q *Queue[T, R]) RemoveReplay(key string) bool {
	q.setMu.Lock()
	defer q.setMu.Unlock()
	return q.removeReplayLocked(key)
}

// removeReplayLocked removes key from the replay set; q.setMu is held.
func (q *Queue[T, R]) removeReplayLocked(key string) bool {
	i := slices.IndexFunc(q.replays, func(r replayEntry[T, R]) bool { return r.key == key })
	if i < 0 {
		return false
	}
	// slices.Delete zeroes the vacated slot, so the removed entry's
	// closures are not kept alive.
	q.replays = slices.Delete(q.replays, i, i+1)
	return true
}

// ReplayKeys returns the keys of the replay set in registration order.
func (q *Queue[T, R]) ReplayKeys() []string {
	q.setMu.Lock()
	defer q.setMu.Unlock()
	keys := make([]string, len(q.replays))
	for i, r := range q.replays {
		keys[i] = r.key
	}
	return keys
}

// HandleReply routes one reply from the connection, identified by the
// string form of its id, and reports whether the queue consumed it. Every
// id in the reserved namespace ([IsReserved]) is consumed: a reply to a
// pending replay goes to that replay's callback, synchronously, before
// HandleReply returns (so a proxy learns a new upstream subscription id
// before it reads the next frame); a reply to a replay that timed out or
// belongs to an older connection generation is dropped and counted in
// Stats.StaleReplies. Replies with any other id return false and belong to
// the caller (forward them to the client).
//
// HandleReply does not wait for a send in progress, so it is safe to call
// from the connection's reader even while a writer is blocked.
func (q *Queue[T, R]) HandleReply(id string, reply R) (consumed bool) {
	if !IsReserved(id) {
		return false
	}
	rid, ok := ParseReplayID(id)
	q.replyMu.Lock()
	var p *pending[R]
	if ok {
		p = q.pend[rid]
	}
	if p == nil {
		q.nStale++
		q.replyMu.Unlock()
		return true
	}
	delete(q.pend, rid)
	p.timer.Stop()
	q.replyMu.Unlock()
	if p.onReply != nil {
		p.onReply(Reply[R]{Key: p.key, ID: rid, Value: reply})
	}
	return true
}

// addPending registers a transmission before it is sent; q.mu is held.
func (q *Queue[T, R]) addPending(id ReplayID, key string, onReply func(Reply[R])) {
	p := &pending[R]{key: key, onReply: onReply}
	q.replyMu.Lock()
	if q.pend == nil {
		q.pend = make(map[ReplayID]*pending[R])
	}
	q.pend[id] = p
	p.timer = time.AfterFunc(q.replayTimeout(), func() { q.expire(id, p) })
	q.replyMu.Unlock()
}

func (q *Queue[T, R]) expire(id ReplayID, p *pending[R]) {
	q.replyMu.Lock()
	if q.pend[id] != p {
		q.replyMu.Unlock()
		return
	}
	delete(q.pend, id)
	q.expiring++
	q.replyMu.Unlock()
	if p.onReply != nil {
		p.onReply(Reply[R]{Key: p.key, ID: id, Err: ErrReplayTimeout})
	}
	q.replyMu.Lock()
	if q.expiring--; q.expiring == 0 && q.expired != nil {
		close(q.expired)
		q.expired = nil
	}
	q.replyMu.Unlock()
}

// failPending removes every pending transmission (they all belong to the
// connection that is going away) and returns their failure callbacks, in
// send order, to run after the locks are released. Their error wraps kind
// and, if not nil, cause; it is built only when something is pending, so a
// reconnect without replays allocates nothing.
func (q *Queue[T, R]) failPending(kind, cause error) []callback[R] {
	q.replyMu.Lock()
	defer q.replyMu.Unlock()
	if len(q.pend) == 0 {
		return nil
	}
	err := kind
	if cause != nil {
		err = fmt.Errorf("%w: %w", kind, cause)
	}
	fails := make([]callback[R], 0, len(q.pend))
	for id, p := range q.pend {
		p.timer.Stop()
		delete(q.pend, id)
		if p.onReply != nil {
			fails = append(fails, callback[R]{fn: p.onReply, r: Reply[R]{Key: p.key, ID: id, Err: err}})
		}
	}
	slices.SortFunc(fails, func(a, b callback[R]) int { return cmp.Compare(a.r.ID.Seq, b.r.ID.Seq) })
	return fails
}

// callback is a reply callback waiting to run outside the locks.
type callback[T any] struct {
	fn func(Reply[T])
	r  Reply[T]
}

func (q *Queue[T, R]) runFails(fails []callback[R]) {
	for _, c := range fails {
		c.fn(c.r)
	}
}
