package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/steadfast-go/steadfast/eventlog"
	"github.com/steadfast-go/steadfast/eventlog/pgstore"
)

// Replicas on one PostgreSQL database (Config.DBPath a postgres:// URL).
//
// Every replica serves every request about every session from the shared
// log: streams, history, session creation, and sends, which any replica
// accepts durably (the user event is the acceptance). Two replicas never
// accept one idempotency key twice: a send holds the session's advisory
// lock while it brings its index up to date from the log, checks the key
// and appends.
//
// One replica at a time is the leader: it holds a session-level advisory
// lock on a connection of its own. The leader runs every session's agent
// queue (messages accepted by any replica reach it through the store's
// change notifications) and the sync and expiry round; followers forward
// stop, interrupt and delete to it. When the leader dies its connection
// closes, the lock frees, and another replica takes over within
// electInterval: it reloads every session from the log and resumes the
// queues, a reply cut mid-way restarting after a restarted event. A leader
// that loses its connection steps down at once and cancels its replies
// (they stay queued in the log).

// Advisory lock keys, in the two-int form (namespace, key): a session's
// lock is (lockNamespace, hashtext(id)), the leader's (leaderNS,
// leaderLockKey); lockNamespace with key 0 also guards the creation of the
// sse_leader table. pgstore's own lock is in the one-bigint form, a
// separate key space.
const (
	lockNamespace = 0x55e
	leaderNS      = 0x55f
	leaderLockKey = 1
)

// electInterval is how often a follower tries to become leader and the
// leader checks its connection.
const electInterval = 500 * time.Millisecond

// forwardedHeader marks a request a follower forwarded to the leader, so it
// is never forwarded twice.
const forwardedHeader = "X-Sse-Forwarded"

// IsSharedDB reports whether db names a PostgreSQL database (shared by
// replicas) rather than a SQLite file.
func IsSharedDB(db string) bool {
	return strings.HasPrefix(db, "postgres://") || strings.HasPrefix(db, "postgresql://")
}

// shared is a replica's part in the coordination.
type shared struct {
	url     string // the database
	pool    *pgxpool.Pool
	self    atomic.Pointer[string] // this replica's URL, set by Serve
	ready   chan struct{}          // closed when self is set
	leader  atomic.Bool
	mu      sync.Mutex // protects leadCtx, leadStop, dirty, allDirty
	leadCtx context.Context
	stop    context.CancelFunc
	dirty   map[string]bool
	all     bool
	wake    chan struct{}
}

// watchedStore passes the store's change notifications on to the server
// as well as to the Log.
type watchedStore struct {
	eventlog.Store
	on func(stream string)
}

func (w watchedStore) Watch(fn func(string)) {
	w.Store.Watch(func(id string) {
		fn(id)
		w.on(id)
	})
}

// openShared opens the PostgreSQL log and the coordination pool.
func openShared(db string) (eventlog.Store, *shared, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := pgstore.Open(ctx, db)
	if err != nil {
		return nil, nil, err
	}
	pcfg, err := pgxpool.ParseConfig(db)
	if err == nil {
		pcfg.MaxConns = 8
		pcfg.ConnConfig.RuntimeParams["application_name"] = "sse-replica"
	}
	var pool *pgxpool.Pool
	if err == nil {
		pool, err = pgxpool.NewWithConfig(ctx, pcfg)
	}
	if err == nil {
		err = createLeaderTable(ctx, pool)
	}
	if err != nil {
		if pool != nil {
			pool.Close()
		}
		st.Close()
		return nil, nil, err
	}
	sh := &shared{url: db, pool: pool, ready: make(chan struct{}), dirty: map[string]bool{}, wake: make(chan struct{}, 1)}
	return watchedStore{Store: st, on: sh.mark}, sh, nil
}

func createLeaderTable(ctx context.Context, pool *pgxpool.Pool) error {
	return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1, 0)`, lockNamespace); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS sse_leader (id int PRIMARY KEY, url text NOT NULL, since timestamptz NOT NULL)`)
		return err
	})
}

// mark records that stream changed ("" : any may have) and wakes the
// refresher. It never blocks (it runs in the store's notifier).
func (sh *shared) mark(stream string) {
	sh.mu.Lock()
	if stream == "" {
		sh.all = true
	} else {
		sh.dirty[stream] = true
	}
	sh.mu.Unlock()
	select {
	case sh.wake <- struct{}{}:
	default:
	}
}

