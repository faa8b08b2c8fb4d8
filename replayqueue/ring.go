package replayqueue

// entry is one buffered item with the size it was charged.
type entry[T any] struct {
	item T
	size int
}

// ring is a FIFO of entries in a power-of-two circular slice. It grows by
// doubling and never shrinks, so a queue that is filled and flushed over and
// over reuses the same storage and allocates nothing at steady state.
// Popped slots are zeroed so the ring does not keep items alive.
type ring[T any] struct {
	buf  []entry[T]
	head int // index of the oldest entry
	n    int // number of entries
}

func (r *ring[T]) len() int { return r.n }

func (r *ring[T]) push(e entry[T]) {
	if r.n == len(r.buf) {
		r.grow()
	}
	r.buf[(r.head+r.n)&(len(r.buf)-1)] = e
	r.n++
}

// peek returns the oldest entry; the ring must not be empty.
func (r *ring[T]) peek() *entry[T] { return &r.buf[r.head] }

// pop removes and returns the oldest entry; the ring must not be empty.
func (r *ring[T]) pop() entry[T] {
	e := r.buf[r.head]
	r.buf[r.head] = entry[T]{}
	r.head = (r.head + 1) & (len(r.buf) - 1)
	r.n--
	return e
}

func (r *ring[T]) grow() {
	n := 2 * len(r.buf)
	if n == 0 {
		n = 16
	}
	nb := make([]entry[T], n)
	for i := 0; i < r.n; i++ {
		nb[i] = r.buf[(r.head+i)&(len(r.buf)-1)]
	}
	r.buf, r.head = nb, 0
}
