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
// The database uses synchronous=FULL: every commit is fsynced before Append
// returns, so an acknowledged append survives a power loss too. (With
// NORMAL, the usual WAL setting, a power loss may undo the last commits
// while the epoch survives, and a client's cursor would then name a seq the
// store reassigns to another event: the one divergence an epoch cannot
// catch. Group commit keeps the cost to one fsync per batch; bench/README
// has the numbers.)
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

	notify atomic.Pointer[func(string)] // set by Watch

	reqPool sync.Pool
	commits atomic.Int64 // transactions committed, for tests
	taken   atomic.Int64 // requests taken by the writer, for tests

	// Used by the writer goroutine only.
	insert, upsert, pruneCount, isDeleted *sql.Stmt
	lastTS                                map[string]int64
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
	dsn := "file:" + uriPath.Replace(path) + "?_pragma=busy_timeout(10000)&_pragma=journal_mode(WAL)&_pragma=synchronous(" + syncMode + ")&_txlock=immediate"
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

// syncMode is the synchronous pragma; tests of the cost of FULL set it.
var syncMode = "FULL"

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
	s.isDeleted = prep(`SELECT count(*) FROM deleted WHERE id = ?`)
	if err != nil {
		return s.classify("prepare", err)
	}
	return nil
}

// Epoch implements eventlog.Store: the epoch stored in the database.
func (s *Store) Epoch(ctx context.Context) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	if s.isClosed() {
		return "", eventlog.ErrClosed
	}
	return s.epoch, nil
}

