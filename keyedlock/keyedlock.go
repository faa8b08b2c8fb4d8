package keyedlock

import (
	"context"
	"hash/maphash"
	"math"
	"math/bits"
	"sync"
	"sync/atomic"
	"time"
)

// A Map is a set of mutexes, one per key, created on demand and deleted as
// soon as nobody holds or waits for the key.
//
// Ordering: for each key, Lock calls acquire the key in the order in which
// they started waiting (FIFO). Unlock hands the key directly to the oldest
// waiter, so a goroutine that arrives later can never overtake one that
// is already queued, and TryLock fails while anyone waits. In the
// terminology of the Go memory model, for any key k and n < m, the n'th
// call to Unlock(k) is synchronized before the m'th successful Lock(k) or
// TryLock(k) returns, just as for a [sync.Mutex]. Different keys are
// independent: waiting for one key never delays another, and nothing is
// synchronized between operations on different keys.
//
// A Map is safe for concurrent use by multiple goroutines. The zero value is
// an empty Map with [DefaultShards] shards and no hook, ready to use. A Map
// must not be copied after first use.
//
// A locked key is not associated with a particular goroutine: one goroutine
// may Lock a key and arrange for another to Unlock it.
//
// Keys are compared with ==, as in a Go map: a key whose dynamic type is not
// comparable (possible when K is an interface type) makes the call panic,
// and a key that is not equal to itself (a floating-point NaN) can be
// locked but never unlocked.
type Map[K comparable] struct {
	once  sync.Once
	table atomic.Pointer[table[K]] // set once by init; immutable afterwards
	cfg   config                   // set by New before the Map is shared
}

// table is the immutable sharding layout of a Map.
type table[K comparable] struct {
	seed   maphash.Seed // random per Map: nobody can aim keys at one shard
	mask   uint64
	hook   func(time.Duration)
	shards []shard[K]
}

// shard holds the state of the keys that hash to it. mu is held only for
// bookkeeping (a few comparisons or map operations); nobody waits for a key
// while holding it.
//
// A held key lives either in one of the inline slots or in the overflow
// map, never both, and stays where it was put until it is released. The
// inline slots serve the common case of a shard with at most a couple of
// held keys without touching a Go map: the mutex, the tags and the slots
// are adjacent, so an uncontended Lock/Unlock pair touches one or two cache
// lines of shared memory instead of a map's header, groups and entries.
type shard[K comparable] struct {
	mu sync.Mutex
	// tags[i] is the hash (with its low bit set) of the key in slot i, or
	// 0 if slot i is free. Guarded by mu.
	tags     [inlineSlots]uint64
	acquires uint64 // successful Lock and TryLock calls; guarded by mu
	// more holds the held keys that found no free inline slot; the value is
	// the key's queue of waiters, or nil while nobody waits. Guarded by mu.
	more  map[K]*queue
	slots [inlineSlots]slot[K] // guarded by mu

	// peak is the largest len(more) since more was last rebuilt: Go maps
	// never shrink, so a shard rebuilds its map when it drops far below it.
	peak      int
	contended uint64        // Lock calls that had to queue; guarded by mu
	canceled  uint64        // queued Lock calls whose context ended; guarded by mu
	waited    time.Duration // total queued time, saturating; guarded by mu
	waiting   int           // goroutines queued in this shard; guarded by mu
	// cancelable lists the queued waiters whose context can end, so that
	// Stats can settle the ones whose context has ended. Guarded by mu.
	cancelable *waiter

	// Keep neighbouring shards off each other's cache lines, so that two
	// cores working on keys in adjacent shards do not slow each other down
	// (false sharing). 64 bytes is the line size of amd64 and most arm64.
	_ [64]byte
}

// slot is an inline entry of a shard: a held key and its waiter queue (nil
// while nobody waits).
type slot[K comparable] struct {
	key K
	q   *queue
}

// inlineSlots is the number of held keys a shard tracks without its map.
const inlineSlots = 2

// notInline is the slot index of a key kept in a shard's overflow map.
const notInline = -1

// queue is a FIFO of waiters for one key, linked through the waiters.
type queue struct {
	head, tail *waiter
	n          int
}

