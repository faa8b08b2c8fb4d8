// Package sendqueue_test compares steadfast/sendqueue with the obvious
// hand-rolled alternatives: a gammazero/deque guarded by a mutex and a
// sync.Cond, and a buffered channel drained by a goroutine. Both peers
// generate a key per item like sendqueue does, but offer no per-item
// result, reports, eviction or classification.
package sendqueue_test

import (
	"context"
	"strconv"
	"sync"
	"testing"

	"github.com/gammazero/deque"
	"go.uber.org/goleak"

	"github.com/steadfast-go/steadfast/sendqueue"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

type item struct {
	key string
	v   []byte
}

// queue is what each contender offers the benchmark.
type queue interface {
	push(v []byte) bool // false when full
	pause()
	resume()
	flush()
	close()
}

// steadfast adapts sendqueue.Queue.
type steadfast struct{ q *sendqueue.Queue[[]byte] }

func newSteadfast(capacity int, send func(key string, v []byte) error) queue {
	return steadfast{sendqueue.New(func(_ context.Context, it sendqueue.Item[[]byte]) error {
		return send(it.Key, it.Value)
	}, sendqueue.WithCapacity[[]byte](capacity))}
}

func (s steadfast) push(v []byte) bool {
	_, err := s.q.Push(sendqueue.Item[[]byte]{Value: v})
	return err == nil
}
func (s steadfast) pause()  { s.q.Pause() }
func (s steadfast) resume() { s.q.Resume() }
func (s steadfast) flush()  { _ = s.q.Flush(context.Background()) }
func (s steadfast) close()  { _ = s.q.Close() }

// dequeQueue: mutex + sync.Cond + gammazero/deque, peek-then-commit.
type dequeQueue struct {
	mu      sync.Mutex
	work    sync.Cond // signalled on push, resume, close
	empty   sync.Cond // broadcast when the deque empties
	d       deque.Deque[item]
	cap     int
	n       uint64
	paused  bool
	closed  bool
	send    func(string, []byte) error
	stopped chan struct{}
}

func newDeque(capacity int, send func(string, []byte) error) queue {
	q := &dequeQueue{cap: capacity, send: send, stopped: make(chan struct{})}
	q.work.L, q.empty.L = &q.mu, &q.mu
	go q.run()
	return q
}

func (q *dequeQueue) push(v []byte) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.d.Len() >= q.cap {
		return false
	}
	q.n++
	q.d.PushBack(item{"k-" + strconv.FormatUint(q.n, 16), v})
	q.work.Signal()
	return true
}

func (q *dequeQueue) run() {
	defer close(q.stopped)
	q.mu.Lock()
	for {
		for !q.closed && (q.paused || q.d.Len() == 0) {
			q.work.Wait()
		}
		if q.closed {
			q.mu.Unlock()
			return
		}
		it := q.d.Front()
		q.mu.Unlock()
		err := q.send(it.key, it.v)
		q.mu.Lock()
		if err == nil {
			q.d.PopFront()
			if q.d.Len() == 0 {
				q.empty.Broadcast()
			}
		}
	}
}

func (q *dequeQueue) pause() { q.mu.Lock(); q.paused = true; q.mu.Unlock() }
func (q *dequeQueue) resume() {
	q.mu.Lock()
	q.paused = false
	q.work.Signal()
	q.mu.Unlock()
}
func (q *dequeQueue) flush() {
	q.mu.Lock()
	for q.d.Len() > 0 {
		q.empty.Wait()
	}
	q.mu.Unlock()
}
func (q *dequeQueue) close() {
	q.mu.Lock()
	q.closed = true
	q.work.Signal()
	q.mu.Unlock()
	<-q.stopped
}

// chanQueue: a buffered channel; the consumer holds a failed item itself.
// Pause is a gate the consumer checks before each send.
type chanQueue struct {
	ch      chan item
	mu      sync.Mutex
	drained sync.Cond // broadcast when pending reaches 0
	n       uint64
	pending int          // pushed, not yet delivered
	gate    sync.RWMutex // write-locked while paused
	send    func(string, []byte) error
	stopped chan struct{}
}

