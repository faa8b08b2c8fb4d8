// Package sqlitestore is a persistent eventlog.Store in a SQLite database,
// using the pure-Go driver modernc.org/sqlite (no cgo).
//
// The database runs in WAL mode; events are keyed by (stream, seq); each
// stream's head, oldest retained seq and state are kept in a table and cached
// in memory; the epoch is created with the database and persisted, so a
// restarted server keeps accepting the cursors it issued before and resumes
// them with no gap. A new or wiped database gets a new epoch, so cursors
// from the lost history are reported as unrecoverable instead of being
// mistaken for positions in the new one.
//
// Appends and state changes from concurrent goroutines are group-committed:
// one writer goroutine takes every request queued while the previous
// transaction was committing and commits them in one transaction, so 8
// concurrent appenders cost about one fsync-free WAL commit per batch, not
// per event.
//
// Delete removes a stream's rows (events and stream row) in one
// transaction of the writer and records the id in a small table of deleted
// ids, so that the id is never recreated under this epoch, across restarts
// too (see eventlog.Store.Delete). Deleted ids are not cached in memory:
// operations on an id the cache does not know look it up in that table.
//
// The database uses synchronous=NORMAL, the usual setting for WAL: a
// committed append survives a crash of the process; a power loss may undo
// the last few commits (never corrupting the file).
//
//	st, err := sqlitestore.Open(path, sqlitestore.WithRetention(eventlog.Retention{MaxEvents: 10000}))
//	if err != nil { ... }           // errors.Is(err, sqlitestore.ErrCorrupt) for a damaged file
//	log := eventlog.New(eventlog.WithStore(st))
//	defer log.Close()               // closes st
package sqlitestore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/steadfast-go/steadfast/eventlog"
	sqlite "modernc.org/sqlite"
)

// ErrCorrupt: the database file is not a SQLite database, is damaged, or
// does not hold an event log.
var ErrCorrupt = errors.New("sqlitestore: corrupt database")

// DefaultMaxBatch is the most requests one group-commit transaction takes.
const DefaultMaxBatch = 512

// Option configures Open. Options are immutable values, safe to reuse.
type Option interface{ apply(*config) }

type config struct {
	retention eventlog.Retention
	maxBatch  int
}

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

// WithRetention bounds the history kept per stream (default: everything).
// Pruning happens in the append transactions of the stream; reads honour the
// bounds exactly even before rows are deleted. It panics on a negative field.
func WithRetention(r eventlog.Retention) Option {
	if r.MaxEvents < 0 || r.MaxAge < 0 {
		panic(fmt.Sprintf("sqlitestore: negative retention %+v", r))
	}
	return optionFunc(func(c *config) { c.retention = r })
}

// WithMaxBatch sets the most requests committed in one transaction
// (default DefaultMaxBatch). It panics if n < 1.
func WithMaxBatch(n int) Option {
	if n < 1 {
		panic(fmt.Sprintf("sqlitestore: WithMaxBatch(%d)", n))
	}
	return optionFunc(func(c *config) { c.maxBatch = n })
}

// Store is an eventlog.Store in a SQLite file.
//
// A Store is safe for concurrent use; its zero value is not usable (use
// Open) and it must not be copied. Appends to one stream are assigned
// consecutive seqs in the order the writer receives them; an append is
// committed and readable before Append returns. Close waits for the writer
// goroutine.
//
// A Store caches every stream's head, so one Store at a time may have a
// database file open: a second one (in this process or another) would assign
// seqs the first already used, and its appends fail with a constraint error.
// Servers that share a log need a shared store (see package eventlog).
type Store struct {
	db        *sql.DB
	path      string
	epoch     string
	retention eventlog.Retention
	maxBatch  int

	reqs     chan *request
	writerWG sync.WaitGroup

	closeMu sync.RWMutex // excludes sends on reqs from closing it
	closed  bool         // guarded by closeMu
	// closedFlag mirrors closed for readers. They must not take closeMu: a
	// reader holding mu and waiting for closeMu behind a pending Close, an
	// appender holding closeMu.RLock on a full reqs, and the writer waiting
	// for mu would deadlock.
	closedFlag atomic.Bool

	mu      sync.RWMutex // protects streams
	streams map[string]*info

	reqPool sync.Pool
	commits atomic.Int64 // transactions committed, for tests
	taken   atomic.Int64 // requests taken by the writer, for tests

	// Used by the writer goroutine only.
	insert, upsert, pruneCount, pruneAge, isDeleted *sql.Stmt
	lastTS                                          map[string]int64
}

