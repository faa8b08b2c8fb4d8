// Package pglock is keyedlock across replicas: per-key mutual exclusion,
// FIFO per key, for every process that shares one PostgreSQL database, with
// a fencing token per grant and a signal when exclusivity is lost.
//
// # Guarantees
//
//   - Two stages. In each process a keyedlock.Map orders the local callers
//     of a key (FIFO by Lock call, cancellation that leaves no trace); only
//     the head of a key's local queue goes to PostgreSQL, where it waits in a
//     session-level advisory lock on a connection of its own.
//   - FIFO across replicas, as far as PostgreSQL gives it: PostgreSQL queues
//     a lock request behind the requests already waiting for that lock and
//     grants them in that order. So the heads of the replicas' local queues
//     are served in the order their requests reached the server, and the
//     callers of one process in the order of their Lock calls. Between two
//     processes, the order is the one of the server's queue, not of any
//     clock: a caller whose local queue is long waits for its own
//     predecessors first.
//   - Cancellation leaves no trace on the server. A waiter whose context ends
//     is taken out of PostgreSQL's queue with a protocol cancel request (not
//     by breaking the connection, which is what pgx does with a context by
//     default); its row in pg_locks is gone when Lock returns ctx.Err(),
//     and it took no token. If PostgreSQL granted the lock before the cancel
//     took effect, the caller holds the key and Lock succeeds, as keyedlock
//     hands a key to a waiter whose context ends just after. In the one
//     crossing where the grant comes an instant before a cancel that stops
//     the token statement, the session is closed before Lock returns
//     ctx.Err(): that caller never holds the key, and no token is taken.
//   - A fencing token per grant: a counter per key, in a table of this
//     database, incremented by the holder right after the grant, in the same
//     round trip. It increases with every grant of the key, across
//     processes and across a PostgreSQL restart, so the resource the lock
//     protects can refuse a write that carries an older token
//     (UPDATE … WHERE token <= $token) and a stale holder cannot overwrite a
//     newer one's work.
//   - A lost-lock signal: Lease.Context is cancelled as soon as exclusivity
//     can no longer be proven. The lease's connection checks every
//     PingInterval (default 1 s), bounded by PingTimeout (default 1 s), that
//     its backend still holds the lock. A broken or silent connection is
//     detected within PingInterval+PingTimeout. PostgreSQL frees a session
//     lock only when the backend ends, so while the network is cut and the
//     backend lives, nobody else can be granted the key. When the backend
//     is terminated (pg_terminate_backend, a server restart), another
//     replica can be granted the key before this one notices. That is the
//     case the fencing token is for.
//   - Idle keys cost nothing on the server: no pg_locks row, and no
//     connection beyond a small pool of idle ones (WithMaxIdle, default 2;
//     0 keeps none).
//   - A transaction-mode connection pooler in front of PostgreSQL (PgBouncer
//     with pool_mode=transaction) makes session locks meaningless. Open
//     detects it (the backend changes between statements) and fails with
//     ErrTransactionPooler.
//
// Keys are hashed to 64 bits (the first 8 bytes of their SHA-256) for the
// advisory lock. Two keys that collide share one advisory lock: they
// exclude each other too (never less exclusion, sometimes a wait for an
// unrelated key), and each keeps its own fencing counter.
//
// # Usage
//
//	locks, err := pglock.Open(ctx, "postgres://app@db/app")
//	if err != nil { ... }
//	defer locks.Close()
//
//	err = locks.Do(ctx, channel, func(ctx context.Context, token int64) error {
//		// ctx ends if the lock is lost: pass it to the work.
//		return runAgent(ctx, channel, prompt, token) // writes carry token
//	})
//
// # Why
//
// keyedlock's guarantee (one holder per key, in order) holds inside one
// process. Operators run two replicas of a service for availability, and
// then both can work on the same key at once: the incident again.
// Distributed locks elsewhere either poll (Redis SET NX loops, redsync),
// lose FIFO order, or give no fencing token, so a holder paused past its
// lease corrupts the resource.
package pglock
