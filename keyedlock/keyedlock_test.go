package keyedlock_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
	"weak"

	"go.uber.org/goleak"

	"github.com/steadfast-go/steadfast/keyedlock"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fataler is the part of testing.TB and *rapid.T that the helpers use.
type fataler interface {
	Helper()
	Fatalf(format string, args ...any)
}

// waitUntil polls cond, yielding the processor between polls, until it
// holds. It synchronizes on observable state (usually Status), never on
// elapsed time; the deadline only turns a hang into a failure.
func waitUntil(t fataler, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		runtime.Gosched()
	}
}

// lockAsync starts Lock(ctx, key) in a new goroutine and returns a channel
// that receives its result.
func lockAsync[K comparable](m *keyedlock.Map[K], ctx context.Context, key K) <-chan error {
	res := make(chan error, 1)
	go func() { res <- m.Lock(ctx, key) }()
	return res
}

// enqueue starts a Lock call for a held key and waits until it is queued
// behind the n-1 waiters already there, so that call order is
// deterministic without sleeping.
func enqueue[K comparable](t testing.TB, m *keyedlock.Map[K], ctx context.Context, key K, n int) <-chan error {
	t.Helper()
	res := lockAsync(m, ctx, key)
	waitUntil(t, fmt.Sprintf("%d waiters on %v", n, key), func() bool { return m.Status(key).Waiters == n })
	return res
}

// await receives a Lock result. The deadline only turns a lost wake-up
// into a test failure instead of a hang.
func await(t fataler, what string, res <-chan error) error {
	t.Helper()
	select {
	case err := <-res:
		return err
	case <-time.After(20 * time.Second):
		t.Fatalf("%s never returned from Lock", what)
		return nil
	}
}

func mustNotReturn(t testing.TB, name string, res <-chan error) {
	t.Helper()
	select {
	case err := <-res:
		t.Fatalf("%s returned %v while it should still be waiting", name, err)
	default:
	}
}

func TestZeroValueLocksAndUnlocks(t *testing.T) {
	var m keyedlock.Map[string]
	if st := m.Status("a"); st != (keyedlock.Status{}) {
		t.Fatalf("Status of unused zero Map = %+v, want zero", st)
	}
	if err := m.Lock(t.Context(), "a"); err != nil {
		t.Fatal(err)
	}
	if st := m.Status("a"); !st.Held || st.Waiters != 0 {
		t.Fatalf("Status after Lock = %+v, want held with no waiters", st)
	}
	if m.TryLock("a") {
		t.Fatal("TryLock succeeded on a held key")
	}
	if !m.TryLock("b") {
		t.Fatal("TryLock failed on a free key while another key is held")
	}
	m.Unlock("a")
	m.Unlock("b")
	if st := m.Status("a"); st.Held {
		t.Fatalf("Status after Unlock = %+v, want free", st)
	}
	if got := m.Stats(); got.Acquires != 2 || got.Held != 0 || got.Contended != 0 {
		t.Fatalf("Stats = %+v, want 2 acquires, nothing held, no contention", got)
	}
}

// TestFIFOManyWaiters proves guarantee 1: callers acquire a key in the
// order in which they called Lock. Each waiter is started only after the
// previous one is queued, so the call order is known; the critical
// section appends to a plain slice, so -race also checks mutual exclusion.
func TestFIFOManyWaiters(t *testing.T) {
	const n = 200
	m := keyedlock.New[string]()
	ctx := t.Context()
	if err := m.Lock(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	var order []int // guarded by the key "k"
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if err := m.Lock(ctx, "k"); err != nil {
				t.Error(err)
				return
			}
			order = append(order, i)
			m.Unlock("k")
		})
		waitUntil(t, fmt.Sprintf("%d waiters", i+1), func() bool { return m.Status("k").Waiters == i+1 })
		// TryLock must not jump the queue.
		if m.TryLock("k") {
			t.Fatal("TryLock acquired a key that has waiters")
		}
	}
	m.Unlock("k")
	wg.Wait()
	if len(order) != n {
		t.Fatalf("%d of %d waiters acquired the key", len(order), n)
	}
	for i, got := range order {
		if got != i {
			t.Fatalf("acquisition %d went to caller %d, want %d (order %v)", i, got, i, order[:i+1])
		}
	}
	if st := m.Stats(); st.Contended != n || st.Acquires != n+1 || st.Held != 0 || st.Waiters != 0 {
		t.Fatalf("Stats = %+v, want %d contended, %d acquires, nothing held", st, n, n+1)
	}
}

