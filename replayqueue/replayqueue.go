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
)

var (
	// ErrClosed is returned (wrapped together with the failure cause) by
	// every method that needs a live queue after [Queue.Fail] or
	// [Queue.Close].
	ErrClosed = errors.New("replayqueue: closed")
	// ErrFull is returned by [Queue.Send] under [OverflowError] when the
	// item does not fit in the buffer; the caller keeps the item.
	ErrFull = errors.New("replayqueue: buffer full")
	// ErrTooLarge is returned by [Queue.Send] when the item alone is
	// larger than the byte bound and has to be buffered.
	ErrTooLarge = errors.New("replayqueue: item larger than the byte bound")
	// ErrEvicted is the reason [WithDropped] receives for items evicted by
	// [OverflowDropOldest].
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
type Reply[T any] struct {
	// Key is the replay key the item was registered under. The callback
	// runs even if the key was removed or replaced after the item was
	// sent, so the user can undo what the replayed item did upstream
	// (for example unsubscribe an orphaned subscription).
	Key string
	// ID is the reserved id the item was sent with.
	ID ReplayID
	// Value is the reply passed to [Queue.HandleReply]; the zero value
	// when Err != nil.
	Value T
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
	Dropped      uint64 // items evicted by OverflowDropOldest so far
	StaleReplies uint64 // reserved-id replies consumed with no pending replay
	Generation   uint64 // see Queue.Generation
}

type replayEntry[T any] struct {
	key     string
	build   func(id ReplayID) T
	onReply func(Reply[T])
}

type pending[T any] struct {
	key     string
	onReply func(Reply[T])
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
//
// Replies to replayed items are consumed by [Queue.HandleReply], which
// never blocks on a send in progress.
//
// A Queue is safe for concurrent use. The zero value is an empty,
// disconnected queue with the default options ([DefaultMaxItems],
// [OverflowError], [DefaultReplayTimeout], no byte bound). A Queue must not
// be copied after first use.
type Queue[T any] struct {
	// mu, connected and send come first so the hot path (Send while
	// connected) touches a single cache line.
	mu        sync.Mutex // protects the fields below, down to replyMu
	connected bool
	send      func(T) error // non-nil iff connected
	closed    bool
	closeErr  error // wraps ErrClosed and the cause; set iff closed
	buf       ring[T]
	bytes     int
	replays   []replayEntry[T] // registration order
	room      chan struct{}    // closed and cleared when room may have appeared
	seq       uint64
	nDropped  uint64

	// Immutable after New.
	maxItems int
	maxBytes int
	size     func(T) int
	overflow Overflow
	dropped  func(T, error)
	timeout  time.Duration

	gen atomic.Uint64 // written under mu; read lock-free by Generation

	// replyMu protects pend and nStale. It is never held while user code
	// runs and never held while taking mu, so HandleReply (called by the
	// connection's reader) cannot wait behind a send that is blocked on a
	// full socket.
	replyMu sync.Mutex
	pend    map[ReplayID]*pending[T]
	nStale  uint64
}

// New returns an empty, disconnected Queue configured by opts (nil options
// are ignored). It panics if a [WithMaxBytes] size function or a
// [WithDropped] callback is not for element type T.
func New[T any](opts ...Option) *Queue[T] {
	var c config
	for _, o := range opts {
		if o != nil {
			o.apply(&c)
		}
	}
	q := &Queue[T]{
		maxItems: c.maxItems,
		maxBytes: c.maxBytes,
		overflow: c.overflow,
		timeout:  c.replayTimeout,
	}
	if c.size != nil {
		f, ok := c.size.(func(T) int)
		if !ok {
			panic(fmt.Sprintf("replayqueue: WithMaxBytes size function is %T, want func(%T) int", c.size, *new(T)))
		}
		q.size = f
	}
	if c.dropped != nil {
		f, ok := c.dropped.(func(T, error))
		if !ok {
			panic(fmt.Sprintf("replayqueue: WithDropped callback is %T, want func(%T, error)", c.dropped, *new(T)))
		}
		q.dropped = f
	}
	return q
}

func (q *Queue[T]) limitItems() int {
	if q.maxItems == 0 {
		return DefaultMaxItems
	}
	return q.maxItems
}

func (q *Queue[T]) replayTimeout() time.Duration {
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
func (q *Queue[T]) Generation() uint64 { return q.gen.Load() }

// Connected reports whether the queue currently has a connection.
func (q *Queue[T]) Connected() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.connected
}

// Len returns the number of buffered items.
func (q *Queue[T]) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.buf.len()
}

// Stats returns a snapshot of the queue's counters.
func (q *Queue[T]) Stats() Stats {
	q.mu.Lock()
	s := Stats{
		Buffered:   q.buf.len(),
		Bytes:      q.bytes,
		Replays:    len(q.replays),
		Dropped:    q.nDropped,
		Generation: q.gen.Load(),
	}
	q.mu.Unlock()
	q.replyMu.Lock()
	s.Pending = len(q.pend)
	s.StaleReplies = q.nStale
	q.replyMu.Unlock()
	return s
}

// Send delivers item: while connected it calls the connection's send
// function on the caller's goroutine and returns; while disconnected it
// buffers the item for the next [Queue.Connect]. The context matters only
// under [OverflowBlock], while Send waits for room.
//
// If the send function fails, the connection is treated as lost: the queue
// disconnects (the generation advances and pending replays are failed) and
// item is buffered as the first item for the next connection, so Send still
// returns nil. The send function is expected to notice the broken
// connection itself and start a reconnect.
//
// Errors: an error wrapping [ErrClosed] (and the failure cause) after Fail
// or Close; [ErrFull] under OverflowError when the buffer is full;
// [ErrTooLarge] when the item alone exceeds the byte bound; ctx.Err() when
// the context ends while Send blocks. On error the item was neither sent
// nor buffered, and the queue is unchanged (except that a failed send
// function has still disconnected it).
func (q *Queue[T]) Send(ctx context.Context, item T) error {
	q.mu.Lock()
	if q.connected {
		err := q.send(item)
		if err == nil {
			q.mu.Unlock()
			return nil
		}
		return q.sendFailed(ctx, item, err)
	}
	if !q.closed && q.size == nil && q.buf.len() < q.limitItems() {
		// Fast path for buffering without a byte bound.
		q.buf.push(entry[T]{item: item})
		q.mu.Unlock()
		return nil
	}
	return q.bufferSlow(ctx, item, nil)
}

// sendFailed handles a failed direct send; q.mu is held and is released.
func (q *Queue[T]) sendFailed(ctx context.Context, item T, err error) error {
	fails := q.disconnectLocked(err)
	return q.bufferSlow(ctx, item, fails)
}

// bufferSlow buffers item under the bounds and overflow policy. q.mu is held
// on entry and released on return; fails are reply callbacks to run after
// unlocking.
func (q *Queue[T]) bufferSlow(ctx context.Context, item T, fails []callback[T]) error {
	// Usually one item is evicted per Send; keep it out of the heap.
	var first T
	var evicted []T
	nEvicted := 0
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
			q.buf.push(entry[T]{item: item, size: n})
			q.bytes += n
			break
		}
		if q.overflow == OverflowError {
			err = ErrFull
			break
		}
		if q.overflow == OverflowDropOldest {
			for !q.fits(n) {
				e := q.buf.pop()
				q.bytes -= e.size
				q.nDropped++
				if nEvicted == 0 {
					first = e.item
				} else {
					evicted = append(evicted, e.item)
				}
				nEvicted++
			}
			continue
		}
		// OverflowBlock.
		if q.room == nil {
			q.room = make(chan struct{})
		}
		room := q.room
		q.mu.Unlock()
		q.runFails(fails)
		fails = nil
		select {
		case <-room:
		case <-ctx.Done():
			return ctx.Err()
		}
		q.mu.Lock()
	}
	q.mu.Unlock()
	q.runFails(fails)
	if nEvicted > 0 {
		q.reportEvicted(first, evicted, nEvicted)
	}
	return err
}

