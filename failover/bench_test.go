package failover

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// rwGroup is the naive alternative: the selection behind a sync.RWMutex,
// as in the incident's proxy, where the monitor took the write lock.
type rwGroup struct {
	mu      sync.RWMutex
	targets []int
	cur     int
	ok      bool
}

func (r *rwGroup) Pick() (int, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.targets[r.cur], r.ok
}

func (r *rwGroup) set(cur int) {
	r.mu.Lock()
	r.cur, r.ok = cur, true
	r.mu.Unlock()
}

var sink atomic.Bool

func benchGroup(b *testing.B) *Group[int] {
	check := func(context.Context, int) (Health, error) { return Health{}, nil }
	g, err := New(targets(3), check)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = g.Close() })
	return g
}

// updater changes the selection every 50 µs until stop is closed, the way a
// checker publishes new health.
func updater(set func(k int)) (stop func()) {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(50 * time.Microsecond)
		defer t.Stop()
		for k := 0; ; k++ {
			select {
			case <-done:
				return
			case <-t.C:
				set(k)
			}
		}
	})
	return func() { close(done); wg.Wait() }
}

func BenchmarkPick(b *testing.B) {
	b.Run("steadfast", func(b *testing.B) {
		g := benchGroup(b)
		b.ReportAllocs()
		var ok bool
		for b.Loop() {
			_, ok = g.Pick()
		}
		sink.Store(ok)
	})
	b.Run("rwmutex", func(b *testing.B) {
		r := &rwGroup{targets: targets(3)}
		b.ReportAllocs()
		var ok bool
		for b.Loop() {
			_, ok = r.Pick()
		}
		sink.Store(ok)
	})
}

func BenchmarkPickParallel(b *testing.B) {
	b.Run("steadfast", func(b *testing.B) {
		g := benchGroup(b)
		stop := updater(func(k int) {
			if k%2 == 0 {
				_ = g.Drain(0)
			} else {
				_ = g.Undrain(0)
			}
		})
		defer stop()
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			var ok bool
			for pb.Next() {
				_, ok = g.Pick()
			}
			sink.Store(ok)
		})
	})
	b.Run("rwmutex", func(b *testing.B) {
		r := &rwGroup{targets: targets(3)}
		stop := updater(func(k int) { r.set(k % 2) })
		defer stop()
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			var ok bool
			for pb.Next() {
				_, ok = r.Pick()
			}
			sink.Store(ok)
		})
	})
}