// TestMutualExclusionManyKeys hammers a few keys from many goroutines: no
// two holders of one key overlap (checked by a counter and by -race on the
// plain per-key totals), and every increment is kept.
func TestMutualExclusionManyKeys(t *testing.T) {
	const (
		keys       = 4
		goroutines = 16
		iters      = 300
	)
	var m keyedlock.Map[int]
	var inside [keys]atomic.Int32
	var total [keys]int // total[k] guarded by key k
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range iters {
				k := (g + i) % keys
				err := m.Do(t.Context(), k, func() error {
					if c := inside[k].Add(1); c != 1 {
						return fmt.Errorf("key %d held by %d callers at once", k, c)
					}
					total[k]++
					inside[k].Add(-1)
					return nil
				})
				if err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	sum := 0
	for _, v := range total {
		sum += v
	}
	if sum != goroutines*iters {
		t.Fatalf("lost updates: %d of %d", sum, goroutines*iters)
	}
	if st := m.Stats(); st.Held != 0 || st.Waiters != 0 || st.Acquires != goroutines*iters {
		t.Fatalf("Stats = %+v after all work finished", st)
	}
}

// TestDifferentKeysNeverWait proves guarantee 2: while one key is held
// (with a queue behind it), other keys, even ones in the same shard, are
// locked and unlocked without waiting. The other keys are worked on from a
// separate goroutine with a deadline, so that an implementation that keeps
// a shard (or global) lock while a caller waits fails here instead of
// hanging the test binary.
func TestDifferentKeysNeverWait(t *testing.T) {
	for _, shards := range []int{1, keyedlock.DefaultShards} {
		t.Run(strconv.Itoa(shards), func(t *testing.T) {
			m := keyedlock.New[string](keyedlock.WithShards(shards))
			ctx := t.Context()
			if err := m.Lock(ctx, "busy"); err != nil {
				t.Fatal(err)
			}
			waiter := enqueue(t, m, ctx, "busy", 1)
			others := make(chan error, 1)
			go func() {
				for i := range 100 {
					k := "other-" + strconv.Itoa(i)
					if !m.TryLock(k) {
						others <- fmt.Errorf("TryLock(%q) failed while only %q is held", k, "busy")
						return
					}
				}
				for i := range 100 {
					k := "other-" + strconv.Itoa(i)
					if err := m.Lock(ctx, k+"-b"); err != nil {
						others <- err
						return
					}
					m.Unlock(k + "-b")
					m.Unlock(k)
				}
				others <- nil
			}()
			if err := await(t, "work on other keys", others); err != nil {
				t.Fatal(err)
			}
			mustNotReturn(t, "waiter", waiter)
			m.Unlock("busy")
			if err := await(t, "waiter", waiter); err != nil {
				t.Fatal(err)
			}
			m.Unlock("busy")
		})
	}
}

// TestWaitTimeSaturates: the cumulative wait time in Stats pins at the
// largest Duration instead of wrapping around to a negative value. Two
// waiters each queue for 200 (fake) years, 400 years in total, more than
// an int64 of nanoseconds holds.
func TestWaitTimeSaturates(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		m := keyedlock.New[string]()
		ctx := t.Context()
		if err := m.Lock(ctx, "k"); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for range 2 {
			wg.Go(func() {
				if err := m.Lock(ctx, "k"); err != nil {
					t.Error(err)
					return
				}
				m.Unlock("k")
			})
		}
		synctest.Wait()
		const long = 200 * 365 * 24 * time.Hour
		time.Sleep(long)
		m.Unlock("k")
		wg.Wait()
		if got := m.Stats().WaitTime; got != math.MaxInt64 {
			t.Fatalf("WaitTime = %v after 2 waits of %v, want saturated at %v", got, long, time.Duration(math.MaxInt64))
		}
	})
}