// Watch implements eventlog.Store: fn is called by the writer goroutine
// after every commit, once per stream the commit touched.
func (s *Store) Watch(fn func(stream string)) { s.notify.Store(&fn) }

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
func (s *Store) Append(ctx context.Context, stream, typ string, data []byte) (eventlog.Cursor, error) {
	if stream == "" {
		return eventlog.Cursor{}, eventlog.ErrEmptyStream
	}
	r := s.getReq()
	r.kind, r.stream, r.typ, r.data = kindAppend, stream, typ, data
	err := s.submit(ctx, r)
	seq := r.seq
	s.putReq(r)
	if err != nil {
		return eventlog.Cursor{}, err
	}
	return eventlog.Cursor{Epoch: s.epoch, Seq: seq}, nil
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

func (s *Store) lookup(ctx context.Context, stream string) (info, error) {
	if err := ctx.Err(); err != nil {
		return info{}, err
	}
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
		if err := s.isDeleted.QueryRowContext(ctx, stream).Scan(&n); err != nil {
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
func (s *Store) State(ctx context.Context, stream string) (eventlog.State, error) {
	in, err := s.lookup(ctx, stream)
	return in.state, err
}

// countFirst is the oldest seq that count retention keeps of a stream
// whose oldest unpruned seq is first and whose head is head: the last
// maxEvents seqs (0 means no bound). It is pure.
func countFirst(maxEvents int, first, head uint64) uint64 {
	if m := uint64(maxEvents); m > 0 && head >= m && head-m+1 > first {
		return head - m + 1
	}
	return first
}

// querier is what retainedFrom needs of a *sql.DB or a *sql.Tx.
type querier interface {
	QueryRowContext(ctx context.Context, query string, args ...any) *sql.Row
}

// retainedFrom returns the oldest retained seq of a stream at time now,
// honouring both retention bounds exactly, also where rows are not pruned
// yet: the reads and the trimming in commit share it.
func (s *Store) retainedFrom(ctx context.Context, q querier, stream string, in info, now int64) (uint64, error) {
	first := countFirst(s.retention.MaxEvents, in.first, in.head)
	if s.retention.MaxAge <= 0 || first > in.head {
		return first, nil
	}
	var oldest sql.NullInt64
	cutoff := now - int64(s.retention.MaxAge)
	err := q.QueryRowContext(ctx, `SELECT seq FROM events WHERE stream = ? AND seq >= ? AND ts > ? ORDER BY seq LIMIT 1`, stream, int64(first), cutoff).Scan(&oldest)
	switch {
	case err != nil && !errors.Is(err, sql.ErrNoRows):
		return 0, s.readErr("retention", err)
	case !oldest.Valid:
		return in.head + 1, nil
	}
	return max(first, uint64(oldest.Int64)), nil
}

// Bounds implements eventlog.Store. Without age retention it runs no query.
func (s *Store) Bounds(ctx context.Context, stream string) (eventlog.Bounds, error) {
	in, err := s.lookup(ctx, stream)
	if err != nil {
		return eventlog.Bounds{}, err
	}
	first, err := s.retainedFrom(ctx, s.db, stream, in, time.Now().UnixNano())
	if err != nil {
		return eventlog.Bounds{}, err
	}
	return eventlog.Bounds{Epoch: s.epoch, First: first, Head: in.head}, nil
}

// ReadAfter implements eventlog.Store. The Data of each event is a fresh
// copy owned by the caller.
func (s *Store) ReadAfter(ctx context.Context, stream string, from eventlog.Cursor, limit int, dst []eventlog.Event) ([]eventlog.Event, error) {
	in, err := s.lookup(ctx, stream)
	if err != nil {
		return dst, err
	}
	if from.Epoch != "" && from.Epoch != s.epoch {
		return dst, fmt.Errorf("%w: stream %q: cursor epoch %q, store epoch %q", eventlog.ErrWrongEpoch, stream, from.Epoch, s.epoch)
	}
	after := from.Seq
	if after > in.head {
		return dst, fmt.Errorf("%w: stream %q: cursor %d, head %d", eventlog.ErrCursorAhead, stream, after, in.head)
	}
	first, err := s.retainedFrom(ctx, s.db, stream, in, time.Now().UnixNano())
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
			return dst, s.shortRead(ctx, stream, after)
		}
		ev.Seq = uint64(seq)
		dst = append(dst, ev)
		want++
	}
	if err := rows.Err(); err != nil {
		return dst, s.readErr("read", err)
	}
	if want == after+1 {
		return dst, s.shortRead(ctx, stream, after)
	}
	return dst, nil
}

// shortRead is the error of a read that found rows missing: the stream was
// deleted meanwhile, or retention pruned them. It asks the deleted table,
// not the in-memory cache: the writer records the id there in the same
// transaction that removes the rows, but updates the cache only after the
// commit, so a reader in between sees the rows gone while the cache still
// shows the stream.
func (s *Store) shortRead(ctx context.Context, stream string, after uint64) error {
	var n int
	if err := s.isDeleted.QueryRowContext(ctx, stream).Scan(&n); err != nil {
		return s.readErr("read", err)
	}
	if n > 0 {
		return eventlog.DeletedError(stream)
	}
	if _, err := s.lookup(ctx, stream); err != nil {
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
	for _, st := range []*sql.Stmt{s.insert, s.upsert, s.pruneCount, s.isDeleted} {
		st.Close()
	}
}

// commit runs one batch in one transaction and sets each request's result:
// load the rows the batch touches, decide every request (decide, pure),
// write the decided rows, trim by retention, commit, then publish the new
// rows to the cache and tell the watcher.
func (s *Store) commit(batch []*request) {
	ctx := context.Background()
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
	rows, order, err := s.load(ctx, tx, batch)
	if err != nil {
		fail(err)
		return
	}
	now := time.Now().UnixNano()
	writes := decide(batch, rows, s.lastTS, now)
	if err := s.write(ctx, tx, writes); err != nil {
		fail(err)
		return
	}
	if err := s.retain(ctx, tx, rows, order, now); err != nil {
		fail(err)
		return
	}
	if err := tx.Commit(); err != nil {
		fail(s.classify("commit", err))
		return
	}
	s.commits.Add(1)
	s.publish(rows, order)
}

// load reads the row of every stream the batch touches: the cached info,
// and for ids the cache does not know, whether they are deleted.
func (s *Store) load(ctx context.Context, tx *sql.Tx, batch []*request) (map[string]*local, []string, error) {
	rows := make(map[string]*local, 4)
	var order []string
	isDeleted := tx.StmtContext(ctx, s.isDeleted)
	for _, r := range batch {
		if _, ok := rows[r.stream]; ok {
			continue
		}
		s.mu.RLock()
		in, ok := s.streams[r.stream]
		v := local{exists: ok, info: info{first: 1, state: eventlog.Created}}
		if ok {
			v.info = *in
		}
		s.mu.RUnlock()
		if !ok {
			var n int
			if err := isDeleted.QueryRowContext(ctx, r.stream).Scan(&n); err != nil {
				return nil, nil, s.classify("lookup", err)
			}
			v.deleted = n > 0
		}
		rows[r.stream] = &v
		order = append(order, r.stream)
	}
	return rows, order, nil
}

// write is one row change decided by decide.
type write struct {
	del    bool   // delete the stream (else insert an event)
	stream string // the stream
	seq    uint64 // the event's seq
	typ    string
	data   []byte
	ts     int64 // the event's append time
}

// decide applies the batch's requests, in order, to rows (the streams as
// the batch starts; updated in place), sets each request's seq or error,
// and returns the row changes to write. It does no I/O. lastTS keeps each
// stream's last append time, so that times never decrease within a stream.
func decide(batch []*request, rows map[string]*local, lastTS map[string]int64, now int64) []write {
	var ws []write
	for _, r := range batch {
		in := rows[r.stream]
		switch {
		case in.deleted:
			r.err = eventlog.DeletedError(r.stream)
		case r.kind == kindDelete && !in.exists:
			r.err = fmt.Errorf("%w: %q", eventlog.ErrUnknownStream, r.stream)
		case r.kind == kindDelete:
			in.deleted, in.exists = true, false
			ws = append(ws, write{del: true, stream: r.stream})
		case r.kind == kindState && in.state == eventlog.Ended && r.state != eventlog.Ended:
			r.err = fmt.Errorf("%w: %q: cannot become %v", eventlog.ErrStreamEnded, r.stream, r.state)
		case r.kind == kindState:
			in.state, in.exists = r.state, true
		case in.state == eventlog.Ended: // an append
			r.err = fmt.Errorf("%w: %q", eventlog.ErrStreamEnded, r.stream)
		default:
			ts := max(now, lastTS[r.stream])
			lastTS[r.stream] = ts
			in.head++
			in.exists = true
			r.seq = in.head
			ws = append(ws, write{stream: r.stream, seq: in.head, typ: r.typ, data: r.data, ts: ts})
		}
	}
	return ws
}

// write carries out the decided row changes in tx.
func (s *Store) write(ctx context.Context, tx *sql.Tx, ws []write) error {
	insert := tx.StmtContext(ctx, s.insert)
	for _, w := range ws {
		if w.del {
			for _, q := range []string{`DELETE FROM events WHERE stream = ?`, `DELETE FROM streams WHERE id = ?`, `INSERT OR IGNORE INTO deleted (id) VALUES (?)`} {
				if _, err := tx.ExecContext(ctx, q, w.stream); err != nil {
					return s.classify("delete", err)
				}
			}
			continue
		}
		data := w.data
		if data == nil {
			data = []byte{}
		}
		if _, err := insert.ExecContext(ctx, w.stream, int64(w.seq), w.typ, data, w.ts); err != nil {
			return s.classify("insert", err)
		}
	}
	return nil
}

// retain trims every stream of the batch to the retention bounds and writes
// its row (head, oldest retained seq, state), in tx.
func (s *Store) retain(ctx context.Context, tx *sql.Tx, rows map[string]*local, order []string, now int64) error {
	upsert := tx.StmtContext(ctx, s.upsert)
	prune := tx.StmtContext(ctx, s.pruneCount)
	for _, id := range order {
		in := rows[id]
		if !in.exists {
			continue // deleted in this batch, or no request on it succeeded
		}
		first, err := s.retainedFrom(ctx, tx, id, in.info, now)
		if err != nil {
			return err
		}
		if first > in.first {
			if _, err := prune.ExecContext(ctx, id, int64(first)); err != nil {
				return s.classify("prune", err)
			}
			in.first = first
		}
		if _, err := upsert.ExecContext(ctx, id, int64(in.head), int64(in.first), int64(in.state)); err != nil {
			return s.classify("update stream", err)
		}
	}
	return nil
}

// publish copies the committed rows into the cache and tells the watcher.
func (s *Store) publish(rows map[string]*local, order []string) {
	s.mu.Lock()
	for _, id := range order {
		lv := rows[id]
		switch {
		case lv.deleted:
			delete(s.streams, id)
			delete(s.lastTS, id)
		case lv.exists:
			v := lv.info
			if in, ok := s.streams[id]; ok {
				*in = v
			} else {
				s.streams[id] = &v
			}
		}
	}
	s.mu.Unlock()
	if fn := s.notify.Load(); fn != nil {
		for _, id := range order {
			(*fn)(id)
		}
	}
}
