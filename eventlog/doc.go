// Package eventlog is a per-stream event log with gap-capped, epoch-checked
// replay and live tailing: the store-and-replay core of an SSE or WebSocket
// server whose clients reconnect with a "last event id".
//
// # Guarantees
//
//   - Each stream has its own sequence, from 1; Append returns the seq it
//     assigned; concurrent appends to a stream never lose or duplicate one.
//   - Every Log has an epoch that changes when history is lost, and every
//     Cursor carries it: a cursor from another epoch is reported as
//     Unrecoverable (WrongEpoch), never taken as a position.
//   - Replay returns an explicit Result: the events after the cursor (at
//     most the gap cap, DefaultGapCap = 200), SkippedToHead with the size of
//     the gap, or Unrecoverable with the reason. A cursor at head replays
//     nothing; a cursor ahead of head is ErrCursorAhead.
//   - Subscribe gives the replay and then the live events with no gap and
//     no duplicate, woken by Append (no polling). A slow subscriber never
//     blocks appenders or other subscribers; beyond MaxLag it is told
//     (Lagged, with the cursor to resume from).
//   - Streams have a State; Sync and SyncEvery touch only Created, Starting
//     and Active streams and report unknown ids; an Ended stream rejects
//     appends (ErrStreamEnded).
//   - Delete forgets a stream: its events are freed (memory store) or its
//     rows deleted (sqlitestore), reads report ErrUnknownStream and
//     ErrStreamDeleted, its subscribers end with that error, and the id is
//     never recreated in the epoch, so an old cursor can never pass for a
//     position in a new stream of the same name. Streams lists every stream
//     in the store (after a restart too) for a sync round; Oldest gives the
//     first retained seq of a stream for a history view.
//   - Retention by count and by age; reads past it say so
//     (Unrecoverable/Expired, ErrCursorExpired).
//   - Stores: MemoryStore (the default) and sqlitestore (persistent: the
//     epoch survives restarts, so old cursors resume with no gap); both pass
//     the storetest conformance suite.
//
// # Usage
//
//	log := eventlog.New()               // or eventlog.New(eventlog.WithStore(sqliteStore))
//	defer log.Close()
//	cur, err := log.Append(ctx, "session-1", []byte(`{"text":"hi"}`))
//	// cur.String() is the SSE event id, e.g. "9f1c2e4a0b3d5e6f:1".
//
//	// On reconnect with Last-Event-ID:
//	from, err := eventlog.ParseCursor(lastEventID)
//	sub, err := log.Subscribe(ctx, "session-1", from, eventlog.SubscribeOptions{})
//	defer sub.Close()
//	for {
//		res, err := sub.Next(ctx)
//		if err != nil { return err }           // ErrStreamEnded, ctx.Err(), ...
//		switch res.Outcome {
//		case eventlog.Events:        // write res.Events
//		case eventlog.SkippedToHead: // tell the client to lazy-load res.Gap events
//		case eventlog.Unrecoverable: // tell the client to reset (res.Reason)
//		case eventlog.Lagged:        // close; the client resumes from res.Resume
//		}
//	}
//
// # The incident
//
// An SSE chat server crashed (an unguarded interrupt() threw), losing its
// in-memory state. Reconnecting clients' cursors were thousands of events
// behind, and a 5-second polling sync replayed those events 50 at a time,
// even for sessions that were suspended or detached: messages arrived eight
// minutes late. One global sequence made "head - cursor" overcount every
// session's gap, an unknown session id was silently skipped by the sync, and
// nothing told a client that its cursor came from before the restart.
package eventlog