// info is the cached row of the streams table.
type info struct {
	head  uint64
	first uint64 // oldest seq not yet pruned
	state eventlog.State
}

// local is a stream's row as a commit sees it.
type local struct {
	info
	exists  bool // the stream exists (in the cache, or created in this batch)
	deleted bool // the id is deleted (before or in this batch)
}

type reqKind uint8

const (
	kindAppend reqKind = iota
	kindState
	kindDelete
)

type request struct {
	kind   reqKind
	stream string
	typ    string
	data   []byte
	state  eventlog.State
	seq    uint64
	err    error
	done   chan struct{}
}

const schema = `
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS streams (
	id    TEXT PRIMARY KEY,
	head  INTEGER NOT NULL,
	first INTEGER NOT NULL,
	state INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events (
	stream TEXT    NOT NULL,
	seq    INTEGER NOT NULL,
	type   TEXT    NOT NULL,
	data   BLOB,
	ts     INTEGER NOT NULL,
	PRIMARY KEY (stream, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deleted (id TEXT PRIMARY KEY) WITHOUT ROWID;
`

// Open opens or creates the event log database at path (a file name, not a
// URI: any character is taken literally; the store needs a real file so its
// connections share it).
//
// Errors: ErrCorrupt (wrapped with the driver's message) if the file is not
// a SQLite database, is damaged, or holds tables of another shape or an
// invalid epoch; otherwise the driver's error, for example for a missing
// directory or missing permissions.
func Open(path string, opts ...Option) (*Store, error) {
	c := config{maxBatch: DefaultMaxBatch}
	for _, o := range opts {
		o.apply(&c)
	}
	if path == "" || path == ":memory:" {
		return nil, fmt.Errorf("sqlitestore: Open needs a file path, got %q", path)
	}
	// In a file: URI SQLite percent-decodes the path and ends it at '?' or
	// '#'; escape those so that the file opened is the one named.
	dsn := "file:" + uriPath.Replace(path) + "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(NORMAL)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("sqlitestore: open %s: %w", path, err)
	}
	s := &Store{
		db:        db,
		path:      path,
		retention: c.retention,
		maxBatch:  c.maxBatch,
		reqs:      make(chan *request, c.maxBatch),
		streams:   make(map[string]*info),
		lastTS:    make(map[string]int64),
	}
	s.reqPool.New = func() any { return &request{done: make(chan struct{}, 1)} }
	db.SetMaxIdleConns(4)
	if err := s.init(); err != nil {
		db.Close()
		return nil, err
	}
	s.writerWG.Add(1)
	go s.writer()
	return s, nil
}

var uriPath = strings.NewReplacer("%", "%25", "?", "%3f", "#", "%23")

// classify wraps err as ErrCorrupt when the driver says the file is damaged
// or not a database.
func (s *Store) classify(op string, err error) error {
	var se *sqlite.Error
	if errors.As(err, &se) {
		switch se.Code() & 0xff {
		case 11, 26: // SQLITE_CORRUPT, SQLITE_NOTADB
			return fmt.Errorf("%w: %s: %s: %v", ErrCorrupt, s.path, op, err)
		}
	}
	return fmt.Errorf("sqlitestore: %s: %s: %w", s.path, op, err)
}

