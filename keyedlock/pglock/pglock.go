package pglock

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/steadfast-go/steadfast/keyedlock"
)

var (
	// ErrClosed is returned by Lock and TryLock after Close.
	ErrClosed = errors.New("pglock: closed")
	// ErrTransactionPooler is returned by Open when the connection reaches
	// PostgreSQL through a transaction-mode pooler, where session-level
	// locks do not belong to the caller.
	ErrTransactionPooler = errors.New("pglock: a transaction-mode connection pooler is in front of PostgreSQL; session locks need a direct or session-pooled connection")
)

// Defaults used when an option is not given.
const (
	DefaultPingInterval = time.Second
	DefaultPingTimeout  = time.Second
	DefaultMaxIdle      = 2
)

// tokens is the table of fencing counters, one row per key.
const createTokens = `CREATE TABLE IF NOT EXISTS steadfast_pglock_tokens (
	key   text COLLATE "C" PRIMARY KEY,
	token bigint NOT NULL)`

const nextToken = `INSERT INTO steadfast_pglock_tokens AS t (key, token) VALUES ($1, 1)
	ON CONFLICT (key) DO UPDATE SET token = t.token + 1 RETURNING token`

// Option configures Open; a nil Option is skipped.
type Option func(*config)

type config struct {
	pingInterval, pingTimeout time.Duration
	maxIdle                   int
}

// WithPing sets how often a held lease checks its connection and how long
// a check may take (defaults DefaultPingInterval and DefaultPingTimeout).
// A lost lock is signalled within interval+timeout. It panics unless both
// are positive.
func WithPing(interval, timeout time.Duration) Option {
	if interval <= 0 || timeout <= 0 {
		panic(fmt.Sprintf("pglock: WithPing(%v, %v)", interval, timeout))
	}
	return func(c *config) { c.pingInterval, c.pingTimeout = interval, timeout }
}

// WithMaxIdle sets how many unused lock connections the Locker keeps open
// for the next Lock (default DefaultMaxIdle; 0 closes each connection at
// Unlock). It panics if n < 0.
func WithMaxIdle(n int) Option {
	if n < 0 {
		panic(fmt.Sprintf("pglock: WithMaxIdle(%d)", n))
	}
	return func(c *config) { c.maxIdle = n }
}

// Locker hands out per-key locks shared by every process on one database.
// It is safe for concurrent use; create it with Open.
type Locker struct {
	cfg   *pgx.ConnConfig
	opt   config
	local keyedlock.Map[string]

	mu     sync.Mutex
	idle   []*pgx.Conn
	closed bool
}

// Open connects to the database at url, checks that the connection is not
// behind a transaction-mode pooler (ErrTransactionPooler), and creates the
// fencing-token table if it is missing.
func Open(ctx context.Context, url string, opts ...Option) (*Locker, error) {
	c := config{pingInterval: DefaultPingInterval, pingTimeout: DefaultPingTimeout, maxIdle: DefaultMaxIdle}
	for _, o := range opts {
		if o != nil {
			o(&c)
		}
	}
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("pglock: %w", err)
	}
	cfg.RuntimeParams["application_name"] = "steadfast-pglock"
	l := &Locker{cfg: cfg, opt: c}
	conn, err := l.connect(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close(context.Background())
	if err := checkSession(ctx, conn); err != nil {
		return nil, err
	}
	if err := createTable(ctx, conn); err != nil {
		return nil, fmt.Errorf("pglock: create the token table: %w", err)
	}
	return l, nil
}

// schemaLock serializes the creation of the token table among processes
// that open at once (CREATE TABLE IF NOT EXISTS is not safe under a race).
const schemaLock = 0x5374_6466_4c6f_636b // "StdfLock"

func createTable(ctx context.Context, conn *pgx.Conn) error {
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(schemaLock)); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, createTokens)
		return err
	})
}

