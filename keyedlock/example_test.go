package keyedlock_test

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/steadfast-go/steadfast/keyedlock"
)

// Serialize work per chat channel: runs for one channel never overlap and
// happen in arrival order, while other channels proceed in parallel. The
// goroutine per message may reach Lock in any order, so the receive path
// fixes the order first (a pending list per channel) and each worker,
// holding the channel's key, takes the oldest pending message.
func Example() {
	var (
		channels keyedlock.Map[string] // the zero value is ready to use
		mu       sync.Mutex
		pending  = map[string][]string{}
		wg       sync.WaitGroup
	)
	ctx := context.Background()
	onMessage := func(channel, text string) { // called in arrival order
		mu.Lock()
		pending[channel] = append(pending[channel], text)
		mu.Unlock()
		wg.Go(func() {
			_ = channels.Do(ctx, channel, func() error {
				mu.Lock()
				next := pending[channel][0]
				pending[channel] = pending[channel][1:]
				mu.Unlock()
				fmt.Println(channel, next) // the agent run
				return nil
			})
		})
	}
	for _, text := range []string{"first", "second", "third"} {
		onMessage("#general", text)
	}
	wg.Wait()
	// Output:
	// #general first
	// #general second
	// #general third
}

// Status gives queue feedback, such as a "waiting" reaction, without
// touching the lock.
func ExampleMap_Status() {
	m := keyedlock.New[string]()
	ctx := context.Background()

	_ = m.Lock(ctx, "#general") // an agent run is in progress
	var wg sync.WaitGroup
	wg.Go(func() {
		_ = m.Do(ctx, "#general", func() error {
			fmt.Println("second message answered")
			return nil
		})
	})
	for m.Status("#general").Waiters == 0 { // wait until it is queued
		runtime.Gosched()
	}
	st := m.Status("#general")
	fmt.Printf("held=%v waiting=%d\n", st.Held, st.Waiters)

	m.Unlock("#general")
	wg.Wait()
	fmt.Printf("idle: %+v\n", m.Status("#general"))
	// Output:
	// held=true waiting=1
	// second message answered
	// idle: {Held:false Waiters:0}
}

// TryLock never blocks: it fails if the key is held or anyone waits.
func ExampleMap_TryLock() {
	var m keyedlock.Map[int]
	fmt.Println(m.TryLock(42))
	fmt.Println(m.TryLock(42))
	m.Unlock(42)
	fmt.Println(m.TryLock(42))
	m.Unlock(42)
	// Output:
	// true
	// false
	// true
}

// A waiter whose context ends gives up, holding nothing, and leaves the
// queue.
func ExampleMap_Lock_cancel() {
	var m keyedlock.Map[string]
	_ = m.Lock(context.Background(), "job")

	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan error)
	go func() { res <- m.Lock(ctx, "job") }()
	for m.Status("job").Waiters == 0 { // wait until it is queued
		runtime.Gosched()
	}
	cancel() // e.g. the user deleted the message
	// Not counted from the moment cancel returns, even if the waiter's
	// goroutine has not run yet.
	fmt.Printf("%+v\n", m.Status("job"))
	fmt.Println(<-res)
	m.Unlock("job")
	// Output:
	// {Held:true Waiters:0}
	// context canceled
}

// A wait hook sees every Lock call that had to queue, with how long it
// waited, for a histogram or a slow-wait log. It runs outside the Map's
// locks, on the goroutine that waited.
func ExampleWithWaitHook() {
	var waits atomic.Int64
	m := keyedlock.New[string](keyedlock.WithWaitHook(func(waited time.Duration) {
		waits.Add(1) // e.g. histogram.Observe(waited.Seconds())
	}))
	ctx := context.Background()

	_ = m.Do(ctx, "#general", func() error { return nil }) // free: no hook
	_ = m.Lock(ctx, "#general")
	var wg sync.WaitGroup
	wg.Go(func() { _ = m.Do(ctx, "#general", func() error { return nil }) })
	for m.Status("#general").Waiters == 0 { // wait until it is queued
		runtime.Gosched()
	}
	m.Unlock("#general")
	wg.Wait()
	fmt.Println("waits:", waits.Load())
	// Output:
	// waits: 1
}

// Stats are the Map's counters and gauges, for metrics.
func ExampleMap_Stats() {
	var m keyedlock.Map[string]
	ctx := context.Background()
	_ = m.Lock(ctx, "a")
	_ = m.Lock(ctx, "b")

	gaveUp, cancel := context.WithCancel(ctx)
	res := make(chan error)
	go func() { res <- m.Lock(gaveUp, "a") }()
	for m.Status("a").Waiters == 0 { // wait until it is queued
		runtime.Gosched()
	}
	st := m.Stats()
	fmt.Printf("acquires=%d contended=%d canceled=%d held=%d waiters=%d\n",
		st.Acquires, st.Contended, st.Canceled, st.Held, st.Waiters)
	cancel()
	<-res
	m.Unlock("a")
	m.Unlock("b")
	st = m.Stats()
	fmt.Printf("acquires=%d contended=%d canceled=%d held=%d waiters=%d\n",
		st.Acquires, st.Contended, st.Canceled, st.Held, st.Waiters)
	// Output:
	// acquires=2 contended=1 canceled=0 held=2 waiters=1
	// acquires=2 contended=1 canceled=1 held=0 waiters=0
}

// Any comparable type can be a key.
func ExampleNew_structKey() {
	type route struct {
		Guild   string
		Channel int64
	}
	m := keyedlock.New[route](keyedlock.WithWaitHook(func(waited time.Duration) {
		// export to a histogram, log slow waits, ...
	}))
	k := route{"steadfast", 1234}
	_ = m.Do(context.Background(), k, func() error { return nil })
	fmt.Printf("%+v\n", m.Stats())
	// Output:
	// {Acquires:1 Contended:0 Canceled:0 WaitTime:0s Held:0 Waiters:0}
}
