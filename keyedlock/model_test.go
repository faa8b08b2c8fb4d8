package keyedlock_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"pgregory.net/rapid"

	"github.com/steadfast-go/steadfast/keyedlock"
)

// client is one Lock call made by the state machine.
type client struct {
	id     int
	key    string
	cancel context.CancelFunc
	res    <-chan error
	done   bool // res has been received from
}

// returned reports whether c's Lock call has returned, without blocking.
func (c *client) returned() (error, bool) {
	select {
	case err := <-c.res:
		c.done = true
		return err, true
	default:
		return nil, false
	}
}

// lockMachine checks a Map against a plain model: per key, who holds it
// and the FIFO queue of waiting clients.
type lockMachine struct {
	t      testing.TB
	m      *keyedlock.Map[string]
	keys   []string
	holder map[string]int       // key -> holding client id (absent: free)
	queue  map[string][]*client // key -> waiting clients, oldest first
	nextID int

	acquires, contended, canceled uint64
}

func newLockMachine(t testing.TB, shards int) *lockMachine {
	return &lockMachine{
		t: t,
		// One shard puts every key in the same shard, so the inline slots
		// fill up and the overflow map is exercised too.
		m:      keyedlock.New[string](keyedlock.WithShards(shards)),
		keys:   []string{"a", "b", "c", "d", "e"},
		holder: map[string]int{},
		queue:  map[string][]*client{},
	}
}

func (sm *lockMachine) newID() int { sm.nextID++; return sm.nextID }

// Lock calls Lock on a random key: it must return at once if the key is
// free, or queue behind the existing waiters if it is held.
func (sm *lockMachine) Lock(t *rapid.T) {
	key := rapid.SampledFrom(sm.keys).Draw(t, "key")
	ctx, cancel := context.WithCancel(context.Background())
	c := &client{id: sm.newID(), key: key, cancel: cancel}
	c.res = lockAsync(sm.m, ctx, key)
	if _, held := sm.holder[key]; !held {
		if err := await(t, "Lock of a free key", c.res); err != nil {
			t.Fatalf("Lock(%q) on a free key: %v", key, err)
		}
		cancel()
		sm.holder[key] = c.id
		sm.acquires++
		return
	}
	want := len(sm.queue[key]) + 1
	waitUntil(sm.t, fmt.Sprintf("%d waiters on %q", want, key), func() bool { return sm.m.Status(key).Waiters == want })
	sm.queue[key] = append(sm.queue[key], c)
	sm.contended++
}

// TryLock succeeds exactly when the model says the key is free.
func (sm *lockMachine) TryLock(t *rapid.T) {
	key := rapid.SampledFrom(sm.keys).Draw(t, "key")
	_, held := sm.holder[key]
	if got := sm.m.TryLock(key); got == held {
		t.Fatalf("TryLock(%q) = %v, model says held = %v", key, got, held)
	}
	if !held {
		sm.holder[key] = sm.newID()
		sm.acquires++
	}
}

// Unlock releases a held key: the oldest waiter, and only it, must get it.
func (sm *lockMachine) Unlock(t *rapid.T) {
	held := sm.heldKeys()
	if len(held) == 0 {
		t.Skip("nothing held")
	}
	key := rapid.SampledFrom(held).Draw(t, "key")
	sm.m.Unlock(key)
	q := sm.queue[key]
	if len(q) == 0 {
		delete(sm.holder, key)
		return
	}
	next := q[0]
	// The key must go to the oldest waiter and to no one else.
	var got *client
	var err error
	waitUntil(sm.t, "a waiter to get the key", func() bool {
		for _, c := range q {
			if e, ok := c.returned(); ok {
				got, err = c, e
				return true
			}
		}
		return false
	})
	if got != next || err != nil {
		t.Fatalf("Unlock(%q) woke waiter %d (Lock returned %v), want the oldest waiter %d", key, got.id, err, next.id)
	}
	next.cancel()
	sm.queue[key] = q[1:]
	sm.holder[key] = next.id
	sm.acquires++
}

// Cancel ends the context of a random waiter: it must return
// context.Canceled and leave the others queued in order.
func (sm *lockMachine) Cancel(t *rapid.T) {
	var waiting []*client
	for _, k := range sm.keys {
		waiting = append(waiting, sm.queue[k]...)
	}
	if len(waiting) == 0 {
		t.Skip("nobody waiting")
	}
	c := rapid.SampledFrom(waiting).Draw(t, "waiter")
	c.cancel()
	c.done = true
	// The promise holds the moment cancel returns, before the waiter's
	// goroutine has run: it is no longer counted anywhere.
	sm.queue[c.key] = slices.DeleteFunc(sm.queue[c.key], func(o *client) bool { return o == c })
	sm.canceled++
	sm.Check(t)
	if err := await(t, "canceled waiter", c.res); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled waiter %d on %q returned %v", c.id, c.key, err)
	}
}

// UnlockFree must panic for a key the model says is free.
func (sm *lockMachine) UnlockFree(t *rapid.T) {
	key := rapid.SampledFrom(sm.keys).Draw(t, "key")
	if _, held := sm.holder[key]; held {
		t.Skip("key is held")
	}
	defer func() {
		if r := recover(); r != "keyedlock: unlock of unlocked key" {
			t.Fatalf("Unlock(%q) of a free key: recovered %v", key, r)
		}
	}()
	sm.m.Unlock(key)
}

func (sm *lockMachine) heldKeys() []string {
	var held []string
	for _, k := range sm.keys {
		if _, ok := sm.holder[k]; ok {
			held = append(held, k)
		}
	}
	return held
}

// Check compares every key's state and the counters with the model, and
// that no waiter has returned early.
func (sm *lockMachine) Check(t *rapid.T) {
	waiters := 0
	for _, k := range sm.keys {
		_, held := sm.holder[k]
		want := keyedlock.Status{Held: held, Waiters: len(sm.queue[k])}
		if got := sm.m.Status(k); got != want {
			t.Fatalf("Status(%q) = %+v, model %+v", k, got, want)
		}
		for _, c := range sm.queue[k] {
			if err, ok := c.returned(); ok {
				t.Fatalf("waiter %d on %q returned %v out of turn", c.id, k, err)
			}
		}
		waiters += len(sm.queue[k])
	}
	st := sm.m.Stats()
	if st.Held != len(sm.holder) || st.Waiters != waiters || st.Acquires != sm.acquires ||
		st.Contended != sm.contended || st.Canceled != sm.canceled {
		t.Fatalf("Stats = %+v, model held %d waiting %d acquires %d contended %d canceled %d",
			st, len(sm.holder), waiters, sm.acquires, sm.contended, sm.canceled)
	}
}

// drain ends every waiter so no goroutine outlives the test case.
func (sm *lockMachine) drain() {
	for _, q := range sm.queue {
		for _, c := range q {
			c.cancel()
			if !c.done {
				<-c.res
			}
		}
	}
}

func TestModel(t *testing.T) {
	for _, shards := range []int{1, keyedlock.DefaultShards} {
		t.Run(fmt.Sprintf("shards=%d", shards), func(t *testing.T) {
			rapid.Check(t, func(rt *rapid.T) {
				sm := newLockMachine(t, shards)
				defer sm.drain()
				rt.Repeat(rapid.StateMachineActions(sm))
			})
		})
	}
}