func (s *Store) init() error {
	ctx := context.Background()
	if _, err := s.db.ExecContext(ctx, schema); err != nil {
		return s.classify("create schema", err)
	}
	// The schema statements succeed on tables of another shape that
	// happen to have these names; this query does not.
	if _, err := s.db.ExecContext(ctx, `SELECT stream, seq, type, data, ts FROM events LIMIT 0; SELECT id, head, first, state FROM streams LIMIT 0; SELECT id FROM deleted LIMIT 0`); err != nil {
		return fmt.Errorf("%w: %s: unexpected schema: %v", ErrCorrupt, s.path, err)
	}
	if _, err := s.db.ExecContext(ctx, `INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', ?)`, eventlog.NewEpoch()); err != nil {
		return s.classify("write epoch", err)
	}
	if err := s.db.QueryRowContext(ctx, `SELECT value FROM meta WHERE key = 'epoch'`).Scan(&s.epoch); err != nil {
		return s.classify("read epoch", err)
	}
	if !eventlog.ValidEpoch(s.epoch) {
		return fmt.Errorf("%w: %s: invalid epoch %q", ErrCorrupt, s.path, s.epoch)
	}
	rows, err := s.db.QueryContext(ctx, `SELECT id, head, first, state FROM streams`)
	if err != nil {
		return s.classify("load streams", err)
	}
	defer rows.Close()
	for rows.Next() {
		var id string
		var head, first int64
		var st int64
		if err := rows.Scan(&id, &head, &first, &st); err != nil {
			return s.classify("load streams", err)
		}
		if head < 0 || first < 1 || uint64(first) > uint64(head)+1 || !eventlog.State(st).Valid() || id == "" {
			return fmt.Errorf("%w: %s: invalid stream row %q (head %d, first %d, state %d)", ErrCorrupt, s.path, id, head, first, st)
		}
		s.streams[id] = &info{head: uint64(head), first: uint64(first), state: eventlog.State(st)}
	}
	if err := rows.Err(); err != nil {
		return s.classify("load streams", err)
	}
	prep := func(q string) *sql.Stmt {
		if err != nil {
			return nil
		}
		var st *sql.Stmt
		st, err = s.db.PrepareContext(ctx, q)
		return st
	}
	s.insert = prep(`INSERT INTO events (stream, seq, type, data, ts) VALUES (?, ?, ?, ?, ?)`)
	s.upsert = prep(`INSERT INTO streams (id, head, first, state) VALUES (?1, ?2, ?3, ?4)
		ON CONFLICT (id) DO UPDATE SET head = ?2, first = ?3, state = ?4`)
	s.pruneCount = prep(`DELETE FROM events WHERE stream = ? AND seq < ?`)
	s.pruneAge = prep(`SELECT seq FROM events WHERE stream = ? AND ts > ? ORDER BY seq LIMIT 1`)
	s.isDeleted = prep(`SELECT count(*) FROM deleted WHERE id = ?`)
	if err != nil {
		return s.classify("prepare", err)
	}
	return nil
}

// Epoch implements eventlog.Store: the epoch stored in the database.
func (s *Store) Epoch() string { return s.epoch }

// Path returns the database file name given to Open.
func (s *Store) Path() string { return s.path }

// submit queues r for the writer and waits for its commit. Once queued, a
// request is always carried out (or failed) by the writer, so its outcome
// is known when submit returns.
func (s *Store) submit(ctx context.Context, r *request) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.closeMu.RLock()
	if s.closed {
		s.closeMu.RUnlock()
		return eventlog.ErrClosed
	}
	select {
	case s.reqs <- r:
	case <-ctx.Done():
		s.closeMu.RUnlock()
		return ctx.Err()
	}
	s.closeMu.RUnlock()
	<-r.done
	return r.err
}

func (s *Store) getReq() *request {
	r := s.reqPool.Get().(*request)
	return r
}

func (s *Store) putReq(r *request) {
	done := r.done
	*r = request{done: done}
	s.reqPool.Put(r)
}

// Append implements eventlog.Store. The event is committed to the database
// before Append returns. If ctx ends while the request waits for room in
// the writer's queue, Append returns ctx.Err() and nothing is appended.
func (s *Store) Append(ctx context.Context, stream, typ string, data []byte) (uint64, error) {
	if stream == "" {
		return 0, eventlog.ErrEmptyStream
	}
	r := s.getReq()
	r.kind, r.stream, r.typ, r.data = kindAppend, stream, typ, data
	err := s.submit(ctx, r)
	seq := r.seq
	s.putReq(r)
	if err != nil {
		return 0, err
	}
	return seq, nil
}

// SetState implements eventlog.Store.
func (s *Store) SetState(ctx context.Context, stream string, st eventlog.State) error {
	if stream == "" {
		return eventlog.ErrEmptyStream
	}
	if !st.Valid() {
		return fmt.Errorf("%w: %d", eventlog.ErrInvalidState, st)
	}
	r := s.getReq()
	r.kind, r.stream, r.state = kindState, stream, st
	err := s.submit(ctx, r)
	s.putReq(r)
	return err
}

