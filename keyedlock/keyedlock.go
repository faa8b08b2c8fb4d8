package keyedlock

import (
	"context"
	"hash/maphash"
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
// is already queued, and TryLock fails while anyone waits. As with
// [sync.Mutex], the n'th Unlock of a key synchronizes before the Lock that
// it hands the key to returns. Different keys are independent: waiting for
// one key never delays another.
//
// A Map is safe for concurrent use by multiple goroutines. The zero value is
// an empty Map with [DefaultShards] shards and no hook, ready to use. A Map
// must not be copied after first use.
//
// A locked key is not associated with a particular goroutine: one goroutine
// may Lock a key and arrange for another to Unlock it.
type Map[K comparable] struct {
	once  sync.Once
	table atomic.Pointer[table[K]] // set once by init; immutable afterwards
	cfg   config                   // set by New before the Map is shared

	// Contention counters; only the slow path touches them.
	waitNanos atomic.Int64
}

// table is the immutable sharding layout of a Map.
type table[K comparable] struct {
	seed   maphash.Seed
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
	contended uint64 // Lock calls that had to queue; guarded by mu
	canceled  uint64 // queued Lock calls whose context ended; guarded by mu
	waiting   int    // goroutines queued in this shard; guarded by mu
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
// blocked inside one.
type waiter struct {
	cond       sync.Cond // cond.L is the shard mutex
	prev, next *waiter
	// granted is set when Unlock hands the key over; canceled when the
	// waiter's context ends first. Whichever is set first under the shard
	// mutex wins, so a hand-off and a cancellation can never both happen.
	// Both guarded by the shard mutex.
	granted, canceled bool
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

// New returns an empty Map configured by opts.
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

func (m *Map[K]) tab() *table[K] {
	if t := m.table.Load(); t != nil {
		return t
	}
	return m.init()
}

// locate returns key's shard and its tag: the key's hash with the low bit
// set, so that a tag is never 0 (which marks a free inline slot).
func (t *table[K]) locate(key K) (*shard[K], uint64) {
	h := maphash.Comparable(t.seed, key)
	return &t.shards[h&t.mask], h | 1
}

// Lock acquires key, waiting behind earlier callers if it is held.
//
// If ctx ends before the key is handed to the caller (or had already
// ended when Lock was called), Lock returns ctx.Err() (use [context.Cause]
// for the cause), holds nothing, and leaves the order of the other waiters
// unchanged. A hand-off and a cancellation are decided under one mutex, so
// exactly one of them wins: either Lock returns nil and the caller holds
// the key, or the key goes to the next waiter; it is never lost. Lock
// returns nil once the key is held; the caller must then call Unlock
// exactly once.
//
// Waiting with a context that can end registers a [context.AfterFunc]
// callback, which allocates; with a context that never ends, and whenever
// the key is free, Lock allocates nothing.
func (m *Map[K]) Lock(ctx context.Context, key K) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	t := m.tab()
	s, tag := t.locate(key)
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
	q.push(w)
	s.waiting++
	s.contended++
	return m.wait(ctx, t, s, key, q, w) // unlocks s.mu
}

// wait blocks until w is handed the key or ctx ends. It is the slow path
// of Lock, entered with s.mu held and w queued; it returns with s.mu
// released.
func (m *Map[K]) wait(ctx context.Context, t *table[K], s *shard[K], key K, q *queue, w *waiter) error {
	start := time.Now()
	var stop func() bool
	if ctx.Done() != nil {
		// Only contexts that can end need a watcher; context.Background
		// (and friends) wait allocation-free.
		stop = context.AfterFunc(ctx, func() {
			s.mu.Lock()
			if !w.granted {
				w.canceled = true
				w.cond.Signal()
			}
			s.mu.Unlock()
		})
	}
	for !w.granted && !w.canceled {
		w.cond.Wait()
	}
	granted := w.granted
	if !granted {
		// Leaving the queue keeps the others' order: it is a doubly
		// linked list and only w's neighbours change.
		q.remove(w)
		s.waiting--
		s.canceled++
	}
	s.mu.Unlock()
	waited := time.Since(start)
	m.waitNanos.Add(int64(waited))

	// If the watcher already ran (or is running) it may still touch w, so
	// w is recycled only if the watcher was stopped before it started.
	if stop == nil || stop() {
		w.granted, w.canceled, w.cond.L = false, false, nil
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
// blocks. It fails if the key is held, which includes every time anyone is
// waiting for it, so TryLock never jumps the FIFO queue.
func (m *Map[K]) TryLock(key K) bool {
	s, tag := m.tab().locate(key)
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
	s, tag := m.tab().locate(key)
	s.mu.Lock()
	i, q, held := s.find(tag, key)
	if !held {
		s.mu.Unlock()
		panic("keyedlock: unlock of unlocked key")
	}
	s.release(i, key, q)
	s.mu.Unlock()
}

// Do locks key, calls fn, and unlocks key, even if fn panics (the panic
// continues after the key is unlocked). It returns the error from Lock
// (ctx.Err(), in which case fn is not called) or else fn's error.
func (m *Map[K]) Do(ctx context.Context, key K, fn func() error) error {
	if err := m.Lock(ctx, key); err != nil {
		return err
	}
	defer m.Unlock(key)
	return fn()
}

// Status reports whether key is held and how many goroutines are queued
// for it.
type Status struct {
	Held    bool // some caller holds the key
	Waiters int  // Lock calls queued for the key, not counting the holder
}

// Status returns a snapshot of key's state, for example to show a
// "waiting" indicator. It takes the shard mutex only briefly and never
// waits for the key itself, so it cannot delay or reorder lockers; the
// state may of course change as soon as it returns.
func (m *Map[K]) Status(key K) Status {
	t := m.table.Load()
	if t == nil {
		return Status{}
	}
	s, tag := t.locate(key)
	s.mu.Lock()
	_, q, held := s.find(tag, key)
	st := Status{Held: held}
	if q != nil {
		st.Waiters = q.n
	}
	s.mu.Unlock()
	return st
}

// Stats are cumulative counters and current gauges of a Map. The counters
// never decrease.
type Stats struct {
	Acquires  uint64        // successful Lock and TryLock calls
	Contended uint64        // Lock calls that found the key held and queued
	Canceled  uint64        // queued Lock calls that returned because ctx ended
	WaitTime  time.Duration // total time spent queued, by all Lock calls
	Held      int           // keys held now
	Waiters   int           // Lock calls queued now
}

// Stats returns the Map's counters. Shards are read one after another, so
// under concurrent use the result is not an atomic snapshot, but each
// counter includes every operation that completed before Stats was called.
// WaitTime is added when a queued Lock call returns.
func (m *Map[K]) Stats() Stats {
	var st Stats
	t := m.table.Load()
	if t == nil {
		return st
	}
	for i := range t.shards {
		s := &t.shards[i]
		s.mu.Lock()
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
		s.mu.Unlock()
	}
	st.WaitTime = time.Duration(m.waitNanos.Load())
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
		if w := q.pop(); w != nil {
			s.waiting--
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

// pop removes and returns the oldest waiter, or nil.
func (q *queue) pop() *waiter {
	w := q.head
	if w != nil {
		q.remove(w)
	}
	return w
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