// reportEvicted hands evicted items to the WithDropped callback or, when
// there is none, logs them, so that no eviction is ever silent.
func (q *Queue[T]) reportEvicted(first T, rest []T, n int) {
	if q.dropped == nil {
		slog.Warn("replayqueue: buffered items evicted (OverflowDropOldest); register WithDropped to handle them",
			"evicted", n, "reason", ErrEvicted)
		return
	}
	q.dropped(first, ErrEvicted)
	for _, it := range rest {
		q.dropped(it, ErrEvicted)
	}
}

// fits reports whether an item of size n fits in the buffer now.
func (q *Queue[T]) fits(n int) bool {
	if q.buf.len() >= q.limitItems() {
		return false
	}
	// Subtract rather than add: q.bytes+n can overflow when the bound is
	// near math.MaxInt, and 0 <= n <= maxBytes and q.bytes <= maxBytes here.
	return q.maxBytes == 0 || n <= q.maxBytes-q.bytes
}

// wakeLocked wakes every Send blocked waiting for room.
func (q *Queue[T]) wakeLocked() {
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
// send is called with the queue's mutex held, one call at a time, by
// Connect and by Send; it must not call the Queue's methods (HandleReply is
// the exception: it does not take that mutex). Replay build functions run
// under the same rule.
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
func (q *Queue[T]) Connect(send func(T) error) (gen uint64, err error) {
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
	for i := range q.replays {
		r := &q.replays[i]
		q.seq++
		id := ReplayID{Gen: gen, Seq: q.seq}
		item := r.build(id)
		q.addPending(id, r.key, r.onReply)
		if e := send(item); e != nil {
			q.gen.Add(1)
			fails := q.failPending(ErrDisconnected, e)
			q.mu.Unlock()
			q.runFails(fails)
			return gen, fmt.Errorf("replayqueue: connect: replay %q: %w", r.key, e)
		}
	}
	flushed := q.buf.len() > 0
	for q.buf.len() > 0 {
		if e := send(q.buf.peek().item); e != nil {
			q.gen.Add(1)
			fails := q.failPending(ErrDisconnected, e)
			q.wakeLocked()
			q.mu.Unlock()
			q.runFails(fails)
			return gen, fmt.Errorf("replayqueue: connect: flush: %w", e)
		}
		e := q.buf.pop()
		q.bytes -= e.size
	}
	q.connected = true
	q.send = send
	if flushed {
		q.wakeLocked()
	}
	q.mu.Unlock()
	return gen, nil
}

// Disconnect detaches the connection of generation gen: from now on Send
// buffers. Replayed items still waiting for their reply are failed with an
// error wrapping [ErrDisconnected] and cause, and any reply to them that
// arrives later is consumed and dropped. Disconnect reports false, and
// does nothing, if gen is not the current connection (it already ended, or
// a newer one replaced it), so a stale reader goroutine cannot disconnect
// its successor.
func (q *Queue[T]) Disconnect(gen uint64, cause error) bool {
	q.mu.Lock()
	if !q.connected || q.gen.Load() != gen {
		q.mu.Unlock()
		return false
	}
	fails := q.disconnectLocked(cause)
	q.mu.Unlock()
	q.runFails(fails)
	return true
}

// disconnectLocked closes the gate; q.mu is held. It returns the reply
// callbacks to run once q.mu is released.
func (q *Queue[T]) disconnectLocked(cause error) []callback[T] {
	q.connected = false
	q.send = nil
	q.gen.Add(1)
	return q.failPending(ErrDisconnected, cause)
}

// Fail permanently fails the queue with cause (nil means [ErrClosed]) and
// hands back every buffered item, oldest first: nothing is dropped. Pending
// replays are failed with an error wrapping ErrClosed and cause, Sends
// blocked for room return that error, and every later Send, Connect and
// AddReplay returns it too. Only the first call has an effect; later calls
// return nil.
func (q *Queue[T]) Fail(cause error) []T {
	closeErr := ErrClosed
	if cause != nil && !errors.Is(cause, ErrClosed) {
		closeErr = fmt.Errorf("%w: %w", ErrClosed, cause)
	} else if cause != nil {
		closeErr = cause
	}
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return nil
	}
	q.closed = true
	q.closeErr = closeErr
	if q.connected {
		q.connected = false
		q.send = nil
		q.gen.Add(1)
	}
	var items []T
	if n := q.buf.len(); n > 0 {
		items = make([]T, 0, n)
		for q.buf.len() > 0 {
			items = append(items, q.buf.pop().item)
		}
	}
	q.bytes = 0
	q.buf = ring[T]{}
	q.replays = nil
	fails := q.failPending(closeErr, nil)
	q.wakeLocked()
	q.mu.Unlock()
	q.runFails(fails)
	return items
}