func (s *Store) lookup(stream string) (info, error) {
	if s.isClosed() {
		return info{}, eventlog.ErrClosed
	}
	s.mu.RLock()
	in, ok := s.streams[stream]
	var v info
	if ok {
		v = *in
	}
	s.mu.RUnlock()
	if !ok {
		var n int
		if err := s.isDeleted.QueryRowContext(context.Background(), stream).Scan(&n); err != nil {
			return info{}, s.readErr("lookup", err)
		}
		if n > 0 {
			return info{}, eventlog.DeletedError(stream)
		}
		return info{}, fmt.Errorf("%w: %q", eventlog.ErrUnknownStream, stream)
	}
	return v, nil
}

// Delete implements eventlog.Store: the stream's rows are deleted and its
// id recorded as deleted in one transaction, committed before Delete
// returns.
func (s *Store) Delete(ctx context.Context, stream string) error {
	if stream == "" {
		return eventlog.ErrEmptyStream
	}
	r := s.getReq()
	r.kind, r.stream = kindDelete, stream
	err := s.submit(ctx, r)
	s.putReq(r)
	return err
}

// Streams implements eventlog.Store (from the in-memory cache of every
// stream; no query).
func (s *Store) Streams(ctx context.Context, dst []eventlog.StreamInfo) ([]eventlog.StreamInfo, error) {
	if err := ctx.Err(); err != nil {
		return dst, err
	}
	if s.isClosed() {
		return dst, eventlog.ErrClosed
	}
	start := len(dst)
	s.mu.RLock()
	for id, in := range s.streams {
		dst = append(dst, eventlog.StreamInfo{ID: id, State: in.state})
	}
	s.mu.RUnlock()
	slices.SortFunc(dst[start:], func(a, b eventlog.StreamInfo) int { return strings.Compare(a.ID, b.ID) })
	return dst, nil
}

func (s *Store) isClosed() bool { return s.closedFlag.Load() }

// readErr is classify for the read paths: a query that failed because Close
// closed the database under it reports ErrClosed, as the methods promise.
func (s *Store) readErr(op string, err error) error {
	if s.isClosed() {
		return fmt.Errorf("%w: %s: %v", eventlog.ErrClosed, op, err)
	}
	return s.classify(op, err)
}

// State implements eventlog.Store (from the in-memory cache; no query).
func (s *Store) State(stream string) (eventlog.State, error) {
	in, err := s.lookup(stream)
	return in.state, err
}

// first returns the oldest retained seq of a stream, honouring the
// retention bounds exactly even where rows are not deleted yet.
func (s *Store) first(ctx context.Context, stream string, in info) (uint64, error) {
	first := in.first
	if m := uint64(s.retention.MaxEvents); m > 0 && in.head >= m && in.head-m+1 > first {
		first = in.head - m + 1
	}
	if s.retention.MaxAge > 0 && first <= in.head {
		var oldest sql.NullInt64
		cutoff := time.Now().UnixNano() - int64(s.retention.MaxAge)
		err := s.db.QueryRowContext(ctx, `SELECT seq FROM events WHERE stream = ? AND seq >= ? AND ts > ? ORDER BY seq LIMIT 1`, stream, int64(first), cutoff).Scan(&oldest)
		if err != nil && !errors.Is(err, sql.ErrNoRows) {
			return 0, s.readErr("bounds", err)
		}
		if !oldest.Valid {
			return in.head + 1, nil
		}
		if uint64(oldest.Int64) > first {
			first = uint64(oldest.Int64)
		}
	}
	return first, nil
}

// Bounds implements eventlog.Store. Without age retention it runs no query.
func (s *Store) Bounds(ctx context.Context, stream string) (first, head uint64, err error) {
	in, err := s.lookup(stream)
	if err != nil {
		return 0, 0, err
	}
	first, err = s.first(ctx, stream, in)
	return first, in.head, err
}