func newChan(capacity int, send func(string, []byte) error) queue {
	q := &chanQueue{ch: make(chan item, capacity), send: send, stopped: make(chan struct{})}
	q.drained.L = &q.mu
	go q.run()
	return q
}

func (q *chanQueue) push(v []byte) bool {
	q.mu.Lock()
	q.n++
	k := "k-" + strconv.FormatUint(q.n, 16)
	q.pending++
	q.mu.Unlock()
	select {
	case q.ch <- item{k, v}:
		return true
	default:
		q.done()
		return false
	}
}

func (q *chanQueue) run() {
	defer close(q.stopped)
	for it := range q.ch {
		for {
			q.gate.RLock()
			err := q.send(it.key, it.v)
			q.gate.RUnlock()
			if err == nil {
				break
			}
		}
		q.done()
	}
}

func (q *chanQueue) done() {
	q.mu.Lock()
	if q.pending--; q.pending == 0 {
		q.drained.Broadcast()
	}
	q.mu.Unlock()
}

func (q *chanQueue) pause()  { q.gate.Lock() }
func (q *chanQueue) resume() { q.gate.Unlock() }
func (q *chanQueue) flush() {
	q.mu.Lock()
	for q.pending > 0 {
		q.drained.Wait()
	}
	q.mu.Unlock()
}
func (q *chanQueue) close() { close(q.ch); <-q.stopped }

var contenders = []struct {
	name string
	make func(int, func(string, []byte) error) queue
}{
	{"steadfast", newSteadfast},
	{"deque", newDeque},
	{"chan", newChan},
}

var payload = []byte(`{"text":"hello"}`)

func ok(string, []byte) error { return nil }

// BenchmarkSendQueue: enqueue-deliver pushes one item per op into a queue
// whose sink always succeeds (time includes delivery of every item);
// flush-10k queues 10,000 items while paused, then times Resume until the
// queue is empty (ns/item).
func BenchmarkSendQueue(b *testing.B) {
	for _, c := range contenders {
		b.Run("enqueue-deliver/"+c.name, func(b *testing.B) {
			q := c.make(1<<16, ok)
			b.ReportAllocs()
			for b.Loop() {
				for !q.push(payload) {
					q.flush()
				}
			}
			q.flush()
			q.close()
		})
	}
	for _, c := range contenders {
		b.Run("enqueue-deliver-parallel/"+c.name, func(b *testing.B) {
			q := c.make(1<<16, ok)
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					for !q.push(payload) {
						q.flush()
					}
				}
			})
			q.flush()
			q.close()
		})
	}
	const batch = 10_000
	for _, c := range contenders {
		b.Run("flush-10k/"+c.name, func(b *testing.B) {
			q := c.make(batch, ok)
			b.ReportAllocs()
			for b.Loop() {
				b.StopTimer()
				q.pause()
				for range batch {
					if !q.push(payload) {
						b.Fatal("full")
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
}

// TestContendersDeliverInOrder checks that every contender delivers all
// items once, in order, across a pause, so the benchmark compares equals.
func TestContendersDeliverInOrder(t *testing.T) {
	for _, c := range contenders {
		t.Run(c.name, func(t *testing.T) {
			var (
				mu  sync.Mutex
				got []string
			)
			q := c.make(100, func(_ string, v []byte) error {
				mu.Lock()
				got = append(got, string(v))
				mu.Unlock()
				return nil
			})
			q.pause()
			for i := range 50 {
				if !q.push([]byte(strconv.Itoa(i))) {
					t.Fatal("full")
				}
			}
			q.resume()
			q.flush()
			q.close()
			mu.Lock()
			defer mu.Unlock()
			if len(got) != 50 {
				t.Fatalf("%d delivered", len(got))
			}
			for i, v := range got {
				if v != strconv.Itoa(i) {
					t.Fatalf("position %d: %s", i, v)
				}
			}
		})
	}
}