// waiter is one goroutine blocked in Lock. It parks on its own sync.Cond
// tied to the shard mutex rather than on a channel: a recycled channel
// would stay associated with the testing/synctest bubble it was created
// in, while a Cond works in and out of bubbles and counts as durably
// blocked inside one. All fields are guarded by the shard mutex.
type waiter struct {
	cond       sync.Cond // cond.L is the shard mutex
	prev, next *waiter   // neighbours in q
	q          *queue    // the key's queue, while w is in it
	// done is the Lock call's ctx.Done(), nil for a context that never
	// ends. Whoever holds the shard mutex and sees it closed settles the
	// waiter as canceled (see shard.cancel), so an ended context wins over
	// a hand-off that comes after it, and Status never counts it.
	done <-chan struct{}
	// sprev and snext link the shard's cancelable list (when done != nil).
	sprev, snext *waiter
	// granted is set when Unlock pops the waiter and hands it the key;
	// canceled when the waiter leaves the queue because its context ended.
	// A waiter that has left the queue can no longer be popped, so at most
	// one of them is ever set.
	granted, canceled bool
}

// ended reports whether w's context has ended.
func (w *waiter) ended() bool {
	if w.done == nil {
		return false
	}
	select {
	case <-w.done:
		return true
	default:
		return false
	}
}

// Waiters and queues are recycled so that steady-state locking allocates
// nothing. sync.Pool drops idle objects at GC, so the caches never pin
// memory after a burst of contention.
var (
	waiterPool = sync.Pool{New: func() any { return new(waiter) }}
	queuePool  = sync.Pool{New: func() any { return new(queue) }}
)

// Shrinking policy: a shard's map is rebuilt when it has fallen to
// 1/shrinkRatio of its peak and that peak was at least shrinkMinPeak; an
// empty map is dropped once its peak exceeded smallMap (Go stores up to 8
// entries in a single group, so such maps cost a few hundred bytes and are
// worth keeping to avoid re-allocating them on every Lock of a quiet shard).
const (
	shrinkRatio   = 8
	shrinkMinPeak = 64
	smallMap      = 8
)

// New returns an empty Map configured by opts; nil options are ignored.
// Use New when you need options; otherwise the zero Map is equivalent.
func New[K comparable](opts ...Option) *Map[K] {
	m := new(Map[K])
	for _, o := range opts {
		if o != nil {
			o.apply(&m.cfg)
		}
	}
	m.init()
	return m
}

func (m *Map[K]) init() *table[K] {
	m.once.Do(func() {
		n := m.cfg.shards
		switch {
		case n < 1:
			n = DefaultShards
		case n > MaxShards:
			n = MaxShards
		}
		n = 1 << bits.Len(uint(n-1)) // round up to a power of two
		m.table.Store(&table[K]{
			seed:   maphash.MakeSeed(),
			mask:   uint64(n - 1),
			hook:   m.cfg.waitHook,
			shards: make([]shard[K], n),
		})
	})
	return m.table.Load()
}

// locate returns the Map's table, key's shard and key's tag: the key's
// hash with the low bit set, so that a tag is never 0 (which marks a free
// inline slot). It initializes a zero Map on first use. It is one call on
// the hot path of every operation, so it does all of that in one place.
func (m *Map[K]) locate(key K) (*table[K], *shard[K], uint64) {
	t := m.table.Load()
	if t == nil {
		t = m.init()
	}
	// The hash only spreads keys over shards and speeds up comparisons;
	// keys are always compared with ==, so a collision costs time, never
	// correctness.
	h := maphash.Comparable(t.seed, key)
	return t, &t.shards[h&t.mask], h | 1
}

