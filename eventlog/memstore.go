package eventlog

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"math/bits"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const (
	initialRing  = 16              // first ring size of a stream; doubles up to the retention bound
	arenaChunk   = 16 << 10        // event data is copied into chunks of up to this size...
	arenaMax     = arenaChunk / 16 // ...unless it is larger than this
	arenaInitial = 512             // first chunk of a stream; chunks double up to arenaChunk
)

// MemoryStore is the in-memory Store, and the default store of a Log: a
// ring buffer per stream, sized up to the count retention, with age
// retention enforced lazily on every access. Its epoch is random, so a new
// MemoryStore (a restarted process) never accepts cursors issued by an old
// one.
//
// Appends to one stream allocate nothing in the steady state: the ring is
// reused, and event data is copied into shared chunks that grow from 512
// bytes to 16 KiB per stream (events larger than 1 KiB get their own
// allocation). Reads copy event headers
// only; the returned Data slices share the store's memory and must not be
// modified.
//
// Delete frees a stream's events at once (its ring and data chunks are
// dropped) and keeps only a tombstone, a map entry for the id pointing to
// a shared marker, so that the id is never recreated under this epoch (see
// Store.Delete). A server that creates and deletes streams forever thus
// keeps the ids it deleted (their length plus about 50 bytes each), not
// their events.
//
// A MemoryStore is safe for concurrent use. Streams are independent: each
// has its own lock, found without a global lock. The zero MemoryStore is not
// usable: create one with NewMemoryStore. It must not be copied after first
// use.
type MemoryStore struct {
	epoch     string
	maxEvents int           // count retention, > 0
	maxAge    time.Duration // age retention, 0 = none
	base      time.Time     // event times are monotonic offsets from base
	closed    atomic.Bool
	streams   sync.Map                     // string -> *memStream (tombstone for a deleted id)
	notify    atomic.Pointer[func(string)] // set by Watch
}

// tombstone marks a deleted id in MemoryStore.streams. It is never locked.
var tombstone = &memStream{deleted: true}

type memStream struct {
	mu    sync.Mutex // protects every field below
	state State
	head  uint64  // last assigned seq
	n     int     // retained events: seqs head-n+1 .. head
	ring  []Event // len is a power of two; seq s lives at ring[s&(len-1)]
	times []int64 // append times (offsets from base), only with age retention
	arena []byte  // current data chunk
	// deleted is set by Delete: an operation that found the stream before
	// it was deleted fails once it holds mu.
	deleted bool
}

// NewMemoryStore returns an empty MemoryStore with a new random epoch,
// keeping at most r.MaxEvents events per stream (0 means DefaultMaxEvents)
// for at most r.MaxAge (0 means no age limit). It panics on a negative
// field.
func NewMemoryStore(r Retention) *MemoryStore {
	if r.MaxEvents < 0 || r.MaxAge < 0 {
		panic(fmt.Sprintf("eventlog: negative retention %+v", r))
	}
	if r.MaxEvents == 0 {
		r.MaxEvents = DefaultMaxEvents
	}
	return &MemoryStore{epoch: NewEpoch(), maxEvents: r.MaxEvents, maxAge: r.MaxAge, base: time.Now()}
}

// NewEpoch returns a new random epoch (16 hex digits), as used by
// MemoryStore and by persistent stores when they create a new history.
func NewEpoch() string {
	var b [8]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails
	return hex.EncodeToString(b[:])
}

// Epoch implements Store: the epoch is fixed for the store's life.
func (m *MemoryStore) Epoch(ctx context.Context) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	if m.closed.Load() {
		return "", ErrClosed
	}
	return m.epoch, nil
}

// Watch implements Store: fn is called after every Append, SetState and
// Delete, on the caller's goroutine.
func (m *MemoryStore) Watch(fn func(stream string)) { m.notify.Store(&fn) }

func (m *MemoryStore) changed(stream string) {
	if fn := m.notify.Load(); fn != nil && *fn != nil {
		(*fn)(stream)
	}
}

func (m *MemoryStore) checkEpoch(stream string, c Cursor) error {
	if c.Epoch != "" && c.Epoch != m.epoch {
		return errorf(ErrWrongEpoch, "stream %q: cursor epoch %q, store epoch %q", clip(stream), clip(c.Epoch), m.epoch)
	}
	return nil
}