// checkSession fails if the backend changes between statements, which is
// what a transaction-mode pooler does.
func checkSession(ctx context.Context, conn *pgx.Conn) error {
	var pids []int32
	for range 3 {
		var pid int32
		if err := conn.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
			return fmt.Errorf("pglock: %w", err)
		}
		pids = append(pids, pid)
	}
	if !samePID(pids) {
		return ErrTransactionPooler
	}
	return nil
}

func samePID(pids []int32) bool {
	for _, p := range pids {
		if p != pids[0] {
			return false
		}
	}
	return true
}

func (l *Locker) connect(ctx context.Context) (*pgx.Conn, error) {
	conn, err := pgx.ConnectConfig(ctx, l.cfg)
	if err != nil {
		return nil, fmt.Errorf("pglock: connect: %w", err)
	}
	return conn, nil
}

// LockID returns the 64-bit advisory lock id of key: the first 8 bytes of
// its SHA-256, so that every process maps a key to the same lock.
func LockID(key string) int64 {
	sum := sha256.Sum256([]byte(key))
	return int64(binary.BigEndian.Uint64(sum[:8]))
}

// getConn returns an idle connection or a new one.
func (l *Locker) getConn(ctx context.Context) (*pgx.Conn, error) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, ErrClosed
	}
	if n := len(l.idle); n > 0 {
		c := l.idle[n-1]
		l.idle = l.idle[:n-1]
		l.mu.Unlock()
		return c, nil
	}
	l.mu.Unlock()
	return l.connect(ctx)
}

// putConn keeps conn for the next Lock, or closes it.
func (l *Locker) putConn(conn *pgx.Conn) {
	l.mu.Lock()
	if !l.closed && len(l.idle) < l.opt.maxIdle && !conn.IsClosed() {
		l.idle = append(l.idle, conn)
		l.mu.Unlock()
		return
	}
	l.mu.Unlock()
	conn.Close(context.Background())
}

// Lock waits until this caller holds key across every process on the
// database, or ctx ends. It returns the lease, whose Token is the grant's
// fencing token and whose Context ends when the lock is lost or released.
// Errors: ctx.Err() (the caller holds nothing and left no trace in
// pg_locks), ErrClosed, or a connection or query error.
func (l *Locker) Lock(ctx context.Context, key string) (*Lease, error) {
	if err := l.local.Lock(ctx, key); err != nil {
		return nil, err
	}
	ls, err := l.acquire(ctx, key)
	if err != nil {
		l.local.Unlock(key)
		return nil, err
	}
	return ls, nil
}

// acquire takes the advisory lock and the next token in one round trip,
// with key's local lock held.
func (l *Locker) acquire(ctx context.Context, key string) (*Lease, error) {
	conn, err := l.getConn(ctx)
	if err != nil {
		return nil, err
	}
	id := LockID(key)
	var token int64
	b := &pgx.Batch{}
	b.Queue(`SELECT pg_advisory_lock($1)`, id)
	b.Queue(nextToken, key).QueryRow(func(r pgx.Row) error { return r.Scan(&token) })
	err, canceled := runCancelable(ctx, conn, func(c context.Context) error { return conn.SendBatch(c, b).Close() })
	switch {
	case err == nil && canceled:
		// PostgreSQL granted the lock (and the token) before the cancel
		// took effect: the caller holds the key, as keyedlock hands a key
		// over to a waiter whose context ends just after. A cancel still
		// in flight must not hit the lease's next statement.
		absorbCancel(conn)
	case err != nil:
		// Not granted, or granted an instant before a cancel that hit the
		// token statement: closing the connection ends the session and
		// any lock it holds before we return, so the caller never holds
		// the key and no token was taken.
		conn.Close(context.Background())
		if canceled {
			return nil, ctx.Err()
		}
		return nil, fmt.Errorf("pglock: lock %q: %w", key, err)
	}
	return l.newLease(key, id, token, conn), nil
}

