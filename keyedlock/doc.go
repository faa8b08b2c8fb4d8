// Package keyedlock provides per-key mutual exclusion: a [Map] of locks,
// one per key, created on demand and deleted as soon as the key is idle.
//
// # Guarantees
//
//   - Mutual exclusion per key, and FIFO per key: callers acquire a key in
//     the order in which they called Lock. Unlock hands the key directly to
//     the oldest waiter; a newcomer, or TryLock, can never barge in. FIFO
//     orders Lock calls, not the events behind them: if a program starts a
//     goroutine per message and each goroutine calls Lock, the scheduler
//     decides which goroutine calls first. Fix the order on the receive
//     path, before any goroutine exists (see Usage).
//   - Different keys never wait on each other. Keys are spread over shards
//     by a seeded hash; a shard's mutex is held only for a few bookkeeping
//     operations, never while anyone waits for a key.
//   - Lock takes a context. A waiter whose context ends returns ctx.Err(),
//     holds nothing, and the order of the remaining waiters is unchanged.
//     A hand-off and a cancellation are decided under the same mutex, so
//     exactly one wins and no wake-up is ever lost. TryLock never blocks.
//   - Queue feedback: [Map.Status] tells whether a key is held and how many
//     wait for it (to show a "waiting" indicator), without touching the
//     lock itself. A waiter whose context has ended is not counted, from
//     the moment its context's cancel function returns.
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
// A chat bot runs one agent session per channel. The platform delivers
// messages one at a time on its receive path; onMessage appends each to
// its channel's pending list there, which fixes the order, and only then
// starts a worker. Workers may reach Lock in any order: whichever holds
// the channel's key takes the oldest pending message, so messages of a
// channel run one at a time, in arrival order.
//
//	var (
//		sessions keyedlock.Map[string] // zero value is ready to use
//		mu       sync.Mutex
//		pending  = map[string][]Message{} // per channel, in arrival order
//	)
//
//	func onMessage(ctx context.Context, msg Message) { // in arrival order
//		ch := msg.ChannelID
//		if st := sessions.Status(ch); st.Held {
//			showWaiting(msg, st.Waiters+1) // "you are number N in line"
//		}
//		mu.Lock()
//		pending[ch] = append(pending[ch], msg)
//		mu.Unlock()
//		go sessions.Do(ctx, ch, func() error {
//			mu.Lock()
//			next := pending[ch][0]
//			pending[ch] = pending[ch][1:]
//			if len(pending[ch]) == 0 {
//				delete(pending, ch)
//			}
//			mu.Unlock()
//			return runAgent(ctx, next) // never two at once per channel
//		})
//	}
//
// (ctx here lives as long as the bot: a worker whose Do gave up would
// leave its message pending. examples/bot/router is this design in full.)
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
// A fixed array of mutexes that keys hash onto (k8s.io/utils/keymutex) is
// no substitute: different keys share a mutex, so a slow job for one
// channel stalls others, and code that holds two keys deadlocks when they
// share a stripe (kalbasit/ncps#777). Every key here has its own queue.
// Costs and the price of strict FIFO are measured in the repository's
// bench/README.md.
package keyedlock