// runCtx is the context agent replies run under: the server's, or in
// shared mode the current leadership's (nil when this replica does not
// lead: no worker may start).
func (s *Server) runCtx() context.Context {
	if s.sh == nil {
		return s.baseCtx
	}
	s.sh.mu.Lock()
	defer s.sh.mu.Unlock()
	if !s.sh.leader.Load() {
		return nil
	}
	return s.sh.leadCtx
}

// elect runs until Shutdown: it takes the leadership when it is free and
// gives it up when its connection fails.
func (s *Server) elect() {
	select {
	case <-s.sh.ready:
	case <-s.baseCtx.Done():
		return
	}
	var conn *pgx.Conn
	defer func() {
		s.stepDown("shutting down")
		if conn != nil {
			conn.Close(context.Background()) // frees the lock
		}
	}()
	t := time.NewTicker(electInterval)
	defer t.Stop()
	for {
		var err error
		conn, err = s.electOnce(conn)
		if err != nil && s.baseCtx.Err() == nil {
			s.lg.Warn("leader election", "err", err)
		}
		select {
		case <-s.baseCtx.Done():
			return
		case <-t.C:
		}
	}
}

// electOnce is one election round on conn (nil: connect first); it returns
// the connection to keep (nil after a failure).
func (s *Server) electOnce(conn *pgx.Conn) (*pgx.Conn, error) {
	ctx, cancel := context.WithTimeout(s.baseCtx, 5*time.Second)
	defer cancel()
	if conn == nil {
		var err error
		if conn, err = pgx.Connect(ctx, s.sh.url); err != nil {
			return nil, err
		}
	}
	if s.sh.leader.Load() {
		pctx, pcancel := context.WithTimeout(ctx, time.Second) // the split-brain window: keep it short
		defer pcancel()
		if err := conn.Ping(pctx); err != nil {
			s.stepDown("lost the database connection")
			conn.Close(context.Background())
			return nil, err
		}
		return conn, nil
	}
	var got bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1, $2)`, leaderNS, leaderLockKey).Scan(&got); err != nil {
		conn.Close(context.Background())
		return nil, err
	}
	if got {
		s.becomeLeader(ctx)
	}
	return conn, nil
}

func (s *Server) becomeLeader(ctx context.Context) {
	self := *s.sh.self.Load()
	if _, err := s.sh.pool.Exec(ctx, `INSERT INTO sse_leader (id, url, since) VALUES (1, $1, now())
		ON CONFLICT (id) DO UPDATE SET url = excluded.url, since = excluded.since`, self); err != nil {
		s.lg.Warn("record the leader", "err", err)
	}
	lctx, stop := context.WithCancel(s.baseCtx)
	s.sh.mu.Lock()
	s.sh.leadCtx, s.sh.stop = lctx, stop
	s.sh.leader.Store(true)
	s.sh.mu.Unlock()
	// Sessions loaded as a follower carry no queue: load them afresh, which
	// resumes every queue from the log.
	s.mu.Lock()
	s.sessions = make(map[string]*session)
	s.mu.Unlock()
	s.lg.Info("this replica leads: it runs the agent queues and the sync round", "url", self)
	s.wg.Go(func() { s.resumeAll(lctx) })
	if s.cfg.SyncInterval > 0 {
		s.wg.Go(func() { s.syncLoop(lctx) })
	}
}

// stepDown gives up the leadership: running replies are canceled without
// an outcome (the next leader restarts them).
func (s *Server) stepDown(why string) {
	s.sh.mu.Lock()
	was := s.sh.leader.Swap(false)
	if s.sh.stop != nil {
		s.sh.stop()
	}
	s.sh.mu.Unlock()
	if was {
		s.lg.Info("this replica no longer leads", "why", why)
		s.mu.Lock()
		s.sessions = make(map[string]*session)
		s.mu.Unlock()
	}
}

// refreshLoop brings loaded sessions up to date with what other replicas
// appended, and on the leader loads the sessions it has not seen yet, so
// their queues run.
func (s *Server) refreshLoop() {
	for {
		select {
		case <-s.baseCtx.Done():
			return
		case <-s.sh.wake:
		}
		s.sh.mu.Lock()
		dirty, all := s.sh.dirty, s.sh.all
		s.sh.dirty, s.sh.all = map[string]bool{}, false
		s.sh.mu.Unlock()
		if all {
			s.mu.Lock()
			for id := range s.sessions {
				dirty[id] = true
			}
			s.mu.Unlock()
		}
		for id := range dirty {
			s.refreshSession(id)
		}
		if ctx := s.runCtx(); all && ctx != nil {
			s.resumeAll(ctx)
		}
	}
}

func (s *Server) refreshSession(id string) {
	s.mu.Lock()
	sess := s.sessions[id]
	s.mu.Unlock()
	if ctx := s.runCtx(); sess == nil && ctx != nil {
		// The leader loads it (its queue resumes), then still refreshes: a
		// load that raced with this one may have read less.
		var err error
		if sess, err = s.session(ctx, id); err != nil {
			return
		}
	}
	if sess == nil {
		return
	}
	if err := sess.mu.LockCtx(s.baseCtx); err != nil {
		return
	}
	defer sess.mu.Unlock()
	if err := s.refresh(s.baseCtx, sess); err != nil && s.baseCtx.Err() == nil &&
		!errors.Is(err, eventlog.ErrStreamDeleted) && !errors.Is(err, eventlog.ErrUnknownStream) {
		s.lg.Warn("refresh session", "session", id, "err", err)
	}
	if len(sess.queue) > 0 {
		s.startWorker(sess)
	}
}

// refresh applies the events appended since the session was indexed: the
// idempotency index learns keys accepted by other replicas, and new
// messages join the queue in stream order (it runs only on the leader).
// Called with sess.mu held.
func (s *Server) refresh(ctx context.Context, sess *session) error {
	var buf []eventlog.Event
	for range 10000 {
		evs, err := s.log.ReadAfterInto(ctx, sess.id, eventlog.Cursor{Seq: sess.indexed}, 1000, buf[:0])
		if errors.Is(err, eventlog.ErrCursorAhead) {
			return nil
		}
		if errors.Is(err, eventlog.ErrCursorExpired) {
			oldest, oerr := s.log.Oldest(ctx, sess.id)
			if oerr != nil {
				return oerr
			}
			sess.indexed = oldest - 1
			continue
		}
		if err != nil || len(evs) == 0 {
			return err
		}
		for _, ev := range evs {
			if u, ok := sess.replay(ev, sess.started); ok && s.runCtx() != nil {
				sess.queue = append(sess.queue, queued{UserEvent: u})
			}
			sess.indexed = ev.Seq
		}
		buf = evs
	}
	return nil
}

// lockSession takes the session's advisory lock on a pooled connection,
// across replicas; unlock gives it back.
func (sh *shared) lockSession(ctx context.Context, id string) (unlock func(), err error) {
	conn, err := sh.pool.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock($1, hashtext($2))`, lockNamespace, id); err != nil {
		conn.Release()
		return nil, err
	}
	return func() {
		uctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if _, err := conn.Exec(uctx, `SELECT pg_advisory_unlock($1, hashtext($2))`, lockNamespace, id); err != nil {
			conn.Conn().Close(uctx) // a closed connection frees the lock
		}
		conn.Release()
	}, nil
}