// Lock acquires key, waiting behind earlier callers if it is held.
//
// If ctx ends before the key is handed to the caller (or had already
// ended when Lock was called), Lock returns ctx.Err() (use [context.Cause]
// for the cause), holds nothing, and leaves the order of the other waiters
// unchanged. A hand-off and a cancellation are decided under one mutex, so
// exactly one of them wins: either Lock returns nil and the caller holds
// the key, or the key goes to the next waiter; it is never lost. If ctx
// ends at about the moment the key is handed over, either outcome is
// possible, so check Lock's error rather than ctx. Lock returns nil once
// the key is held; the caller must then call Unlock exactly once.
//
// Waiting with a context that can end registers a [context.AfterFunc]
// callback, which allocates; with a context that never ends, and whenever
// the key is free, Lock allocates nothing.
func (m *Map[K]) Lock(ctx context.Context, key K) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	t, s, tag := m.locate(key)
	s.mu.Lock()
	i, q, held := s.find(tag, key)
	if !held {
		s.insert(tag, key)
		s.mu.Unlock()
		return nil
	}
	if q == nil {
		q = queuePool.Get().(*queue)
		s.setQueue(i, key, q)
	}
	w := waiterPool.Get().(*waiter)
	w.cond.L = &s.mu
	w.done = ctx.Done()
	s.join(q, w)
	s.contended++
	return m.wait(ctx, t, s, key, w) // unlocks s.mu
}

// wait blocks until w is handed the key or ctx ends. It is the slow path
// of Lock, entered with s.mu held and w queued; it returns with s.mu
// released.
func (m *Map[K]) wait(ctx context.Context, t *table[K], s *shard[K], key K, w *waiter) error {
	start := time.Now()
	var stop func() bool
	if w.done != nil {
		// Only contexts that can end need a watcher; context.Background
		// (and friends) wait allocation-free. The watcher wakes w if
		// nobody else (Unlock, Status, Stats) has settled it first.
		stop = context.AfterFunc(ctx, func() {
			s.mu.Lock()
			if !w.granted && !w.canceled {
				s.cancel(w)
			}
			s.mu.Unlock()
		})
	}
	for !w.granted && !w.canceled {
		w.cond.Wait()
	}
	granted := w.granted
	waited := time.Since(start)
	s.waited = addSaturating(s.waited, waited)
	s.mu.Unlock()

	// If the watcher already ran (or is running) it may still touch w, so
	// w is recycled only if the watcher was stopped before it started.
	if stop == nil || stop() {
		*w = waiter{}
		waiterPool.Put(w)
	}
	if !granted {
		if t.hook != nil {
			t.hook(waited)
		}
		return ctx.Err()
	}
	if t.hook != nil {
		m.runHook(t.hook, waited, key)
	}
	return nil
}

// addSaturating returns a+b (both non-negative), or the largest Duration
// if the sum overflows: a cumulative wait time pins at its maximum
// rather than wrapping negative.
func addSaturating(a, b time.Duration) time.Duration {
	if b > 0 && a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}

// runHook calls hook for a caller that now holds key, unlocking key if the
// hook panics so that the panic does not leave the key locked forever.
func (m *Map[K]) runHook(hook func(time.Duration), waited time.Duration, key K) {
	ok := false
	defer func() {
		if !ok {
			m.Unlock(key)
		}
	}()
	hook(waited)
	ok = true
}

// TryLock acquires key if it is free and reports whether it did. It never
// waits for the key (it only takes an internal shard mutex for a few
// instructions). It fails if the key is held, which includes every time
// anyone is waiting for it, so TryLock never jumps the FIFO queue. It has
// no error: false is the only failure. After a true result the caller must
// call Unlock exactly once.
func (m *Map[K]) TryLock(key K) bool {
	_, s, tag := m.locate(key)
	s.mu.Lock()
	if _, _, held := s.find(tag, key); held {
		s.mu.Unlock()
		return false
	}
	s.insert(tag, key)
	s.mu.Unlock()
	return true
}

// Unlock releases key. If goroutines are waiting for it, ownership passes
// directly to the one that has waited longest.
//
// Unlock panics with "keyedlock: unlock of unlocked key" if key is not
// held, like sync.Mutex does; that is always a bug in the caller.
func (m *Map[K]) Unlock(key K) {
	_, s, tag := m.locate(key)
	s.mu.Lock()
	i, q, held := s.find(tag, key)
	if !held {
		s.mu.Unlock()
		panic("keyedlock: unlock of unlocked key")
	}
	if q == nil && i != notInline {
		// The common case, inlined: an inline key nobody waits for.
		s.tags[i] = 0
		s.slots[i] = slot[K]{}
		s.mu.Unlock()
		return
	}
	s.release(i, key, q)
	s.mu.Unlock()
}