// Close is Fail(nil): it fails the queue with [ErrClosed] and hands back
// every buffered item. It stops every replay timer, so a closed Queue holds
// no goroutines or timers.
func (q *Queue[T]) Close() []T { return q.Fail(nil) }

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
// will come. It runs with no queue lock held and may call the Queue's
// methods.
//
// Errors: an error wrapping [ErrClosed] after Fail or Close. It panics if
// build is nil.
func (q *Queue[T]) AddReplay(key string, build func(id ReplayID) T, onReply func(Reply[T])) error {
	if build == nil {
		panic("replayqueue: AddReplay with a nil build function")
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return q.closeErr
	}
	q.removeReplayLocked(key)
	q.replays = append(q.replays, replayEntry[T]{key: key, build: build, onReply: onReply})
	return nil
}

// RemoveReplay removes key from the replay set and reports whether it was
// there. A transmission of it that is still pending keeps its reply
// callback: the reply (or its failure) is still delivered.
func (q *Queue[T]) RemoveReplay(key string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.removeReplayLocked(key)
}

func (q *Queue[T]) removeReplayLocked(key string) bool {
	i := slices.IndexFunc(q.replays, func(r replayEntry[T]) bool { return r.key == key })
	if i < 0 {
		return false
	}
	// slices.Delete zeroes the vacated slot, so the removed entry's
	// closures are not kept alive.
	q.replays = slices.Delete(q.replays, i, i+1)
	return true
}

