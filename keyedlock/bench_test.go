package keyedlock_test

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/steadfast-go/steadfast/keyedlock"
)

// naiveMap is what the bot did: a mutex-guarded map of per-key mutexes
// that is never cleaned up, not FIFO, and has no context support.
type naiveMap struct {
	mu    sync.Mutex
	locks map[string]*sync.Mutex
}

func (n *naiveMap) Lock(key string) {
	n.mu.Lock()
	l, ok := n.locks[key]
	if !ok {
		l = new(sync.Mutex)
		n.locks[key] = l
	}
	n.mu.Unlock()
	l.Lock()
}

func (n *naiveMap) Unlock(key string) {
	n.mu.Lock()
	l := n.locks[key]
	n.mu.Unlock()
	l.Unlock()
}

type keyedlockAdapter struct{ m keyedlock.Map[string] }

func (a *keyedlockAdapter) Lock(key string)   { _ = a.m.Lock(context.Background(), key) }
func (a *keyedlockAdapter) Unlock(key string) { a.m.Unlock(key) }

type benchLocker interface {
	Lock(string)
	Unlock(string)
}

var benchImpls = []struct {
	name string
	make func() benchLocker
}{
	{"keyedlock", func() benchLocker { return new(keyedlockAdapter) }},
	{"naive", func() benchLocker { return &naiveMap{locks: map[string]*sync.Mutex{}} }},
}

// BenchmarkLock compares Lock+Unlock pairs with the naive map of mutexes.
// The naive map keeps every key forever (it never frees memory), which
// flatters it in parallel-distinct once all keys exist; see
// TestIdleKeysReturnMemory for the memory side.
func BenchmarkLock(b *testing.B) {
	const numKeys = 1 << 16
	keys := make([]string, numKeys)
	for i := range keys {
		keys[i] = "channel-" + strconv.Itoa(i*7919)
	}
	for _, impl := range benchImpls {
		b.Run("uncontended/"+impl.name, func(b *testing.B) {
			l := impl.make()
			b.ReportAllocs()
			for b.Loop() {
				l.Lock("channel-42")
				l.Unlock("channel-42")
			}
		})
	}
	for _, impl := range benchImpls {
		b.Run("parallel-distinct/"+impl.name, func(b *testing.B) {
			l := impl.make()
			var next atomic.Uint64
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				i := next.Add(1) * 0x9E3779B9
				for pb.Next() {
					k := keys[i%numKeys]
					l.Lock(k)
					l.Unlock(k)
					i++
				}
			})
		})
	}
	for _, impl := range benchImpls {
		b.Run("parallel-same/"+impl.name, func(b *testing.B) {
			l := impl.make()
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					l.Lock("channel-42")
					l.Unlock("channel-42")
				}
			})
		})
	}
}

// BenchmarkContendedCancelableContext measures the hand-off path with a
// context that can end (the usual case in servers), which registers a
// context.AfterFunc per wait.
func BenchmarkContendedCancelableContext(b *testing.B) {
	var m keyedlock.Map[string]
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := m.Lock(ctx, "k"); err != nil {
				b.Error(err)
				return
			}
			m.Unlock("k")
		}
	})
}

// BenchmarkStatus measures the queue-feedback read.
func BenchmarkStatus(b *testing.B) {
	var m keyedlock.Map[string]
	if !m.TryLock("k") {
		b.Fatal("TryLock failed")
	}
	b.ReportAllocs()
	for b.Loop() {
		if !m.Status("k").Held {
			b.Fatal("key not held")
		}
	}
	m.Unlock("k")
}