// Do locks key, calls fn, and unlocks key, even if fn panics (the panic
// continues after the key is unlocked), so a caller cannot forget to
// unlock. Calls for the same key run fn one at a time, in the order in
// which they called Do.
//
// Errors: if ctx ends before the key is acquired, Do returns ctx.Err()
// without calling fn; otherwise it returns fn's error unchanged (nil
// included). ctx is used only for waiting: ending it while fn runs does
// not interrupt fn, which should watch ctx itself if it needs to.
func (m *Map[K]) Do(ctx context.Context, key K, fn func() error) error {
	if err := m.Lock(ctx, key); err != nil {
		return err
	}
	defer m.Unlock(key)
	return fn()
}

// Status reports whether key is held and how many goroutines are queued
// for it. It is a plain value: a snapshot, safe to copy and compare.
type Status struct {
	Held    bool // some caller holds the key
	Waiters int  // Lock calls queued for the key, not counting the holder
}

// Status returns a snapshot of key's state, for example to show a
// "waiting" indicator. It takes the shard mutex only briefly (for as long
// as it takes to look at each waiter of key) and never waits for the key
// itself, so it cannot delay or reorder lockers; the state may of course
// change as soon as it returns. A waiter whose context has ended is no
// longer counted, even if its goroutine has not yet run: once cancel has
// returned, Status does not count the waiter. Status never fails: a key
// that is not in use reports the zero Status.
func (m *Map[K]) Status(key K) Status {
	if m.table.Load() == nil {
		return Status{} // never used: avoid allocating the shards
	}
	_, s, tag := m.locate(key)
	s.mu.Lock()
	_, q, held := s.find(tag, key)
	st := Status{Held: held}
	if q != nil {
		for w := q.head; w != nil; {
			next := w.next
			if w.ended() {
				s.cancel(w)
			}
			w = next
		}
		st.Waiters = q.n
	}
	s.mu.Unlock()
	return st
}

// Stats are cumulative counters and current gauges of a Map, as returned by
// [Map.Stats]. The counters never decrease (a uint64 counter would take
// centuries to wrap; WaitTime saturates instead of wrapping). It is a plain
// value, safe to copy.
type Stats struct {
	Acquires  uint64        // successful Lock and TryLock calls
	Contended uint64        // Lock calls that found the key held and queued
	Canceled  uint64        // queued Lock calls that gave up because ctx ended
	WaitTime  time.Duration // total time spent queued by all Lock calls; saturates at the largest Duration
	Held      int           // keys held now
	Waiters   int           // Lock calls queued now
}

// Stats returns the Map's counters; it never fails. It locks each shard
// mutex briefly, one after another, and never waits for a key, so
// under concurrent use the result is not an atomic snapshot, but each
// counter includes every operation that completed before Stats was called.
// As for Status, a queued Lock call whose context has ended counts as
// Canceled, not as one of the Waiters, even if its goroutine has not yet
// run. A queued Lock call's wait is added to WaitTime when its goroutine
// stops waiting.
func (m *Map[K]) Stats() Stats {
	var st Stats
	t := m.table.Load()
	if t == nil {
		return st
	}
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
		for w := s.cancelable; w != nil; {
			next := w.snext
			if w.ended() {
				s.cancel(w)
			}
			w = next
		}
		st.Acquires += s.acquires
		st.Contended += s.contended
		st.Canceled += s.canceled
		st.Held += len(s.more)
		for _, tag := range s.tags {
			if tag != 0 {
				st.Held++
			}
		}
		st.Waiters += s.waiting
		st.WaitTime = addSaturating(st.WaitTime, s.waited)
		s.mu.Unlock()
	}
	return st
}

// find reports whether key is held and, if so, its inline slot index (or
// notInline) and waiter queue. s.mu must be held.
func (s *shard[K]) find(tag uint64, key K) (i int, q *queue, held bool) {
	for i := range s.tags {
		if s.tags[i] == tag && s.slots[i].key == key {
			return i, s.slots[i].q, true
		}
	}
	if len(s.more) != 0 {
		q, held = s.more[key]
	}
	return notInline, q, held
}

