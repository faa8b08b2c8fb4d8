// Package keyedlock provides per-key mutual exclusion: a [Map] of locks,
// one per key, created on demand and deleted as soon as the key is idle.
//
// # The incident
//
// A chat bot ran one coding-agent session per channel. Two messages posted
// in the same channel resumed the same agent session at once and corrupted
// it. The fix was a dictionary of per-channel locks that was never cleaned
// up, and that relied on the lock being FIFO so messages in a channel were
// answered in the order they arrived; "queue feedback", "idle cleanup" and
// "contention metrics" were left as TODOs. In Go the same fix is harder to
// get right: sync.Mutex is not FIFO, Discord libraries run each handler in
// its own goroutine, and a map of mutexes grows forever.
//
// # Guarantees
//
//   - Mutual exclusion per key, and FIFO per key: callers acquire a key in
//     the order in which they called Lock. Unlock hands the key directly to
//     the oldest waiter; a newcomer, or TryLock, can never barge in.
//   - Different keys never wait on each other. Keys are spread over shards
//     by a seeded hash; a shard's mutex is held only for a few bookkeeping
//     operations, never while anyone waits for a key.
//   - Lock takes a context. A waiter whose context ends returns ctx.Err(),
//     holds nothing, and the order of the remaining waiters is unchanged.
//     A hand-off and a cancellation are decided under the same mutex, so
//     exactly one wins and no wake-up is ever lost. TryLock never blocks.
//   - Queue feedback: [Map.Status] tells whether a key is held and how many
//     wait for it (to show a "waiting" indicator), without touching the
//     lock itself.
//   - Idle keys hold no memory: a key's entry is deleted when its last
//     holder unlocks with nobody waiting, and a shard rebuilds its map when
//     it shrinks far below its peak (Go maps never shrink). After a million
//     distinct keys have been locked and released, the heap is back within
//     64 KiB of where it started.
//   - Steady-state Lock and Unlock allocate nothing.
//   - Unlock of a key that is not held panics, as with sync.Mutex.
//   - Contention is observable: [Map.Stats] counts acquisitions, waits,
//     cancellations and total wait time, and [WithWaitHook] reports every
//     wait, outside of any internal lock.
//
// # Usage
//
//	var sessions keyedlock.Map[string] // zero value is ready to use
//
//	func handle(ctx context.Context, msg Message) error {
//		if st := sessions.Status(msg.ChannelID); st.Held {
//			showWaiting(msg, st.Waiters+1) // "you are number N in line"
//		}
//		return sessions.Do(ctx, msg.ChannelID, func() error {
//			return runAgent(ctx, msg) // never runs twice at once per channel
//		})
//	}
//
// # Why not a fixed array of mutexes
//
// A popular shortcut (k8s.io/utils/keymutex.NewHashed) hashes each key onto
// one of a fixed number of mutexes. It is fast and allocation-free, but
// different keys share a mutex, so a slow job for one channel stalls
// unrelated channels, and code that holds two keys at once can deadlock
// when both land on the same stripe, as happened in production in
// kalbasit/ncps#777. Its mutexes are also not FIFO, and it cannot report
// how many wait for a particular key. This package gives every key its own
// queue instead, and keeps that cheap: a shard keeps its first held keys
// in inline slots next to its mutex, falls back to a map only when more
// are held at once, and recycles waiters and queues.
//
// # Performance and the price of FIFO
//
// An uncontended Lock and Unlock pair costs two short critical sections on
// a shard mutex, a hash of the key and no allocation; keys of different
// shards never touch the same mutex or cache line. Steady-state locking
// allocates nothing, also when waiting with a context that never ends
// (context.Background); waiting with a context that can end allocates the
// watcher that [context.AfterFunc] registers.
//
// Strict FIFO hand-off has a price when one key is contended. Unlock gives
// the key to the oldest waiter, which is parked, so every hand-off waits
// for the scheduler to run that goroutine before anybody makes progress
// on the key. A barging mutex (sync.Mutex, and therefore moby/locker and
// k8s keymutex) instead lets whoever is running take the lock again at
// once, which gives more throughput for tiny critical sections hammered
// from many goroutines, at the cost of letting a waiter starve (sync.Mutex
// bounds that at 1 ms) and answering messages out of order. In the
// parallel-same benchmark, where the critical section is empty, keyedlock
// is therefore slower per operation than those mutexes. For
// the work this package is meant for (an agent run, a database migration,
// a per-tenant job) the critical section is far longer than a hand-off,
// ordering is what callers need, and the difference disappears.
package keyedlock