// TestCancelMiddleWaiter proves guarantee 3: a waiter whose context ends
// returns ctx.Err(), holds nothing, and the others keep their order.
func TestCancelMiddleWaiter(t *testing.T) {
	m := keyedlock.New[string]()
	ctx := t.Context()
	if err := m.Lock(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	const n = 5
	const victim = 2
	cause := errors.New("user deleted the message")
	victimCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	res := make([]<-chan error, n)
	for i := range n {
		c := ctx
		if i == victim {
			c = victimCtx
		}
		res[i] = enqueue(t, m, c, "k", i+1)
	}
	cancel(cause)
	if err := await(t, "canceled waiter", res[victim]); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled waiter returned %v, want context.Canceled", err)
	}
	if got := context.Cause(victimCtx); got != cause {
		t.Fatalf("context.Cause = %v, want %v", got, cause)
	}
	if st := m.Status("k"); !st.Held || st.Waiters != n-1 {
		t.Fatalf("Status after cancel = %+v, want held with %d waiters", st, n-1)
	}
	for i := range n {
		if i != victim {
			mustNotReturn(t, fmt.Sprintf("waiter %d", i), res[i])
		}
	}
	// Hand the key along the queue: each remaining waiter must get it in
	// call order, and nobody else may wake meanwhile.
	m.Unlock("k")
	for i := range n {
		if i == victim {
			continue
		}
		if err := await(t, fmt.Sprintf("waiter %d", i), res[i]); err != nil {
			t.Fatalf("waiter %d: %v", i, err)
		}
		for j := i + 1; j < n; j++ {
			if j != victim {
				mustNotReturn(t, fmt.Sprintf("waiter %d", j), res[j])
			}
		}
		m.Unlock("k")
	}
	if st := m.Stats(); st.Canceled != 1 || st.Held != 0 || st.Waiters != 0 || st.Acquires != n {
		t.Fatalf("Stats = %+v, want 1 canceled, %d acquires, nothing held", st, n)
	}
}

// TestLockWithEndedContext: a context that already ended never acquires,
// even a free key.
func TestLockWithEndedContext(t *testing.T) {
	var m keyedlock.Map[string]
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := m.Lock(ctx, "free"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Lock with canceled ctx = %v, want context.Canceled", err)
	}
	if st := m.Status("free"); st.Held {
		t.Fatal("Lock with a canceled context left the key held")
	}
	called := false
	if err := m.Do(ctx, "free", func() error { called = true; return nil }); !errors.Is(err, context.Canceled) || called {
		t.Fatalf("Do with canceled ctx = %v (fn called: %v), want context.Canceled and no call", err, called)
	}
}

// TestLockTimeoutAndWaitStats checks, on a fake clock, that a waiter with
// a deadline gives up exactly at it, and that Stats and the wait hook see
// exact wait times.
func TestLockTimeoutAndWaitStats(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var hooked []time.Duration // appended only by Lock callers, read after wg.Wait
		var hookMu sync.Mutex
		m := keyedlock.New[string](keyedlock.WithWaitHook(func(d time.Duration) {
			hookMu.Lock()
			hooked = append(hooked, d)
			hookMu.Unlock()
		}))
		ctx := t.Context()
		if err := m.Lock(ctx, "k"); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		wg.Go(func() {
			tctx, cancel := context.WithTimeout(ctx, time.Second)
			defer cancel()
			start := time.Now()
			if err := m.Lock(tctx, "k"); !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Lock with 1s timeout = %v, want DeadlineExceeded", err)
			}
			if d := time.Since(start); d != time.Second {
				t.Errorf("timed-out Lock returned after %v, want 1s", d)
			}
		})
		wg.Go(func() {
			if err := m.Lock(ctx, "k"); err != nil {
				t.Error(err)
				return
			}
			m.Unlock("k")
		})
		synctest.Wait()
		if st := m.Status("k"); st.Waiters != 2 {
			t.Fatalf("Status = %+v, want 2 waiters", st)
		}
		time.Sleep(3 * time.Second) // fake clock: the timed-out waiter leaves after 1s
		m.Unlock("k")
		wg.Wait()
		st := m.Stats()
		if st.Contended != 2 || st.Canceled != 1 || st.Acquires != 2 || st.WaitTime != 4*time.Second {
			t.Fatalf("Stats = %+v, want 2 contended, 1 canceled, 2 acquires, 4s waited", st)
		}
		hookMu.Lock()
		defer hookMu.Unlock()
		if len(hooked) != 2 || hooked[0] != time.Second || hooked[1] != 3*time.Second {
			t.Fatalf("hook saw %v, want [1s 3s]", hooked)
		}
	})
}

