// Package replayqueue is a reconnect-aware FIFO between producers and a
// connection that comes and goes, with a replayed session state.
//
// # Guarantees
//
//   - One mutex covers the connection state and the buffer, so a Send is
//     either sent on the live connection or buffered for the next one;
//     there is no check-then-act window.
//   - While connected, Send calls the connection's send function directly:
//     no buffering, no goroutine hop.
//   - On Connect, atomically with respect to producers: the replay set first
//     (registration order), then the buffered items oldest first, then new
//     items. A new item never overtakes a buffered one.
//   - The buffer is bounded by items and optionally bytes, and the bound is
//     never exceeded, not even by one item. When full: an error (default),
//     drop-oldest, or block under the Send's context. Every evicted item is
//     reported to the WithDropped callback.
//   - Each item has exactly one fate: sent, rejected by Send with an error
//     (the caller keeps it), handed back by [Queue.Fail], or reported
//     dropped to the [WithDropped] callback (evicted, or still buffered at
//     [Queue.Close]).
//   - Replayed items are sent with ids in a reserved namespace
//     ([ReservedPrefix]) that client ids never use (see [IsReserved] for the
//     rule). Replies with reserved ids, results and errors alike, are
//     consumed by HandleReply and never reach a client: a reply to a pending
//     replay goes to its callback, which learns the item's new identity
//     (the new upstream subscription id); a reply after the replay's timeout
//     or from an older connection generation is dropped.
//   - Generation numbers every connection, so a stale reader or callback
//     can recognise that its connection is gone.
//
// # Usage in a JSON-RPC WebSocket proxy
//
// One Queue per client session; T is one JSON-RPC frame sent upstream and
// R one reply frame read back. Every frame the proxy writes upstream for
// this client goes through the queue.
//
//	q := replayqueue.New[[]byte, []byte](
//		replayqueue.WithMaxItems[[]byte](1000),
//		replayqueue.WithMaxBytes(8<<20, func(b []byte) int { return len(b) }),
//		replayqueue.WithOverflow[[]byte](replayqueue.Block),
//	)
//	defer func() { for _, f := range q.Fail(errClientGone) { failToClient(f) } }()
//
//	// Reconnect loop: connect, then read until the connection fails.
//	for ctx.Err() == nil {
//		ws := dialBestUpstream(ctx)
//		gen, err := q.Connect(func(frame []byte) error {
//			return ws.Write(ctx, websocket.MessageText, frame)
//		})
//		if err != nil {
//			continue // the frame that failed stays buffered for the next try
//		}
//		for {
//			frame, err := ws.Read(ctx)
//			if err != nil {
//				q.Disconnect(gen, err) // later Sends buffer
//				break
//			}
//			id := idString(frame) // decoded string id, or a number's digits
//			if q.HandleReply(id, frame) {
//				continue // a reply to a replayed item: never forwarded
//			}
//			forwardToClient(remapSubscriptionIDs(frame))
//		}
//	}
//
//	// Client reader: forward each request, ids unchanged, never reserved.
//	if replayqueue.IsReserved(clientID) {
//		return rejectInvalidRequest(clientID)
//	}
//	err := q.Send(ctx, frame) // sent now, or buffered until Connect
//
//	// After eth_subscribe succeeded with subscription id clientSub, keep it
//	// across reconnects. Each reconnect re-sends it with a reserved id; the
//	// reply carries the new upstream subscription id.
//	q.AddReplay(clientSub, func(id replayqueue.ReplayID) []byte {
//		return subscribeFrame(id.String(), params)
//	}, func(r replayqueue.Reply[[]byte]) {
//		if r.Err != nil {
//			return // timed out or connection lost; the next Connect retries
//		}
//		if newSub, ok := subscriptionResult(r.Value); ok {
//			mapUpstreamSub(newSub, clientSub) // notifications keep clientSub
//		} // a JSON-RPC error reply lands here too, never at the client
//	})
//
//	// On eth_unsubscribe from the client:
//	q.RemoveReplay(clientSub)
//
// The reply callback runs synchronously inside HandleReply, so the mapping
// from the new upstream subscription id is installed before the reader
// looks at the next frame (the first notification for that subscription).
//
// # The incident
//
// An Ethereum JSON-RPC WebSocket proxy reconnected to a new upstream node
// after the old one failed. Client messages sent during the 2-5 s reconnect
// window were dropped. The first fix added a queue and an atomic
// "reconnecting" flag, and raced: a sender read the flag as "reconnecting",
// the flusher drained the queue and cleared the flag, and then the sender
// appended its message to a queue nobody would flush again. Worse, the proxy
// replayed each client's eth_subscribe on the new upstream with the
// client's own JSON-RPC id; the replies reached the clients, which had
// never sent those requests, and broke their JSON-RPC state machines.
//
// # What it does not do
//
// An item that Send or Connect handed to a send function that returned nil
// counts as sent. If the connection dies before the upstream answers it,
// the queue does not re-send it: only the caller knows whether a request
// is safe to repeat, so a proxy answers such in-flight requests itself (for
// example with a JSON-RPC error) or re-sends the idempotent ones. The send
// function runs under the queue's send lock; it must not panic, and it may
// call back into the Queue only as [Queue.Connect] describes (HandleReply
// and the observers, never Send or Connect).
package replayqueue