// forwardToLeader answers a request that only the leader can carry out
// (stop, interrupt, delete: they act on the running reply) when this
// replica does not lead: it is proxied to the leader. It reports whether it
// answered.
func (s *Server) forwardToLeader(w http.ResponseWriter, r *http.Request) bool {
	if s.sh == nil || s.sh.leader.Load() {
		return false
	}
	if r.Header.Get(forwardedHeader) != "" {
		s.unavailable(w) // the leadership is moving: the client retries
		return true
	}
	var target string
	err := s.sh.pool.QueryRow(r.Context(), `SELECT url FROM sse_leader WHERE id = 1`).Scan(&target)
	u, perr := url.Parse(target)
	if err != nil || perr != nil || target == *s.sh.self.Load() {
		s.unavailable(w)
		return true
	}
	p := httputil.NewSingleHostReverseProxy(u)
	p.ErrorHandler = func(w http.ResponseWriter, _ *http.Request, err error) {
		s.lg.Warn("forward to the leader", "leader", target, "err", err)
		s.unavailable(w)
	}
	r.Header.Set(forwardedHeader, "1")
	p.ServeHTTP(w, r)
	return true
}

// sharedLock takes the cross-replica lock of a send (a no-op without a
// shared database).
func (s *Server) sharedLock(ctx context.Context, id string) (func(), error) {
	if s.sh == nil {
		return func() {}, nil
	}
	unlock, err := s.sh.lockSession(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("session lock: %w", err)
	}
	return unlock, nil
}
