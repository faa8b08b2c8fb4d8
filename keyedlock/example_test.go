package keyedlock_test

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"time"

	"github.com/steadfast-go/steadfast/keyedlock"
)

// Serialize work per chat channel: runs for one channel never overlap and
// happen in arrival order, while other channels proceed in parallel.
func Example() {
	var channels keyedlock.Map[string] // the zero value is ready to use
	ctx := context.Background()

	err := channels.Do(ctx, "#general", func() error {
		fmt.Println("running the agent for #general")
		return nil
	})
	fmt.Println("err:", err)
	// Output:
	// running the agent for #general
	// err: <nil>
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
	fmt.Println(<-res)
	fmt.Printf("%+v\n", m.Status("job"))
	m.Unlock("job")
	// Output:
	// context canceled
	// {Held:true Waiters:0}
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
