// Package replayqueue_test compares steadfast's replayqueue with the
// straightforward alternative a Go service would write: a
// github.com/gammazero/deque ring buffer and a "connected" flag behind one
// sync.Mutex, sending directly while connected and draining the deque on
// reconnect. (The baseline is given the one lock, so it is correct; the
// origin's version read an atomic flag outside the lock and raced.)
//
// Run from the bench module:
//
//	go test -run '^$' -bench BenchmarkReplayQueue -count 6 ./replayqueue/ | tee new.txt
//	go tool benchstat new.txt
package replayqueue_test

import (
	"context"
	"sync"
	"testing"

	"github.com/gammazero/deque"
	"go.uber.org/goleak"

	"github.com/steadfast-go/steadfast/replayqueue"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// queue is the shape both implementations are driven through.
type queue interface {
	Send(ctx context.Context, v int) error
	Connect(send func(int) error)
	Disconnect()
}

type steadfast struct {
	q   *replayqueue.Queue[int, int]
	gen uint64
}

func newSteadfast(maxItems int) *steadfast {
	return &steadfast{q: replayqueue.New[int, int](replayqueue.WithMaxItems[int](maxItems))}
}

func (s *steadfast) Send(ctx context.Context, v int) error { return s.q.Send(ctx, v) }
func (s *steadfast) Connect(send func(int) error) {
	gen, err := s.q.Connect(send)
	if err != nil {
		panic(err)
	}
	s.gen = gen
}
func (s *steadfast) Disconnect() { s.q.Disconnect(s.gen, nil) }

// dequeQueue is the naive equivalent: one mutex over a connected flag and a
// gammazero/deque buffer.
type dequeQueue struct {
	mu        sync.Mutex
	connected bool
	send      func(int) error
	buf       deque.Deque[int]
	max       int
}

type errFull struct{}

func (errFull) Error() string { return "full" }

func (d *dequeQueue) Send(_ context.Context, v int) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.connected {
		return d.send(v)
	}
	if d.buf.Len() >= d.max {
		return errFull{}
	}
	d.buf.PushBack(v)
	return nil
}

func (d *dequeQueue) Connect(send func(int) error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for d.buf.Len() > 0 {
		_ = send(d.buf.PopFront())
	}
	d.connected, d.send = true, send
}

func (d *dequeQueue) Disconnect() {
	d.mu.Lock()
	d.connected, d.send = false, nil
	d.mu.Unlock()
}

var sunk int

func discard(v int) error { sunk += v & 1; return nil }

const flushN = 10_000

func impls(maxItems int) []struct {
	name string
	q    queue
} {
	return []struct {
		name string
		q    queue
	}{
		{"steadfast", newSteadfast(maxItems)},
		{"deque", &dequeQueue{max: maxItems}},
	}
}

func BenchmarkReplayQueue(b *testing.B) {
	ctx := context.Background()
	for _, im := range impls(flushN) {
		b.Run("send-connected/"+im.name, func(b *testing.B) {
			q := im.q
			q.Connect(discard)
			defer q.Disconnect()
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				_ = q.Send(ctx, i)
			}
		})
	}
	for _, im := range impls(flushN) {
		b.Run("send-connected-parallel/"+im.name, func(b *testing.B) {
			q := im.q
			q.Connect(discard)
			defer q.Disconnect()
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for i := 0; pb.Next(); i++ {
					_ = q.Send(ctx, i)
				}
			})
		})
	}
	// Buffered sends; every flushN items a reconnect drains the buffer, so
	// the steady state shows whether the buffer's storage is reused.
	for _, im := range impls(flushN) {
		b.Run("send-buffered/"+im.name, func(b *testing.B) {
			q := im.q
			b.ReportAllocs()
			for i := 0; b.Loop(); i++ {
				if err := q.Send(ctx, i); err != nil {
					q.Connect(discard)
					q.Disconnect()
					if err := q.Send(ctx, i); err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
	// One reconnect flushing 10k buffered items (the fill is not timed).
	for _, im := range impls(flushN) {
		b.Run("reconnect-flush-10k/"+im.name, func(b *testing.B) {
			q := im.q
			b.ReportAllocs()
			for range b.N {
				b.StopTimer()
				for i := range flushN {
					if err := q.Send(ctx, i); err != nil {
						b.Fatal(err)
					}
				}
				b.StartTimer()
				q.Connect(discard)
				b.StopTimer()
				q.Disconnect()
				b.StartTimer()
			}
		})
	}
}
