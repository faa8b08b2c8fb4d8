package sendqueue

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
)

// naiveQueue is what one writes first: a mutex, a slice, a sync.Cond and a
// goroutine that peeks, sends and pops; string keys from a counter; a
// result channel per item so callers can wait. No reports, eviction,
// classification or back-off.
type naiveQueue struct {
	mu      sync.Mutex
	cond    sync.Cond
	items   []naiveItem
	cap     int
	n       uint64
	paused  bool
	closed  bool
	send    func(key string, v []byte) error
	done    chan struct{}
	emptied sync.Cond
}

type naiveItem struct {
	key    string
	v      []byte
	result chan error
}

func newNaive(capacity int, send func(string, []byte) error) *naiveQueue {
	q := &naiveQueue{cap: capacity, send: send, done: make(chan struct{})}
	q.cond.L = &q.mu
	q.emptied.L = &q.mu
	go q.run()
	return q
}

var errNaiveFull = errors.New("full")

func (q *naiveQueue) push(v []byte) (<-chan error, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.items) >= q.cap {
		return nil, errNaiveFull
	}
	q.n++
	it := naiveItem{key: "k-" + strconv.FormatUint(q.n, 16), v: v, result: make(chan error, 1)}
	q.items = append(q.items, it)
	q.cond.Signal()
	return it.result, nil
}

func (q *naiveQueue) run() {
	defer close(q.done)
	q.mu.Lock()
	for {
		for (q.paused || len(q.items) == 0) && !q.closed {
			q.cond.Wait()
		}
		if q.closed {
			q.mu.Unlock()
			return
		}
		it := q.items[0]
		q.mu.Unlock()
		err := q.send(it.key, it.v)
		q.mu.Lock()
		if err == nil {
			q.items = q.items[1:]
			it.result <- nil
			if len(q.items) == 0 {
				q.emptied.Broadcast()
			}
		}
	}
}

func (q *naiveQueue) pause() { q.mu.Lock(); q.paused = true; q.mu.Unlock() }

func (q *naiveQueue) resume() {
	q.mu.Lock()
	q.paused = false
	q.cond.Signal()
	q.mu.Unlock()
}

func (q *naiveQueue) flush() {
	q.mu.Lock()
	for len(q.items) > 0 {
		q.emptied.Wait()
	}
	q.mu.Unlock()
}

func (q *naiveQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.cond.Signal()
	q.mu.Unlock()
	<-q.done
}

var payload = []byte(`{"text":"hello"}`)

func BenchmarkSendQueue(b *testing.B) {
	ok := func(context.Context, Item[[]byte]) error { return nil }
	b.Run("enqueue-deliver/steadfast", func(b *testing.B) {
		q := New(ok, WithCapacity[[]byte](1<<16))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := q.Push(Item[[]byte]{Value: payload}); err != nil {
				_ = q.Flush(context.Background())
				if _, err := q.Push(Item[[]byte]{Value: payload}); err != nil {
					b.Fatal(err)
				}
			}
		}
		if err := q.Flush(context.Background()); err != nil {
			b.Fatal(err)
		}
		if err := q.Close(); err != nil {
			b.Fatal(err)
		}
	})
	b.Run("enqueue-deliver/naive", func(b *testing.B) {
		q := newNaive(1<<16, func(string, []byte) error { return nil })
		b.ReportAllocs()
		for b.Loop() {
			if _, err := q.push(payload); err != nil {
				q.flush()
				if _, err := q.push(payload); err != nil {
					b.Fatal(err)
				}
			}
		}
		q.flush()
		q.close()
	})
	b.Run("enqueue-deliver-parallel/steadfast", func(b *testing.B) {
		q := New(ok, WithCapacity[[]byte](1<<16))
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				for {
					if _, err := q.Push(Item[[]byte]{Value: payload}); err == nil {
						break
					}
					_ = q.Flush(context.Background())
				}
			}
		})
		if err := q.Flush(context.Background()); err != nil {
			b.Fatal(err)
		}
		q.Close()
	})
	b.Run("enqueue-deliver-parallel/naive", func(b *testing.B) {
		q := newNaive(1<<16, func(string, []byte) error { return nil })
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				for {
					if _, err := q.push(payload); err == nil {
						break
					}
					q.flush()
				}
			}
		})
		q.flush()
		q.close()
	})
	const batch = 10_000
	b.Run("flush-10k/steadfast", func(b *testing.B) {
		q := New(ok, WithCapacity[[]byte](batch))
		b.ReportAllocs()
		for b.Loop() {
			b.StopTimer()
			q.Pause()
			for range batch {
				if _, err := q.Push(Item[[]byte]{Value: payload}); err != nil {
					b.Fatal(err)
				}
			}
			b.StartTimer()
			q.Resume()
			if err := q.Flush(context.Background()); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/item")
		q.Close()
	})
	b.Run("flush-10k/naive", func(b *testing.B) {
		q := newNaive(batch, func(string, []byte) error { return nil })
		b.ReportAllocs()
		for b.Loop() {
			b.StopTimer()
			q.pause()
			for range batch {
				if _, err := q.push(payload); err != nil {
					b.Fatal(err)
				}
			}
			b.StartTimer()
			q.resume()
			q.flush()
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/item")
		q.close()
	})
}