// TestCancelRacesHandoff runs the race between Unlock handing the key to a
// waiter and that waiter's context ending, many times. Whatever wins, the
// next waiter must get the key (no lost wake-up) and nothing stays held.
func TestCancelRacesHandoff(t *testing.T) {
	iters := 2000
	if testing.Short() {
		iters = 200
	}
	m := keyedlock.New[int]()
	ctx := t.Context()
	for i := range iters {
		if err := m.Lock(ctx, i); err != nil {
			t.Fatal(err)
		}
		actx, cancel := context.WithCancel(ctx)
		a := enqueue(t, m, actx, i, 1)
		b := enqueue(t, m, ctx, i, 2)
		var wg sync.WaitGroup
		wg.Go(cancel)
		wg.Go(func() { m.Unlock(i) })
		wg.Wait()
		if err := await(t, "a", a); err == nil {
			// a won the key before its context ended: it must release it.
			mustNotReturn(t, "b", b)
			m.Unlock(i)
		} else if !errors.Is(err, context.Canceled) {
			t.Fatalf("iteration %d: a returned %v", i, err)
		}
		if err := await(t, "b", b); err != nil {
			t.Fatalf("iteration %d: b returned %v", i, err)
		}
		m.Unlock(i)
		if st := m.Status(i); st != (keyedlock.Status{}) {
			t.Fatalf("iteration %d: Status = %+v, want idle", i, st)
		}
	}
	if st := m.Stats(); st.Held != 0 || st.Waiters != 0 {
		t.Fatalf("Stats = %+v, want nothing held or waiting", st)
	}
}

// TestTryLockNeverBlocks: TryLock on a held key returns false at once.
func TestTryLockNeverBlocks(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var m keyedlock.Map[string]
		if !m.TryLock("k") {
			t.Fatal("TryLock on a free key failed")
		}
		start := time.Now()
		if m.TryLock("k") {
			t.Fatal("TryLock on a held key succeeded")
		}
		if d := time.Since(start); d != 0 {
			t.Fatalf("TryLock took %v of fake time", d)
		}
		m.Unlock("k")
	})
}

