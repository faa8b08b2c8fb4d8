// Package pgstore is an eventlog.Store in PostgreSQL that several server
// processes share: every replica of a service appends to and tails the
// same streams, with the guarantees of package eventlog across processes.
//
// # Guarantees
//
//   - Gapless per-stream seqs with writers in any number of processes: an
//     append takes the stream's row lock (one row per stream; unrelated
//     streams never queue behind each other), advances its head and inserts
//     the event in one transaction, so a writer that dies before its commit
//     leaves neither a gap nor half an event.
//   - The oldest retained seq is kept in the stream's row and moved in the
//     transaction that trims, so a skip-to-head reports the exact gap.
//   - Delete leaves a tombstone row that keeps the head: a deleted id never
//     restarts at seq 1 in the epoch, whichever process appends next.
//   - Live tail across processes: one LISTEN connection per Store carries a
//     tiny notification (the stream id) per commit, as a wake-up only; after
//     every reconnect of that connection the Log re-reads every subscribed
//     stream from its subscriber's cursor, because notifications sent while
//     it was down are lost. A subscriber is told Lagged only when it is
//     slow, never because a notification was lost.
//   - No silent divergence: the epoch belongs to the database's identity
//     (cluster system identifier, WAL timeline, database oid), re-checked
//     by every new connection. A database restored from a dump, or a
//     standby promoted onto a new timeline, gets a new epoch, so old cursors
//     come back Unrecoverable instead of being resolved against a history
//     that may have lost acknowledged events. Every answer carries the
//     epoch it was read under.
//   - The schema is created or migrated at Open, versioned (SchemaVersion),
//     under a transaction-scoped advisory lock so that processes opening at
//     once do not race; a newer schema is refused with ErrSchemaTooNew.
//
// # Usage
//
//	st, err := pgstore.Open(ctx, "postgres://app@db:5432/app", pgstore.WithRetention(eventlog.Retention{MaxEvents: 10000}))
//	if err != nil { ... }
//	log := eventlog.New(eventlog.WithStore(st))
//	defer log.Close() // closes st
//
// Connect directly or through a session pooler: LISTEN does not work
// through transaction pooling (PgBouncer's pool_mode=transaction).
//
// # Why
//
// An SSE server that keeps its log in memory or in a local SQLite file
// cannot run as two replicas: a client that reconnects to the other one
// finds another history, or none. Shared stores elsewhere either assign one
// global sequence (so gaps are overcounted), poll for new events, or keep
// their epoch when the store silently lost its tail (an asynchronous
// standby promoted, a restore from backup), so a cursor is then resolved
// against a history that no longer holds what the client saw.
package pgstore
