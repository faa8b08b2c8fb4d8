// Package sendqueue is a capped, ordered retry queue for outgoing sends,
// such as a chat client's POSTs to a server it reaches over a flaky
// connection.
//
// # Guarantees
//
//   - One delivery goroutine sends items in FIFO order. It peeks at the
//     head, sends it, and removes it only when the attempt is settled: a
//     failed item keeps its place at the head and is never re-enqueued, so
//     order survives failures and no path can exceed the cap.
//   - The cap (items, and optionally bytes) counts the item being sent and
//     holds at every instant. When full, Push either fails with [ErrFull]
//     ([RejectNew], the default) or evicts the oldest Retry items
//     ([DropOldest]).
//   - Each item has a policy: [Retry] (tried until delivered) or
//     [FireAndForget] (one attempt, for "stop" or "interrupt").
//   - Send errors are classified ([DefaultClassifier] or your own): retry
//     after a back-off (network errors, 404 from a stale connection, 408,
//     429, 5xx), drop (other 4xx), or pause until [Queue.Resume] (the
//     connection is down, [ErrDisconnected]). The default back-off is
//     exponential and never gives up.
//   - Every item carries an idempotency key, generated if the caller gives
//     none, so a receiver that deduplicates executes a retried send once.
//   - Each item has exactly one fate: delivered, or reported once to the
//     [WithReport] function (or logged with log/slog) when it is evicted,
//     dropped, given up or left at Close. A failed item's [Ticket] settles
//     with the same reason after the report has returned, and the reason
//     carries the item's last send error, if a send of it had failed.
//   - A panic in the send function or the classifier fails that one item
//     (reported with [ErrDropped]) instead of crashing the program from the
//     delivery goroutine.
//   - [Queue.Close] cancels a running send, waits for the delivery
//     goroutine, and reports the items still queued; [Queue.Flush] first
//     delivers everything.
//
// # Usage
//
//	q := sendqueue.New(func(ctx context.Context, it sendqueue.Item[Msg]) error {
//		return postJSON(ctx, "/send", it.Key, it.Value) // *sendqueue.HTTPError on a bad status
//	}, sendqueue.WithReport(func(r sendqueue.Report[Msg]) {
//		slog.Warn("message not sent", "key", r.Item.Key, "err", r.Err)
//	}))
//	defer q.Close()
//
//	t, err := q.Push(sendqueue.Item[Msg]{Value: msg}) // ErrFull when at the cap
//	q.Push(sendqueue.Item[Msg]{Value: stop, Policy: sendqueue.FireAndForget})
//
//	// On disconnect and reconnect:
//	q.Pause()
//	q.Resume() // the backlog goes first, in order
//
//	<-t.Done() // t.Status() is Delivered or Failed, t.Err() says why
//
// # The incident
//
// An SSE chat client sent user messages with POST. After a reconnect the
// server no longer knew the client's connection id and answered 404; the
// client dropped those messages without a word. The fix re-queued failed
// sends, but the re-queue path skipped the 100-message cap that the normal
// send path enforced, and it pushed the failed message to the back of the
// queue, so the user's messages arrived out of order.
package sendqueue