func (m *MemoryStore) lookup(stream string, create bool) (*memStream, error) {
	if m.closed.Load() {
		return nil, ErrClosed
	}
	if v, ok := m.streams.Load(stream); ok {
		if v == tombstone {
			return nil, DeletedError(stream)
		}
		return v.(*memStream), nil
	}
	if !create {
		return nil, errorf(ErrUnknownStream, "%q", clip(stream))
	}
	v, _ := m.streams.LoadOrStore(stream, &memStream{state: Created})
	if v == tombstone {
		return nil, DeletedError(stream)
	}
	return v.(*memStream), nil
}

func (m *MemoryStore) now() int64 { return int64(time.Since(m.base)) }

// expire drops the events older than the age retention. st.mu must be held.
func (m *MemoryStore) expire(st *memStream, now int64) {
	if m.maxAge <= 0 {
		return
	}
	cutoff := now - int64(m.maxAge)
	mask := uint64(len(st.ring) - 1)
	for st.n > 0 {
		i := (st.head - uint64(st.n) + 1) & mask
		if st.times[i] > cutoff {
			return
		}
		st.ring[i] = Event{}
		st.n--
	}
}

// Append implements Store.
func (m *MemoryStore) Append(ctx context.Context, stream, typ string, data []byte) (Cursor, error) {
	if err := ctx.Err(); err != nil {
		return Cursor{}, err
	}
	st, err := m.lookup(stream, true)
	if err != nil {
		return Cursor{}, err
	}
	seq, err := m.append(st, stream, typ, data)
	if err != nil {
		return Cursor{}, err
	}
	m.changed(stream)
	return Cursor{Epoch: m.epoch, Seq: seq}, nil
}

func (m *MemoryStore) append(st *memStream, stream, typ string, data []byte) (uint64, error) {
	var now int64
	if m.maxAge > 0 {
		now = m.now()
	}
	st.mu.Lock()
	if st.deleted {
		st.mu.Unlock()
		return 0, DeletedError(stream)
	}
	if st.state == Ended {
		st.mu.Unlock()
		return 0, errorf(ErrStreamEnded, "%q", clip(stream))
	}
	if st.n == len(st.ring) && st.n < m.maxEvents {
		m.grow(st)
	}
	seq := st.head + 1
	mask := uint64(len(st.ring) - 1)
	if st.n == m.maxEvents {
		// Count retention: forget the oldest (its slot may be a different
		// one when the ring is larger than the bound).
		st.ring[(seq-uint64(m.maxEvents))&mask] = Event{}
		st.n--
	}
	i := seq & mask
	st.ring[i] = Event{Seq: seq, Type: typ, Data: st.copyData(data)}
	if m.maxAge > 0 {
		st.times[i] = now
		m.expire(st, now)
	}
	st.head = seq
	st.n++
	st.mu.Unlock()
	return seq, nil
}

// grow doubles the ring (up to the count bound). st.mu must be held.
func (m *MemoryStore) grow(st *memStream) {
	size := initialRing
	if len(st.ring) > 0 {
		size = 2 * len(st.ring)
	}
	if lim := 1 << bits.Len(uint(m.maxEvents-1)); size > lim {
		size = lim
	}
	ring := make([]Event, size)
	var times []int64
	if m.maxAge > 0 {
		times = make([]int64, size)
	}
	if st.n > 0 {
		om, nm := uint64(len(st.ring)-1), uint64(size-1)
		for s := st.head - uint64(st.n) + 1; s <= st.head; s++ {
			ring[s&nm] = st.ring[s&om]
			if times != nil {
				times[s&nm] = st.times[s&om]
			}
		}
	}
	st.ring, st.times = ring, times
}

// copyData copies data into the stream's arena. st.mu must be held.
func (st *memStream) copyData(data []byte) []byte {
	n := len(data)
	if n == 0 {
		return nil
	}
	if n > arenaMax {
		return append([]byte(nil), data...)
	}
	if cap(st.arena)-len(st.arena) < n {
		// Grow the chunk size with the stream, so that the many streams
		// of a server that hold a few events cost little memory while a
		// busy stream still allocates once per 16 KiB.
		size := min(max(2*cap(st.arena), arenaInitial), arenaChunk)
		st.arena = make([]byte, 0, max(size, n))
	}
	start := len(st.arena)
	st.arena = append(st.arena, data...)
	return st.arena[start : start+n : start+n]
}

