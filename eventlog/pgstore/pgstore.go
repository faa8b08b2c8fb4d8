package pgstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/steadfast-go/steadfast/eventlog"
)

// Sentinel errors of Open.
var (
	// ErrSchemaTooNew: the database holds the tables of a newer version of
	// this package; Open refuses to touch them.
	ErrSchemaTooNew = errors.New("pgstore: database schema is newer than this build")
	// ErrCorrupt: the tables exist but do not hold a valid event log.
	ErrCorrupt = errors.New("pgstore: corrupt event log")
)

// channel is the NOTIFY channel of every store in a database.
const channel = "steadfast_eventlog"

// listenApp is the application_name of the LISTEN connection, so that an
// operator (or a test) can find it in pg_stat_activity.
const listenApp = "steadfast-eventlog-listen"

// maxPayload is the longest stream id sent as a NOTIFY payload; a longer
// one is sent as "" ("re-read every stream"), far below PostgreSQL's 8000
// byte limit.
const maxPayload = 200

// Defaults used when an option is not given.
const (
	// DefaultMaxConns is the size of the connection pool.
	DefaultMaxConns = 16
	// DefaultReconnectDelay is the longest wait between two attempts to
	// re-open the LISTEN connection.
	DefaultReconnectDelay = 2 * time.Second
)

// Option configures Open. Options are immutable values, safe to reuse;
// a nil Option is skipped.
type Option interface{ apply(*config) }

type config struct {
	retention      eventlog.Retention
	maxConns       int
	reconnectDelay time.Duration
}

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

// WithRetention bounds the history kept per stream (default: everything).
// Count retention trims in the append transaction; age retention is honoured
// exactly by every read and trimmed by later appends. It panics on a
// negative field.
func WithRetention(r eventlog.Retention) Option {
	if r.MaxEvents < 0 || r.MaxAge < 0 {
		panic(fmt.Sprintf("pgstore: negative retention %+v", r))
	}
	return optionFunc(func(c *config) { c.retention = r })
}

// WithMaxConns sets the size of the connection pool (default
// DefaultMaxConns). The LISTEN connection is one more. It panics if n < 1.
func WithMaxConns(n int) Option {
	if n < 1 {
		panic(fmt.Sprintf("pgstore: WithMaxConns(%d)", n))
	}
	return optionFunc(func(c *config) { c.maxConns = n })
}

// WithReconnectDelay sets the longest wait between attempts to re-open the
// LISTEN connection (default DefaultReconnectDelay; the first retry is
// immediate, then the wait doubles from 10 ms). It panics if d <= 0.
func WithReconnectDelay(d time.Duration) Option {
	if d <= 0 {
		panic(fmt.Sprintf("pgstore: WithReconnectDelay(%v)", d))
	}
	return optionFunc(func(c *config) { c.reconnectDelay = d })
}

// Store is an eventlog.Store in a PostgreSQL database that any number of
// processes share.
//
// A Store is safe for concurrent use; its zero value is not usable (use
// Open) and it must not be copied. Appends to one stream, from any process,
// get consecutive seqs in the order they take the stream's row lock; an
// append is committed before Append returns. Appends to different streams
// never wait for each other in the store. Close waits for the listener
// goroutine.
type Store struct {
	pool      *pgxpool.Pool
	connCfg   *pgx.ConnConfig // for the LISTEN connection
	retention eventlog.Retention
	delay     time.Duration

	epoch  atomic.Pointer[string] // the last epoch any answer carried
	notify atomic.Pointer[func(string)]

	closed    atomic.Bool
	watchOnce sync.Once
	stop      context.CancelFunc // ends the listener
	wg        sync.WaitGroup     // the listener
	closeOnce sync.Once
}

// Open connects to the database at url (a PostgreSQL connection URL or
// key=value string, as libpq reads it), creates or migrates the schema
// (under a transaction-scoped advisory lock, so that processes opening the
// database at once do not race), and checks the database's identity: a
// database restored from a dump, or a standby promoted onto a new timeline,
// gets a new epoch, so that cursors of the history it may have lost come
// back Unrecoverable. Every new pool connection checks the identity again.
//
// The connection must reach PostgreSQL directly or through a session
// pooler: LISTEN does not work through transaction pooling.
//
// Errors: ErrSchemaTooNew, ErrCorrupt, ctx.Err(), or the driver's error
// (a bad url, a refused connection, missing privileges).
func Open(ctx context.Context, url string, opts ...Option) (*Store, error) {
	c := config{maxConns: DefaultMaxConns, reconnectDelay: DefaultReconnectDelay}
	for _, o := range opts {
		if o != nil {
			o.apply(&c)
		}
	}
	pcfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("pgstore: %w", err)
	}
	pcfg.MaxConns = int32(c.maxConns)
	s := &Store{connCfg: pcfg.ConnConfig.Copy(), retention: c.retention, delay: c.reconnectDelay}
	s.connCfg.RuntimeParams["application_name"] = listenApp
	conn, err := pgx.ConnectConfig(ctx, pcfg.ConnConfig)
	if err != nil {
		return nil, fmt.Errorf("pgstore: connect: %w", err)
	}
	epoch, err := migrate(ctx, conn)
	conn.Close(context.Background())
	if err != nil {
		return nil, fmt.Errorf("pgstore: open: %w", err)
	}
	s.setEpoch(epoch)
	pcfg.AfterConnect = func(ctx context.Context, conn *pgx.Conn) error {
		epoch, err := recheck(ctx, conn)
		if err == nil {
			s.setEpoch(epoch)
		}
		return err
	}
	if s.pool, err = pgxpool.NewWithConfig(ctx, pcfg); err != nil {
		return nil, fmt.Errorf("pgstore: %w", err)
	}
	return s, nil
}

// setEpoch records the epoch an answer carried; when it changed, every
// stream must be re-read.
func (s *Store) setEpoch(e string) {
	if old := s.epoch.Swap(&e); old != nil && *old != e {
		s.changed("")
	}
}

func (s *Store) changed(stream string) {
	if fn := s.notify.Load(); fn != nil {
		(*fn)(stream)
	}
}

// Epoch implements eventlog.Store: the epoch of the meta row, read now.
func (s *Store) Epoch(ctx context.Context) (string, error) {
	if s.closed.Load() {
		return "", eventlog.ErrClosed
	}
	var e string
	if err := s.pool.QueryRow(ctx, `SELECT epoch FROM eventlog_meta`).Scan(&e); err != nil {
		return "", s.err("epoch", err)
	}
	s.setEpoch(e)
	return e, nil
}

// err wraps a driver error; after Close it reports eventlog.ErrClosed, and a
// canceled context its own error.
func (s *Store) err(op string, err error) error {
	switch {
	case s.closed.Load():
		return fmt.Errorf("%w: %s: %v", eventlog.ErrClosed, op, err)
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		return err
	}
	return fmt.Errorf("pgstore: %s: %w", op, err)
}

// Close implements eventlog.Store: it stops the listener, waits for it and
// closes the pool. Later calls return nil; other methods return
// eventlog.ErrClosed.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		s.closed.Store(true)
		s.watchOnce.Do(func() {}) // no listener may start from now on
		if s.stop != nil {
			s.stop()
		}
		s.wg.Wait()
		s.pool.Close()
	})
	return nil
}