// runCancelable runs f on conn with a context that never ends by itself;
// if ctx ends first, it sends PostgreSQL a cancel request for the running
// statement (the connection stays intact) and reports canceled. f's error
// is returned as it is: a canceled statement fails with SQLSTATE 57014.
func runCancelable(ctx context.Context, conn *pgx.Conn, f func(context.Context) error) (err error, canceled bool) {
	done := make(chan struct{})
	sent := make(chan bool, 1)
	go func() {
		select {
		case <-ctx.Done():
			cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = conn.PgConn().CancelRequest(cctx)
			cancel()
			sent <- true
		case <-done:
			sent <- false
		}
	}()
	err = f(context.Background())
	close(done)
	return err, <-sent
}

// absorbCancel gives a cancel request that may still be on its way a
// statement of its own to cancel, so that it cannot hit a later one.
func absorbCancel(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_, err := conn.Exec(ctx, `SELECT pg_sleep(0.02)`)
	var pgErr *pgconn.PgError
	if err != nil && !(errors.As(err, &pgErr) && pgErr.Code == "57014") {
		conn.Close(context.Background()) // the lease's watcher reports the loss
	}
}

// TryLock takes key if nobody holds it or waits for it, here or in any
// other process, and reports whether it did. It does not wait for the lock
// (it may wait for the database).
func (l *Locker) TryLock(ctx context.Context, key string) (*Lease, bool, error) {
	if !l.local.TryLock(key) {
		return nil, false, nil
	}
	conn, err := l.getConn(ctx)
	if err != nil {
		l.local.Unlock(key)
		return nil, false, err
	}
	id := LockID(key)
	var got bool
	var token int64
	err = conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1)`, id).Scan(&got)
	if err == nil && got {
		err = conn.QueryRow(ctx, nextToken, key).Scan(&token)
	}
	if err != nil || !got {
		if err != nil {
			conn.Close(context.Background()) // also ends a lock taken before the error
			err = fmt.Errorf("pglock: trylock %q: %w", key, err)
		} else {
			l.putConn(conn)
		}
		l.local.Unlock(key)
		return nil, false, err
	}
	return l.newLease(key, id, token, conn), true, nil
}

// Do runs fn holding key, with the lease's context and token, and unlocks
// when fn returns. It returns Lock's error, or fn's, or Unlock's.
func (l *Locker) Do(ctx context.Context, key string, fn func(ctx context.Context, token int64) error) error {
	ls, err := l.Lock(ctx, key)
	if err != nil {
		return err
	}
	ferr := fn(ls.Context(), ls.Token())
	uerr := ls.Unlock()
	if ferr != nil {
		return ferr
	}
	return uerr
}

// Status is what Locker.Status reports of one key.
type Status struct {
	// Held reports whether some process holds the key now.
	Held bool
	// Waiters counts the callers waiting for the key: those queued in this
	// process behind its head, plus every request waiting in PostgreSQL
	// (the heads of all processes' queues).
	Waiters int
}

// Status reports whether key is held anywhere and how many callers wait
// for it, from this process's queue and from pg_locks. Other processes'
// local queues (behind their heads) are not visible.
func (l *Locker) Status(ctx context.Context, key string) (Status, error) {
	conn, err := l.getConn(ctx)
	if err != nil {
		return Status{}, err
	}
	defer l.putConn(conn)
	id := uint64(LockID(key))
	var granted, waiting int
	err = conn.QueryRow(ctx, `SELECT count(*) FILTER (WHERE granted), count(*) FILTER (WHERE NOT granted)
		FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1
		AND classid = $1::bigint::oid AND objid = $2::bigint::oid
		AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`,
		int64(id>>32), int64(id&0xffffffff)).Scan(&granted, &waiting)
	if err != nil {
		return Status{}, fmt.Errorf("pglock: status %q: %w", key, err)
	}
	local := l.local.Status(key)
	return Status{Held: granted > 0, Waiters: local.Waiters + waiting}, nil
}

// Close closes the idle connections; later Lock and TryLock calls return
// ErrClosed. Leases still held keep their connections until Unlock.
func (l *Locker) Close() error {
	l.mu.Lock()
	idle := l.idle
	l.idle, l.closed = nil, true
	l.mu.Unlock()
	for _, c := range idle {
		c.Close(context.Background())
	}
	return nil
}