// ReadAfter implements eventlog.Store. The Data of each event is a fresh
// copy owned by the caller.
func (s *Store) ReadAfter(ctx context.Context, stream string, after uint64, limit int, dst []eventlog.Event) ([]eventlog.Event, error) {
	in, err := s.lookup(stream)
	if err != nil {
		return dst, err
	}
	if after > in.head {
		return dst, fmt.Errorf("%w: stream %q: cursor %d, head %d", eventlog.ErrCursorAhead, stream, after, in.head)
	}
	first, err := s.first(ctx, stream, in)
	if err != nil {
		return dst, err
	}
	if after+1 < first {
		return dst, fmt.Errorf("%w: stream %q: cursor %d, oldest retained %d", eventlog.ErrCursorExpired, stream, after, first)
	}
	if after == in.head || limit == 0 {
		return dst, nil
	}
	if limit < 0 || uint64(limit) > in.head-after {
		limit = -1 // all of them: SQLite reads a negative LIMIT as none
	}
	rows, err := s.db.QueryContext(ctx, `SELECT seq, type, data FROM events WHERE stream = ? AND seq > ? AND seq <= ? ORDER BY seq LIMIT ?`,
		stream, int64(after), int64(in.head), limit)
	if err != nil {
		return dst, s.readErr("read", err)
	}
	defer rows.Close()
	want := after + 1
	for rows.Next() {
		var ev eventlog.Event
		var seq int64
		if err := rows.Scan(&seq, &ev.Type, &ev.Data); err != nil {
			return dst, s.readErr("read", err)
		}
		if uint64(seq) != want {
			// Rows were pruned or deleted under us: the range is no
			// longer whole.
			return dst, s.shortRead(stream, after)
		}
		ev.Seq = uint64(seq)
		dst = append(dst, ev)
		want++
	}
	if err := rows.Err(); err != nil {
		return dst, s.readErr("read", err)
	}
	if want == after+1 {
		return dst, s.shortRead(stream, after)
	}
	return dst, nil
}

// shortRead is the error of a read that found rows missing: the stream was
// deleted meanwhile, or retention pruned them. It asks the deleted table,
// not the in-memory cache: the writer records the id there in the same
// transaction that removes the rows, but updates the cache only after the
// commit, so a reader in between sees the rows gone while the cache still
// shows the stream.
func (s *Store) shortRead(stream string, after uint64) error {
	var n int
	if err := s.isDeleted.QueryRowContext(context.Background(), stream).Scan(&n); err != nil {
		return s.readErr("read", err)
	}
	if n > 0 {
		return eventlog.DeletedError(stream)
	}
	if _, err := s.lookup(stream); err != nil {
		return err
	}
	return fmt.Errorf("%w: stream %q: cursor %d", eventlog.ErrCursorExpired, stream, after)
}

// Close implements eventlog.Store: it lets the writer commit every request
// already queued, waits for it, and closes the database. Later calls return
// eventlog.ErrClosed; Close is idempotent.
func (s *Store) Close() error {
	s.closeMu.Lock()
	if s.closed {
		s.closeMu.Unlock()
		return nil
	}
	s.closed = true
	s.closedFlag.Store(true)
	close(s.reqs)
	s.closeMu.Unlock()
	s.writerWG.Wait()
	return s.db.Close()
}

// writer is the single goroutine that writes: it commits every request
// queued while it was busy in one transaction (group commit).
func (s *Store) writer() {
	defer s.writerWG.Done()
	batch := make([]*request, 0, s.maxBatch)
	for r := range s.reqs {
		batch = append(batch[:0], r)
	fill:
		for len(batch) < s.maxBatch {
			select {
			case r, ok := <-s.reqs:
				if !ok {
					break fill
				}
				batch = append(batch, r)
			default:
				break fill
			}
		}
		s.taken.Add(int64(len(batch)))
		s.commit(batch)
		for _, r := range batch {
			r.done <- struct{}{}
		}
		clear(batch)
	}
	for _, st := range []*sql.Stmt{s.insert, s.upsert, s.pruneCount, s.pruneAge, s.isDeleted} {
		st.Close()
	}
}

