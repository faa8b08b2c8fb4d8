// Package keyedlock_test compares steadfast's keyedlock with the keyed locks
// Go services commonly use instead: github.com/moby/locker (one global mutex
// over a refcounted map) and k8s.io/utils/keymutex.NewHashed (a fixed array
// of mutexes that keys are hashed onto).
//
// Run from the bench module:
//
//	go test -run '^$' -bench BenchmarkKeyedLock -count 6 ./keyedlock/ | tee new.txt
//	go tool benchstat new.txt
package keyedlock_test

import (
	"context"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/moby/locker"
	"github.com/steadfast-go/steadfast/keyedlock"
	"k8s.io/utils/keymutex"
)

// locker is the common shape of the implementations under test.
type keyLocker interface {
	Lock(key string)
	Unlock(key string)
}

type steadfast struct{ m keyedlock.Map[string] }

func (s *steadfast) Lock(key string) {
	// context.Background never ends, so Lock cannot fail here.
	_ = s.m.Lock(context.Background(), key)
}
func (s *steadfast) Unlock(key string) { s.m.Unlock(key) }

type moby struct{ l *locker.Locker }

func (m moby) Lock(key string)   { m.l.Lock(key) }
func (m moby) Unlock(key string) { _ = m.l.Unlock(key) }

type k8s struct{ km keymutex.KeyMutex }

func (k k8s) Lock(key string)   { k.km.LockKey(key) }
func (k k8s) Unlock(key string) { _ = k.km.UnlockKey(key) }

var impls = []struct {
	name string
	make func() keyLocker
}{
	{"steadfast", func() keyLocker { return new(steadfast) }},
	{"moby", func() keyLocker { return moby{locker.New()} }},
	// NewHashed(0) sizes the mutex array to GOMAXPROCS, as its doc suggests.
	{"k8s", func() keyLocker { return k8s{keymutex.NewHashed(0)} }},
}

const numKeys = 1 << 20 // ≈1M distinct keys

var (
	keysOnce sync.Once
	keys     []string
)

// randomKeys returns 1<<20 distinct random keys that look like chat channel
// ids, generated once per process so that generating them is not measured.
func randomKeys() []string {
	keysOnce.Do(func() {
		r := rand.New(rand.NewPCG(1, 2))
		seen := make(map[uint64]struct{}, numKeys)
		keys = make([]string, 0, numKeys)
		for len(keys) < numKeys {
			v := r.Uint64()
			if _, dup := seen[v]; dup {
				continue
			}
			seen[v] = struct{}{}
			keys = append(keys, "channel-"+strconv.FormatUint(v, 36))
		}
	})
	return keys
}

func BenchmarkKeyedLock(b *testing.B) {
	keys := randomKeys()
	b.Run("uncontended", func(b *testing.B) {
		for _, impl := range impls {
			b.Run(impl.name, func(b *testing.B) {
				l := impl.make()
				const key = "channel-42"
				b.ReportAllocs()
				for b.Loop() {
					l.Lock(key)
					l.Unlock(key)
				}
			})
		}
	})
	b.Run("parallel-distinct", func(b *testing.B) {
		for _, impl := range impls {
			b.Run(impl.name, func(b *testing.B) {
				l := impl.make()
				var next atomic.Uint64
				b.ReportAllocs()
				b.ResetTimer()
				b.RunParallel(func(pb *testing.PB) {
					// Each goroutine walks the key set from its own random
					// offset, so goroutines rarely meet on a key and the
					// index costs one add and one mask.
					i := next.Add(1) * 0x9E3779B97F4A7C15 % numKeys
					for pb.Next() {
						k := keys[i&(numKeys-1)]
						l.Lock(k)
						l.Unlock(k)
						i++
					}
				})
			})
		}
	})
	b.Run("parallel-same", func(b *testing.B) {
		for _, impl := range impls {
			b.Run(impl.name, func(b *testing.B) {
				l := impl.make()
				const key = "channel-42"
				b.ReportAllocs()
				b.RunParallel(func(pb *testing.PB) {
					for pb.Next() {
						l.Lock(key)
						l.Unlock(key)
					}
				})
			})
		}
	})
}