// ReadAfter implements Store.
func (m *MemoryStore) ReadAfter(ctx context.Context, stream string, from Cursor, limit int, dst []Event) ([]Event, error) {
	if err := ctx.Err(); err != nil {
		return dst, err
	}
	st, err := m.lookup(stream, false)
	if err != nil {
		return dst, err
	}
	if err := m.checkEpoch(stream, from); err != nil {
		return dst, err
	}
	after := from.Seq
	var now int64
	if m.maxAge > 0 {
		now = m.now()
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.deleted {
		return dst, DeletedError(stream)
	}
	m.expire(st, now)
	if after > st.head {
		return dst, errorf(ErrCursorAhead, "stream %q: cursor %d, head %d", clip(stream), after, st.head)
	}
	first := st.head - uint64(st.n) + 1
	if after+1 < first {
		return dst, errorf(ErrCursorExpired, "stream %q: cursor %d, oldest retained %d", clip(stream), after, first)
	}
	k := st.head - after
	if limit >= 0 && k > uint64(limit) {
		k = uint64(limit)
	}
	if k == 0 {
		return dst, nil
	}
	mask := uint64(len(st.ring) - 1)
	lo := (after + 1) & mask
	hi := lo + k
	if hi <= uint64(len(st.ring)) {
		return append(dst, st.ring[lo:hi]...), nil
	}
	dst = append(dst, st.ring[lo:]...)
	return append(dst, st.ring[:hi-uint64(len(st.ring))]...), nil
}

// Bounds implements Store.
func (m *MemoryStore) Bounds(ctx context.Context, stream string) (Bounds, error) {
	if err := ctx.Err(); err != nil {
		return Bounds{}, err
	}
	st, err := m.lookup(stream, false)
	if err != nil {
		return Bounds{}, err
	}
	var now int64
	if m.maxAge > 0 {
		now = m.now()
	}
	st.mu.Lock()
	if st.deleted {
		st.mu.Unlock()
		return Bounds{}, DeletedError(stream)
	}
	m.expire(st, now)
	b := Bounds{Epoch: m.epoch, First: st.head - uint64(st.n) + 1, Head: st.head}
	st.mu.Unlock()
	return b, nil
}

// SetState implements Store.
func (m *MemoryStore) SetState(ctx context.Context, stream string, s State) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if !s.Valid() {
		return errorf(ErrInvalidState, "%d", s)
	}
	st, err := m.lookup(stream, true)
	if err != nil {
		return err
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.deleted {
		return DeletedError(stream)
	}
	if st.state == Ended && s != Ended {
		return errorf(ErrStreamEnded, "%q: cannot become %v", clip(stream), s)
	}
	st.state = s
	m.changed(stream)
	return nil
}

// State implements Store.
func (m *MemoryStore) State(ctx context.Context, stream string) (State, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	st, err := m.lookup(stream, false)
	if err != nil {
		return 0, err
	}
	st.mu.Lock()
	s, deleted := st.state, st.deleted
	st.mu.Unlock()
	if deleted {
		return 0, DeletedError(stream)
	}
	return s, nil
}

// Delete implements Store: the stream's events are released at once.
func (m *MemoryStore) Delete(ctx context.Context, stream string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	st, err := m.lookup(stream, false)
	if err != nil {
		return err
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.deleted {
		return DeletedError(stream)
	}
	st.deleted = true
	st.ring, st.times, st.arena, st.n = nil, nil, nil, 0
	// Under st.mu, so no operation on the stream runs between the flag and
	// the tombstone; lookups that load the old entry see the flag.
	m.streams.Store(stream, tombstone)
	m.changed(stream)
	return nil
}

// Streams implements Store.
func (m *MemoryStore) Streams(ctx context.Context, dst []StreamInfo) ([]StreamInfo, error) {
	if err := ctx.Err(); err != nil {
		return dst, err
	}
	if m.closed.Load() {
		return dst, ErrClosed
	}
	start := len(dst)
	m.streams.Range(func(k, v any) bool {
		st := v.(*memStream)
		if st == tombstone {
			return true
		}
		st.mu.Lock()
		s, deleted := st.state, st.deleted
		st.mu.Unlock()
		if !deleted {
			dst = append(dst, StreamInfo{ID: k.(string), State: s})
		}
		return true
	})
	slices.SortFunc(dst[start:], func(a, b StreamInfo) int { return strings.Compare(a.ID, b.ID) })
	return dst, nil
}

// Close implements Store: later calls return ErrClosed. The events are
// dropped with the store.
func (m *MemoryStore) Close() error {
	m.closed.Store(true)
	return nil
}