// insert marks the free key as held. s.mu must be held.
func (s *shard[K]) insert(tag uint64, key K) {
	s.acquires++
	for i := range s.tags {
		if s.tags[i] == 0 {
			s.tags[i] = tag
			s.slots[i].key = key
			return
		}
	}
	if s.more == nil {
		s.more = make(map[K]*queue)
	}
	s.more[key] = nil
	if n := len(s.more); n > s.peak {
		s.peak = n
	}
}

// setQueue attaches waiter queue q to the held key at slot i. s.mu must be
// held.
func (s *shard[K]) setQueue(i int, key K, q *queue) {
	if i == notInline {
		s.more[key] = q
	} else {
		s.slots[i].q = q
	}
}

// release gives up key, held at slot i with waiter queue q (may be nil): it
// hands the key to the oldest waiter, or forgets the key if nobody waits.
// s.mu must be held.
func (s *shard[K]) release(i int, key K, q *queue) {
	if q != nil {
		for w := q.head; w != nil; w = q.head {
			if w.ended() {
				s.cancel(w) // its context ended before this Unlock
				continue
			}
			s.leave(w)
			s.acquires++
			w.granted = true
			w.cond.Signal()
			return
		}
		queuePool.Put(q)
	}
	if i != notInline {
		// Clear the key too: an idle key must not keep its memory (or
		// whatever it points to) alive.
		s.tags[i] = 0
		s.slots[i] = slot[K]{}
		return
	}
	delete(s.more, key)
	s.shrink()
}

// shrink rebuilds or drops the overflow map once it is far below its peak
// size, so that a burst of distinct keys does not keep its memory after the
// keys go idle. The cost is amortized: a rebuild copies at most
// peak/shrinkRatio entries after at least that many deletions. s.mu must
// be held.
func (s *shard[K]) shrink() {
	n := len(s.more)
	switch {
	case n == 0 && s.peak > smallMap:
		s.more = nil
		s.peak = 0
	case s.peak >= shrinkMinPeak && n <= s.peak/shrinkRatio:
		m := make(map[K]*queue, n)
		for k, q := range s.more {
			m[k] = q
		}
		s.more = m
		s.peak = n
	}
}

// join queues w, whose done is set, at the back of q. s.mu must be held.
func (s *shard[K]) join(q *queue, w *waiter) {
	q.push(w)
	w.q = q
	s.waiting++
	if w.done != nil {
		w.snext = s.cancelable
		if w.snext != nil {
			w.snext.sprev = w
		}
		s.cancelable = w
	}
}

// leave takes w out of its queue and out of the cancelable list. The queue
// is doubly linked, so only w's neighbours change and the order of the
// others is kept. s.mu must be held.
func (s *shard[K]) leave(w *waiter) {
	w.q.remove(w)
	w.q = nil
	s.waiting--
	if w.done == nil {
		return
	}
	if w.sprev == nil {
		s.cancelable = w.snext
	} else {
		w.sprev.snext = w.snext
	}
	if w.snext != nil {
		w.snext.sprev = w.sprev
	}
	w.sprev, w.snext = nil, nil
}

// cancel settles queued waiter w as canceled and wakes it: it leaves the
// queue under the mutex that Unlock holds to pick the next owner, so from
// now on no Unlock can hand it the key. s.mu must be held.
func (s *shard[K]) cancel(w *waiter) {
	s.leave(w)
	s.canceled++
	w.canceled = true
	w.cond.Signal()
}

func (q *queue) push(w *waiter) {
	w.prev, w.next = q.tail, nil
	if q.tail == nil {
		q.head = w
	} else {
		q.tail.next = w
	}
	q.tail = w
	q.n++
}

func (q *queue) remove(w *waiter) {
	if w.prev == nil {
		q.head = w.next
	} else {
		w.prev.next = w.next
	}
	if w.next == nil {
		q.tail = w.prev
	} else {
		w.next.prev = w.prev
	}
	w.prev, w.next = nil, nil
	q.n--
}
