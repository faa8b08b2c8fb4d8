// Package ring is the FIFO ring buffer that sendqueue and replayqueue hold
// their queued items in: a circular slice whose length is a power of two,
// grown by doubling and never shrunk, so a queue that fills and drains over
// and over reuses the same storage and allocates nothing at steady state.
// Removed slots are zeroed so the buffer does not keep items alive.
//
// A Buffer is not safe for concurrent use; its owner guards it with its own
// lock. The zero value is an empty Buffer.
package ring

// Buffer is a FIFO of values of type T. Index 0 is the oldest value.
type Buffer[T any] struct {
	buf  []T // len is 0 or a power of two
	head int // index in buf of the oldest value
	n    int // number of values
}

// minSize is the length of the first slice a Buffer allocates.
const minSize = 16

// Len returns the number of values in the buffer.
func (r *Buffer[T]) Len() int { return r.n }

// At returns a pointer to the i-th oldest value (0 is the oldest). It panics
// unless 0 <= i < Len. The pointer is valid until the next PushBack.
func (r *Buffer[T]) At(i int) *T {
	if i < 0 || i >= r.n {
		panic("ring: index out of range")
	}
	return &r.buf[(r.head+i)&(len(r.buf)-1)]
}

// PushBack appends v as the newest value, doubling the storage when full.
func (r *Buffer[T]) PushBack(v T) {
	if r.n == len(r.buf) {
		r.grow()
	}
	r.buf[(r.head+r.n)&(len(r.buf)-1)] = v
	r.n++
}

// PopFront removes and returns the oldest value. It panics if the buffer is
// empty.
func (r *Buffer[T]) PopFront() T {
	if r.n == 0 {
		panic("ring: PopFront of an empty buffer")
	}
	var zero T
	v := r.buf[r.head]
	r.buf[r.head] = zero
	r.head = (r.head + 1) & (len(r.buf) - 1)
	r.n--
	return v
}

// Truncate keeps the n oldest values and zeroes the slots of the others. It
// panics unless 0 <= n <= Len.
func (r *Buffer[T]) Truncate(n int) {
	if n < 0 || n > r.n {
		panic("ring: Truncate out of range")
	}
	var zero T
	for i := n; i < r.n; i++ {
		r.buf[(r.head+i)&(len(r.buf)-1)] = zero
	}
	r.n = n
}

func (r *Buffer[T]) grow() {
	size := max(2*len(r.buf), minSize)
	nb := make([]T, size)
	for i := range r.n {
		nb[i] = r.buf[(r.head+i)&(len(r.buf)-1)]
	}
	r.buf, r.head = nb, 0
}
