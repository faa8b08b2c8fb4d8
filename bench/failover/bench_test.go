// Package failover_test measures steadfast's failover.Group.Pick, the call a
// proxy makes on every request, against the naive alternative: the selection
// behind a sync.RWMutex that the health monitor write-locks, as in the
// incident's proxy. (The peers named in the issue, proxyd, erpc and
// failsafe-go, are not Go libraries with a comparable selector call.)
//
// Run from the bench module:
//
//	go test -run '^$' -bench BenchmarkFailover -count 6 ./failover/ | tee new.txt
//	go tool benchstat new.txt
package failover_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/failover"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type picker interface {
	Pick() (string, bool)
}

var nodes = []string{"primary:8545", "backup1:8545", "backup2:8545"}

var errFlap = errors.New("flap")

// newSteadfast returns a group whose checker runs every millisecond and
// flips the primary's health on every round, so Pick always races with
// selection updates. flapping=false keeps every target up.
func newSteadfast(b *testing.B, flapping bool) *failover.Group[string] {
	var n atomic.Uint64
	check := func(ctx context.Context, t string) (failover.Health, error) {
		if flapping && t == nodes[0] && n.Add(1)%2 == 0 {
			return failover.Health{}, errFlap
		}
		return failover.Health{}, nil
	}
	g, err := failover.New(nodes, check,
		failover.WithInterval(time.Millisecond), failover.WithTimeout(time.Millisecond),
		failover.WithRise(1), failover.WithFall(1))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = g.Close() })
	// Wait for the first selection.
	ch, cancel := g.Subscribe()
	defer cancel()
	if _, ok := g.Pick(); !ok {
		<-ch
	}
	return g
}

// rwSelector is the naive alternative.
type rwSelector struct {
	mu  sync.RWMutex
	cur int
	ok  bool
}

func (r *rwSelector) Pick() (string, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return nodes[r.cur], r.ok
}

// newRW returns the naive selector; with flapping, a checker goroutine
// write-locks it every millisecond to flip between primary and backup.
func newRW(b *testing.B, flapping bool) *rwSelector {
	r := &rwSelector{ok: true}
	if !flapping {
		return r
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		t := time.NewTicker(time.Millisecond)
		defer t.Stop()
		for k := 0; ; k++ {
			select {
			case <-done:
				return
			case <-t.C:
				r.mu.Lock()
				r.cur = k % 2
				r.mu.Unlock()
			}
		}
	})
	b.Cleanup(func() { close(done); wg.Wait() })
	return r
}

var sink atomic.Bool

func BenchmarkFailover(b *testing.B) {
	impls := []struct {
		name string
		make func(b *testing.B, flapping bool) picker
	}{
		{"steadfast", func(b *testing.B, f bool) picker { return newSteadfast(b, f) }},
		{"rwmutex", func(b *testing.B, f bool) picker { return newRW(b, f) }},
	}
	b.Run("pick", func(b *testing.B) {
		for _, impl := range impls {
			b.Run(impl.name, func(b *testing.B) {
				p := impl.make(b, false)
				b.ReportAllocs()
				var ok bool
				for b.Loop() {
					_, ok = p.Pick()
				}
				sink.Store(ok)
			})
		}
	})
	b.Run("pick-parallel", func(b *testing.B) {
		for _, impl := range impls {
			b.Run(impl.name, func(b *testing.B) {
				p := impl.make(b, true)
				b.ReportAllocs()
				b.RunParallel(func(pb *testing.PB) {
					var ok bool
					for pb.Next() {
						_, ok = p.Pick()
					}
					sink.Store(ok)
				})
			})
		}
	})
}