// TestStatusShowsQueue proves guarantee 4: Status reports holder and queue
// length as they change, which is what a "waiting" indicator needs.
func TestStatusShowsQueue(t *testing.T) {
	m := keyedlock.New[string]()
	ctx := t.Context()
	if st := m.Status("k"); st.Held || st.Waiters != 0 {
		t.Fatalf("idle key: %+v", st)
	}
	if err := m.Lock(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	a := enqueue(t, m, ctx, "k", 1)
	b := enqueue(t, m, ctx, "k", 2)
	if st := m.Stats(); st.Held != 1 || st.Waiters != 2 {
		t.Fatalf("Stats gauges = %+v, want 1 held, 2 waiting", st)
	}
	m.Unlock("k")
	if err := await(t, "a", a); err != nil {
		t.Fatal(err)
	}
	if st := m.Status("k"); !st.Held || st.Waiters != 1 {
		t.Fatalf("after one hand-off: %+v, want held with 1 waiter", st)
	}
	m.Unlock("k")
	if err := await(t, "b", b); err != nil {
		t.Fatal(err)
	}
	m.Unlock("k")
	if st := m.Status("k"); st.Held || st.Waiters != 0 {
		t.Fatalf("after all released: %+v", st)
	}
}

// TestUnlockOfUnlockedKeyPanics proves guarantee 6 (first half).
func TestUnlockOfUnlockedKeyPanics(t *testing.T) {
	cases := map[string]func(m *keyedlock.Map[string]){
		"never locked": func(m *keyedlock.Map[string]) {},
		"already unlocked": func(m *keyedlock.Map[string]) {
			if !m.TryLock("k") {
				t.Fatal("TryLock failed")
			}
			m.Unlock("k")
		},
		"other key held": func(m *keyedlock.Map[string]) {
			if !m.TryLock("other") {
				t.Fatal("TryLock failed")
			}
		},
	}
	for name, setup := range cases {
		t.Run(name, func(t *testing.T) {
			var m keyedlock.Map[string]
			setup(&m)
			defer func() {
				r := recover()
				if r != "keyedlock: unlock of unlocked key" {
					t.Fatalf("recovered %v, want the keyedlock unlock panic", r)
				}
			}()
			m.Unlock("k")
		})
	}
}

type tenantChannel struct {
	Tenant  string
	Channel int64
}

// TestGenericKeys proves guarantee 6 (second half): any comparable key
// type works, with equal keys sharing a lock and distinct keys not.
func TestGenericKeys(t *testing.T) {
	t.Run("string", func(t *testing.T) { checkKeyType(t, "a", "b") })
	t.Run("int", func(t *testing.T) { checkKeyType(t, 1, 2) })
	t.Run("struct", func(t *testing.T) {
		checkKeyType(t, tenantChannel{"acme", 1}, tenantChannel{"acme", 2})
	})
	t.Run("interface", func(t *testing.T) { checkKeyType[any](t, "a", 1) })
	t.Run("pointer", func(t *testing.T) {
		a, b := new(int), new(int)
		checkKeyType(t, a, b)
	})
}

func checkKeyType[K comparable](t *testing.T, a, b K) {
	var m keyedlock.Map[K]
	if !m.TryLock(a) {
		t.Fatal("TryLock(a) failed on a free key")
	}
	copyOfA := a
	if m.TryLock(copyOfA) {
		t.Fatal("an equal key was not locked")
	}
	if !m.TryLock(b) {
		t.Fatal("a distinct key was locked")
	}
	m.Unlock(a)
	m.Unlock(b)
	if m.Status(a).Held || m.Status(b).Held {
		t.Fatal("keys still held after Unlock")
	}
}

// TestDoUnlocksWhenFnPanics proves guarantee 8: Do cannot leave a key
// locked, even if fn panics; the panic reaches the caller.
func TestDoUnlocksWhenFnPanics(t *testing.T) {
	var m keyedlock.Map[string]
	func() {
		defer func() {
			if r := recover(); r != "boom" {
				t.Fatalf("recovered %v, want boom", r)
			}
		}()
		_ = m.Do(t.Context(), "k", func() error { panic("boom") })
	}()
	if m.Status("k").Held {
		t.Fatal("key still held after fn panicked")
	}
	want := errors.New("agent failed")
	if err := m.Do(t.Context(), "k", func() error { return want }); err != want {
		t.Fatalf("Do returned %v, want fn's error", err)
	}
	if m.Status("k").Held {
		t.Fatal("key still held after Do returned")
	}
}

// TestWaitHookPanicReleasesKey: a panicking hook cannot leave a key locked.
func TestWaitHookPanicReleasesKey(t *testing.T) {
	m := keyedlock.New[string](keyedlock.WithWaitHook(func(time.Duration) { panic("hook") }))
	ctx := t.Context()
	if err := m.Lock(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	recovered := make(chan any, 1)
	go func() {
		defer func() { recovered <- recover() }()
		_ = m.Lock(ctx, "k")
	}()
	waitUntil(t, "a waiter", func() bool { return m.Status("k").Waiters == 1 })
	m.Unlock("k")
	if r := <-recovered; r != "hook" {
		t.Fatalf("recovered %v, want the hook's panic", r)
	}
	if st := m.Status("k"); st.Held {
		t.Fatalf("key still held after the hook panicked: %+v", st)
	}
}

// TestWaitHookRunsOutsideLocks proves guarantee 7's "outside any internal
// lock": the hook calls back into the Map, on the same key and (with one
// shard) the same shard mutex, for a waiter that acquired the key and for
// one whose context ended. Were the hook called under an internal mutex,
// these calls would deadlock and the Lock calls below would never return.
func TestWaitHookRunsOutsideLocks(t *testing.T) {
	var m *keyedlock.Map[string]
	var seen []keyedlock.Status // appended by Lock callers, one at a time
	var seenMu sync.Mutex
	m = keyedlock.New[string](keyedlock.WithShards(1), keyedlock.WithWaitHook(func(time.Duration) {
		st := m.Status("k")
		_ = m.Stats()
		if m.TryLock("other") {
			m.Unlock("other")
		}
		seenMu.Lock()
		seen = append(seen, st)
		seenMu.Unlock()
	}))
	ctx := t.Context()
	if err := m.Lock(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	canceled := enqueue(t, m, cctx, "k", 1)
	acquirer := enqueue(t, m, ctx, "k", 2)
	cancel()
	if err := await(t, "canceled waiter", canceled); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled waiter: %v", err)
	}
	m.Unlock("k")
	if err := await(t, "waiter", acquirer); err != nil {
		t.Fatal(err)
	}
	m.Unlock("k")
	seenMu.Lock()
	defer seenMu.Unlock()
	if len(seen) != 2 || !seen[0].Held || !seen[1].Held || seen[1].Waiters != 0 {
		t.Fatalf("hook saw %+v, want two calls, each seeing the key held", seen)
	}
}

// TestStatusNeverInconsistent hammers a few keys while polling Status: a
// key with waiters is always held (waiters never pile up on a free key,
// which would mean a lost hand-off), and Stats gauges never go negative.
func TestStatusNeverInconsistent(t *testing.T) {
	var m keyedlock.Map[int]
	ctx := t.Context()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Go(func() {
			for i := range 2000 {
				k := (g + i) % 2
				if err := m.Lock(ctx, k); err != nil {
					t.Error(err)
					return
				}
				m.Unlock(k)
			}
		})
	}
	polled := make(chan error, 1)
	go func() {
		for {
			select {
			case <-stop:
				polled <- nil
				return
			default:
			}
			for k := range 2 {
				if st := m.Status(k); st.Waiters > 0 && !st.Held {
					polled <- fmt.Errorf("key %d: %d waiters but not held", k, st.Waiters)
					return
				}
			}
			if st := m.Stats(); st.Held < 0 || st.Waiters < 0 || st.Held > 2 {
				polled <- fmt.Errorf("Stats gauges out of range: %+v", st)
				return
			}
		}
	}()
	wg.Wait()
	close(stop)
	if err := <-polled; err != nil {
		t.Fatal(err)
	}
	if st := m.Stats(); st.Held != 0 || st.Waiters != 0 || st.Acquires != 4*2000 {
		t.Fatalf("Stats = %+v after all work finished", st)
	}
}

// TestIdleKeysReturnMemory proves guarantee 5: after 1,000,000 distinct
// keys were all held and then released, and again after a million more
// were locked and released one by one, the live heap is back within 64 KiB
// of what it was before the Map existed.
func TestIdleKeysReturnMemory(t *testing.T) {
	const n = 1_000_000
	keys := make([]string, n)
	for i := range keys {
		keys[i] = "channel-" + strconv.Itoa(i)
	}
	base := liveHeap()
	m := keyedlock.New[string]()

	for _, k := range keys {
		if !m.TryLock(k) {
			t.Fatalf("TryLock(%q) failed", k)
		}
	}
	peak := liveHeap()
	for _, k := range keys {
		m.Unlock(k)
	}
	after := liveHeap()
	t.Logf("heap: base %d, all held %d (+%d), all released %d (%+d)", base, peak, int64(peak)-int64(base), after, int64(after)-int64(base))
	if grew := int64(after) - int64(base); grew > 64<<10 {
		t.Fatalf("after releasing %d keys the heap is %d bytes above baseline, want ≤ 64 KiB", n, grew)
	}

	ctx := t.Context()
	for _, k := range keys {
		if err := m.Lock(ctx, k); err != nil {
			t.Fatal(err)
		}
		m.Unlock(k)
	}
	after = liveHeap()
	if grew := int64(after) - int64(base); grew > 64<<10 {
		t.Fatalf("after locking and releasing %d keys one by one the heap is %d bytes above baseline, want ≤ 64 KiB", n, grew)
	}
	if st := m.Stats(); st.Held != 0 || st.Acquires != 2*n {
		t.Fatalf("Stats = %+v", st)
	}
	runtime.KeepAlive(m)
	runtime.KeepAlive(keys)
}

// TestIdleKeyIsNotRetained: once a key is idle the Map keeps no reference
// to it, whether it sat in a shard's inline slots or in its overflow map,
// so a pointer key (or anything a key refers to) can be collected.
func TestIdleKeyIsNotRetained(t *testing.T) {
	type session struct{ _ [1 << 10]byte } // big enough to see if it is retained
	for _, held := range []int{1, 3, 50} { // 3 and 50 overflow the inline slots of one shard
		t.Run(strconv.Itoa(held), func(t *testing.T) {
			m := keyedlock.New[*session](keyedlock.WithShards(1))
			weaks := make([]weak.Pointer[session], held)
			func() {
				keys := make([]*session, held)
				for i := range keys {
					keys[i] = new(session)
					weaks[i] = weak.Make(keys[i])
					if !m.TryLock(keys[i]) {
						t.Fatal("TryLock of a fresh key failed")
					}
				}
				for _, k := range keys {
					m.Unlock(k)
				}
			}()
			runtime.GC()
			for i, w := range weaks {
				if w.Value() != nil {
					t.Fatalf("key %d of %d is still reachable after it went idle", i, held)
				}
			}
			runtime.KeepAlive(m)
		})
	}
}

func liveHeap() uint64 {
	// Two cycles: the first may leave sync.Pool victims and finalizable
	// objects for the second.
	runtime.GC()
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestIncident_TwoMessagesInOneChannelRanAtOnce replays the bot
// incident: two messages arrive in one channel, each handled on its own
// goroutine (as discordgo does). The second must not resume the agent
// session while the first still runs, must see that it is waiting, and the
// two must run in arrival order. A message in another channel is not held
// up meanwhile.
func TestIncident_TwoMessagesInOneChannelRanAtOnce(t *testing.T) {
	var channels keyedlock.Map[string]
	ctx := t.Context()

	type session struct {
		inUse   atomic.Bool
		replies []string // guarded by the channel's key
	}
	sessions := map[string]*session{"general": {}, "random": {}}
	corrupted := make(chan string, 10)
	release := map[string]chan struct{}{"msg-1": make(chan struct{})}
	started := make(chan string, 10)

	handle := func(channel, msg string) error {
		return channels.Do(ctx, channel, func() error {
			s := sessions[channel]
			if !s.inUse.CompareAndSwap(false, true) {
				corrupted <- msg // two runs resumed the same session
			}
			started <- msg
			if gate := release[msg]; gate != nil {
				<-gate // the agent is still thinking
			}
			s.replies = append(s.replies, "reply to "+msg)
			s.inUse.Store(false)
			return nil
		})
	}

	var wg sync.WaitGroup
	wg.Go(func() {
		if err := handle("general", "msg-1"); err != nil {
			t.Error(err)
		}
	})
	if got := <-started; got != "msg-1" {
		t.Fatalf("started %s, want msg-1", got)
	}
	// msg-2 arrives while msg-1's agent run is in progress.
	if st := channels.Status("general"); !st.Held {
		t.Fatal("channel not busy while its agent runs")
	}
	wg.Go(func() {
		if err := handle("general", "msg-2"); err != nil {
			t.Error(err)
		}
	})
	waitUntil(t, "msg-2 queued", func() bool { return channels.Status("general").Waiters == 1 })

	// Another channel proceeds while #general is busy.
	if err := handle("random", "msg-3"); err != nil {
		t.Fatal(err)
	}
	if got := <-started; got != "msg-3" {
		t.Fatalf("started %s while #general was busy, want msg-3", got)
	}

	close(release["msg-1"])
	wg.Wait()
	close(started)
	if got := <-started; got != "msg-2" {
		t.Fatalf("after msg-1, started %s, want msg-2", got)
	}
	close(corrupted)
	for msg := range corrupted {
		t.Errorf("%s resumed a session that was already running", msg)
	}
	if got := sessions["general"].replies; len(got) != 2 || got[0] != "reply to msg-1" || got[1] != "reply to msg-2" {
		t.Fatalf("#general replies = %q, want msg-1 then msg-2", got)
	}
}

// TestWaitersAcrossSynctestBubbles guards against wait state that is
// recycled from one synctest bubble into another or out of it. An earlier
// version pooled per-waiter channels: a channel made in one bubble was
// reused in the next, so synctest.Wait never saw the waiter as blocked, and
// reuse outside a bubble crashed with "select on synctest channel from
// outside bubble". Users test their own code with synctest, so a Map must
// work in any number of bubbles, one after another, and outside them.
func TestWaitersAcrossSynctestBubbles(t *testing.T) {
	contend := func(t *testing.T, m *keyedlock.Map[string], inBubble bool) {
		t.Helper()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		if err := m.Lock(ctx, "k"); err != nil {
			t.Fatalf("Lock: %v", err)
		}
		// One waiter with a cancelable context (it gets a watcher), one
		// without: both kinds of wait state are exercised.
		// Each waiter releases the key as soon as it has it, so the test
		// does not depend on which of the two queued first.
		lockThenUnlock := func(ctx context.Context) <-chan error {
			res := make(chan error, 1)
			go func() {
				err := m.Lock(ctx, "k")
				if err == nil {
					m.Unlock("k")
				}
				res <- err
			}()
			return res
		}
		first := lockThenUnlock(ctx)
		second := lockThenUnlock(context.Background())
		if inBubble {
			synctest.Wait() // returns only once both waiters are durably blocked
		} else {
			waitUntil(t, "2 waiters", func() bool { return m.Status("k").Waiters == 2 })
		}
		if got := m.Status("k"); !got.Held || got.Waiters != 2 {
			t.Fatalf("Status = %+v, want held with 2 waiters", got)
		}
		m.Unlock("k")
		for _, res := range []<-chan error{first, second} {
			if err := <-res; err != nil {
				t.Fatalf("waiter: %v", err)
			}
		}
		if got := m.Status("k"); got.Held || got.Waiters != 0 {
			t.Fatalf("Status after release = %+v, want idle", got)
		}
	}
	shared := keyedlock.New[string]()
	for range 3 {
		synctest.Test(t, func(t *testing.T) {
			contend(t, keyedlock.New[string](), true)
		})
		// Wait state parked inside a bubble must be safe to reuse outside.
		contend(t, shared, false)
	}
}

// TestSteadyStateDoesNotAllocate backs the promise that Lock and Unlock
// allocate nothing at steady state, for one key and for a stream of
// distinct keys (entries are recycled), and that a contended hand-off with
// a context that never ends allocates nothing either.
func TestSteadyStateDoesNotAllocate(t *testing.T) {
	m := keyedlock.New[string]()
	ctx := context.Background()
	if n := testing.AllocsPerRun(1000, func() {
		_ = m.Lock(ctx, "k")
		m.Unlock("k")
	}); n != 0 {
		t.Fatalf("uncontended Lock+Unlock allocates %v times", n)
	}
	keys := make([]string, 4096)
	for i := range keys {
		keys[i] = "key-" + strconv.Itoa(i)
	}
	i := 0
	if n := testing.AllocsPerRun(4096, func() {
		k := keys[i%len(keys)]
		i++
		_ = m.Lock(ctx, k)
		m.Unlock(k)
	}); n != 0 {
		t.Fatalf("Lock+Unlock over distinct keys allocates %v times", n)
	}
	if ok := m.TryLock("k"); !ok {
		t.Fatal("TryLock on an idle key failed")
	}
	m.Unlock("k")
}

// The waiter used to leave the queue in a context.AfterFunc callback, which
// runs on a goroutine of its own after cancel returns: right after cancel,
// Status and Stats still counted it (286 of 300 trials under -race), and an
// Unlock at that moment could still hand it the key, although its context
// had ended first. The doc promises that a waiter whose context has ended is
// no longer counted and, as Lock's doc says, is not handed the key.
func TestIncident_CanceledWaiterStillCounted(t *testing.T) {
	const trials = 300
	m := keyedlock.New[string]()
	for trial := range trials {
		if err := m.Lock(t.Context(), "k"); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		res := enqueue(t, m, ctx, "k", 1)
		cancel()
		if st := m.Status("k"); st != (keyedlock.Status{Held: true}) {
			t.Fatalf("trial %d: Status right after cancel = %+v, want held with no waiters", trial, st)
		}
		if st := m.Stats(); st.Waiters != 0 || st.Canceled != uint64(trial+1) {
			t.Fatalf("trial %d: Stats right after cancel = %+v, want 0 waiters, %d canceled", trial, st, trial+1)
		}
		m.Unlock("k") // the canceled waiter must not get the key
		if st := m.Status("k"); st != (keyedlock.Status{}) {
			t.Fatalf("trial %d: Status after Unlock = %+v, want free", trial, st)
		}
		if err := await(t, "canceled waiter", res); !errors.Is(err, context.Canceled) {
			t.Fatalf("trial %d: canceled waiter returned %v, want context.Canceled", trial, err)
		}
	}
	if st := m.Stats(); st.Acquires != trials || st.Contended != trials || st.Canceled != trials || st.Held != 0 || st.Waiters != 0 {
		t.Fatalf("final Stats = %+v", st)
	}
}

// A canceled waiter in the middle leaves at once; Unlock right after the
// cancel skips it and hands the key to the next in line.
func TestIncident_UnlockRightAfterCancelSkipsTheCanceledWaiter(t *testing.T) {
	const trials = 100
	m := keyedlock.New[string]()
	for trial := range trials {
		if err := m.Lock(t.Context(), "k"); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		first := enqueue(t, m, ctx, "k", 1)
		second := enqueue(t, m, t.Context(), "k", 2)
		cancel()
		m.Unlock("k")
		if err := await(t, "second waiter", second); err != nil {
			t.Fatalf("trial %d: second waiter: %v", trial, err)
		}
		if err := await(t, "canceled waiter", first); !errors.Is(err, context.Canceled) {
			t.Fatalf("trial %d: canceled waiter returned %v, want context.Canceled", trial, err)
		}
		m.Unlock("k")
	}
}