// ReplayKeys returns the keys of the replay set in registration order.
func (q *Queue[T]) ReplayKeys() []string {
	q.mu.Lock()
	defer q.mu.Unlock()
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
func (q *Queue[T]) HandleReply(id string, reply T) (consumed bool) {
	if !IsReserved(id) {
		return false
	}
	rid, ok := ParseReplayID(id)
	q.replyMu.Lock()
	var p *pending[T]
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
		p.onReply(Reply[T]{Key: p.key, ID: rid, Value: reply})
	}
	return true
}

// addPending registers a transmission before it is sent; q.mu is held.
func (q *Queue[T]) addPending(id ReplayID, key string, onReply func(Reply[T])) {
	p := &pending[T]{key: key, onReply: onReply}
	q.replyMu.Lock()
	if q.pend == nil {
		q.pend = make(map[ReplayID]*pending[T])
	}
	q.pend[id] = p
	p.timer = time.AfterFunc(q.replayTimeout(), func() { q.expire(id, p) })
	q.replyMu.Unlock()
}

func (q *Queue[T]) expire(id ReplayID, p *pending[T]) {
	q.replyMu.Lock()
	if q.pend[id] != p {
		q.replyMu.Unlock()
		return
	}
	delete(q.pend, id)
	q.replyMu.Unlock()
	if p.onReply != nil {
		p.onReply(Reply[T]{Key: p.key, ID: id, Err: ErrReplayTimeout})
	}
}

// failPending removes every pending transmission (they all belong to the
// connection that is going away) and returns their failure callbacks, in
// send order, to run after the locks are released. Their error wraps kind
// and, if not nil, cause; it is built only when something is pending, so a
// reconnect without replays allocates nothing.
func (q *Queue[T]) failPending(kind, cause error) []callback[T] {
	q.replyMu.Lock()
	defer q.replyMu.Unlock()
	if len(q.pend) == 0 {
		return nil
	}
	err := kind
	if cause != nil {
		err = fmt.Errorf("%w: %w", kind, cause)
	}
	fails := make([]callback[T], 0, len(q.pend))
	for id, p := range q.pend {
		p.timer.Stop()
		delete(q.pend, id)
		if p.onReply != nil {
			fails = append(fails, callback[T]{fn: p.onReply, r: Reply[T]{Key: p.key, ID: id, Err: err}})
		}
	}
	slices.SortFunc(fails, func(a, b callback[T]) int { return cmp.Compare(a.r.ID.Seq, b.r.ID.Seq) })
	return fails
}

// callback is a reply callback waiting to run outside the locks.
type callback[T any] struct {
	fn func(Reply[T])
	r  Reply[T]
}

func (q *Queue[T]) runFails(fails []callback[T]) {
	for _, c := range fails {
		c.fn(c.r)
	}
}