// commit runs one batch in one transaction and sets each request's result.
func (s *Store) commit(batch []*request) {
	locals := make(map[string]*local, 4)
	var order []string
	var tx *sql.Tx
	ctx := context.Background()
	get := func(id string) (*local, error) {
		if in, ok := locals[id]; ok {
			return in, nil
		}
		s.mu.RLock()
		in, ok := s.streams[id]
		v := local{exists: ok}
		if ok {
			v.info = *in
		} else {
			v.info = info{first: 1, state: eventlog.Created}
		}
		s.mu.RUnlock()
		if !ok {
			var n int
			if err := tx.StmtContext(ctx, s.isDeleted).QueryRowContext(ctx, id).Scan(&n); err != nil {
				return nil, s.classify("lookup", err)
			}
			v.deleted = n > 0
		}
		locals[id] = &v
		order = append(order, id)
		return &v, nil
	}
	fail := func(err error) {
		for _, r := range batch {
			if r.err == nil {
				r.err = err
			}
			r.seq = 0
		}
	}
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		fail(s.classify("begin", err))
		return
	}
	defer tx.Rollback()
	insert := tx.StmtContext(ctx, s.insert)
	now := time.Now().UnixNano()
	for _, r := range batch {
		in, err := get(r.stream)
		if err != nil {
			fail(err)
			return
		}
		if in.deleted {
			r.err = eventlog.DeletedError(r.stream)
			continue
		}
		switch r.kind {
		case kindDelete:
			if !in.exists {
				r.err = fmt.Errorf("%w: %q", eventlog.ErrUnknownStream, r.stream)
				continue
			}
			for _, q := range []string{`DELETE FROM events WHERE stream = ?`, `DELETE FROM streams WHERE id = ?`, `INSERT OR IGNORE INTO deleted (id) VALUES (?)`} {
				if _, err := tx.ExecContext(ctx, q, r.stream); err != nil {
					fail(s.classify("delete", err))
					return
				}
			}
			in.deleted, in.exists = true, false
		case kindState:
			if in.state == eventlog.Ended && r.state != eventlog.Ended {
				r.err = fmt.Errorf("%w: %q: cannot become %v", eventlog.ErrStreamEnded, r.stream, r.state)
				continue
			}
			in.state = r.state
			in.exists = true
		case kindAppend:
			if in.state == eventlog.Ended {
				r.err = fmt.Errorf("%w: %q", eventlog.ErrStreamEnded, r.stream)
				continue
			}
			ts := max(now, s.lastTS[r.stream]) // non-decreasing within a stream
			s.lastTS[r.stream] = ts
			seq := in.head + 1
			data := r.data
			if data == nil {
				data = []byte{}
			}
			if _, err := insert.ExecContext(ctx, r.stream, int64(seq), r.typ, data, ts); err != nil {
				fail(s.classify("insert", err))
				return
			}
			in.head = seq
			in.exists = true
			r.seq = seq
		}
	}
	upsert := tx.StmtContext(ctx, s.upsert)
	prune := tx.StmtContext(ctx, s.pruneCount)
	age := tx.StmtContext(ctx, s.pruneAge)
	for _, id := range order {
		in := locals[id]
		if !in.exists {
			continue // deleted in this batch, or no request on it succeeded
		}
		newFirst := in.first
		if m := uint64(s.retention.MaxEvents); m > 0 && in.head >= m && in.head-m+1 > newFirst {
			newFirst = in.head - m + 1
		}
		if s.retention.MaxAge > 0 && newFirst <= in.head {
			var oldest sql.NullInt64
			if err := age.QueryRowContext(ctx, id, now-int64(s.retention.MaxAge)).Scan(&oldest); err != nil && !errors.Is(err, sql.ErrNoRows) {
				fail(s.classify("prune", err))
				return
			}
			switch {
			case !oldest.Valid:
				newFirst = in.head + 1
			case uint64(oldest.Int64) > newFirst:
				newFirst = uint64(oldest.Int64)
			}
		}
		if newFirst > in.first {
			if _, err := prune.ExecContext(ctx, id, int64(newFirst)); err != nil {
				fail(s.classify("prune", err))
				return
			}
			in.first = newFirst
		}
		if _, err := upsert.ExecContext(ctx, id, int64(in.head), int64(in.first), int64(in.state)); err != nil {
			fail(s.classify("update stream", err))
			return
		}
	}
	if err := tx.Commit(); err != nil {
		fail(s.classify("commit", err))
		return
	}
	s.commits.Add(1)
	s.mu.Lock()
	for _, id := range order {
		lv := locals[id]
		if lv.deleted {
			delete(s.streams, id)
			delete(s.lastTS, id)
			continue
		}
		if !lv.exists {
			continue
		}
		v := lv.info
		if in, ok := s.streams[id]; ok {
			*in = v
		} else {
			s.streams[id] = &v
		}
	}
	s.mu.Unlock()
}
