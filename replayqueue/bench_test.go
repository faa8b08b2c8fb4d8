package replayqueue_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/steadfast-go/steadfast/replayqueue"
)

// naiveQueue is the origin's first fix: a mutex-guarded slice plus an
// atomic "reconnecting" flag read outside the lock. It is here as the
// baseline (and it has the flag/flush race that Queue removes: a sender
// can read reconnecting==true after the flusher drained the slice).
type naiveQueue struct {
	reconnecting atomic.Bool
	mu           sync.Mutex
	buf          []int
	send         func(int) error
}

func (n *naiveQueue) Send(v int) error {
	if n.reconnecting.Load() {
		n.mu.Lock()
		n.buf = append(n.buf, v)
		n.mu.Unlock()
		return nil
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.send(v)
}

func (n *naiveQueue) Connect(send func(int) error) {
	n.mu.Lock()
	n.send = send
	for _, v := range n.buf {
		_ = send(v)
	}
	n.buf = n.buf[:0:0] // the origin drained a fresh VecDeque each time
	n.mu.Unlock()
	n.reconnecting.Store(false)
}

func (n *naiveQueue) Disconnect() { n.reconnecting.Store(true) }

var sinkCount int

func discard(v int) error { sinkCount += v & 1; return nil }

const flushN = 10_000

func BenchmarkReplayQueue(b *testing.B) {
	ctx := context.Background()
	b.Run("send-connected/steadfast", func(b *testing.B) {
		q := replayqueue.New[int, int]()
		defer q.Close()
		if _, err := q.Connect(discard); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			_ = q.Send(ctx, i)
		}
	})
	b.Run("send-connected/naive", func(b *testing.B) {
		var q naiveQueue
		q.Connect(discard)
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			_ = q.Send(i)
		}
	})
	b.Run("send-connected-parallel/steadfast", func(b *testing.B) {
		q := replayqueue.New[int, int]()
		defer q.Close()
		if _, err := q.Connect(discard); err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for i := 0; pb.Next(); i++ {
				_ = q.Send(ctx, i)
			}
		})
	})
	b.Run("send-connected-parallel/naive", func(b *testing.B) {
		var q naiveQueue
		q.Connect(discard)
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			for i := 0; pb.Next(); i++ {
				_ = q.Send(i)
			}
		})
	})
	// Buffered sends, flushed every flushN items so the buffer is reused.
	b.Run("send-buffered/steadfast", func(b *testing.B) {
		q := replayqueue.New[int, int](replayqueue.WithMaxItems[int](flushN))
		defer q.Close()
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if err := q.Send(ctx, i); err != nil {
				gen, _ := q.Connect(discard)
				q.Disconnect(gen, nil)
				_ = q.Send(ctx, i)
			}
		}
	})
	b.Run("send-buffered/naive", func(b *testing.B) {
		var q naiveQueue
		q.Disconnect()
		b.ReportAllocs()
		for i := 0; b.Loop(); i++ {
			if len(q.buf) == flushN {
				q.Connect(discard)
				q.Disconnect()
			}
			_ = q.Send(i)
		}
	})
	b.Run("reconnect-flush-10k/steadfast", func(b *testing.B) {
		q := replayqueue.New[int, int](replayqueue.WithMaxItems[int](flushN))
		defer q.Close()
		b.ReportAllocs()
		for range b.N {
			b.StopTimer()
			for i := range flushN {
				_ = q.Send(ctx, i)
			}
			b.StartTimer()
			gen, _ := q.Connect(discard)
			b.StopTimer()
			q.Disconnect(gen, nil)
			b.StartTimer()
		}
	})
	b.Run("reconnect-flush-10k/naive", func(b *testing.B) {
		var q naiveQueue
		b.ReportAllocs()
		for range b.N {
			b.StopTimer()
			q.Disconnect()
			for i := range flushN {
				_ = q.Send(i)
			}
			b.StartTimer()
			q.Connect(discard)
		}
	})
}
