package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"sync"
	"sync/atomic"
	"time"

	"github.com/steadfast-go/steadfast/eventlog"
	"github.com/steadfast-go/steadfast/eventlog/sqlitestore"
)

// Defaults used when a Config field is zero.
const (
	DefaultGapCap        = eventlog.DefaultGapCap
	DefaultMaxLag        = eventlog.DefaultMaxLag
	DefaultHeartbeat     = 15 * time.Second
	DefaultWriteTimeout  = 10 * time.Second
	DefaultMaxBodyBytes  = 64 << 10
	DefaultMaxPending    = 100
	DefaultRetryHint     = time.Second
	DefaultSyncInterval  = 30 * time.Second
	DefaultIdleTimeout   = 10 * time.Minute
	DefaultHistoryLimit  = 50
	MaxHistoryLimit      = 500
	DefaultMemoryHistory = 10000
	// DefaultEndedRetention is how long an ended session is kept before
	// the sync round deletes it.
	DefaultEndedRetention = 24 * time.Hour
	// DefaultDrain is how long Shutdown lets running replies finish.
	DefaultDrain = 10 * time.Second
)

// Config configures a Server. The zero Config is usable: in-memory log, the
// typing simulator, the defaults above.
type Config struct {
	// DBPath is the event log: a SQLite file, or a postgres:// URL of a
	// database that several servers (replicas) share; empty keeps events
	// in memory (lost on restart: clients then get reset).
	DBPath string
	// AdvertiseURL is how the other replicas reach this one (to forward
	// stop, interrupt and delete to the leader); empty means
	// http://<listen address>. Used with a PostgreSQL DBPath only.
	AdvertiseURL string
	// Agent answers user messages; nil means a Simulator.
	Agent Agent
	// GapCap is the most events replayed to a reconnecting client; a client
	// further behind gets a gap event.
	GapCap int
	// MaxLag is how many events a client may fall behind before it is cut
	// off with a cutoff event.
	MaxLag int
	// Heartbeat is the interval of SSE comment heartbeats.
	Heartbeat time.Duration
	// WriteTimeout bounds each write to an SSE client; a client that does
	// not read for this long is disconnected.
	WriteTimeout time.Duration
	// MaxBodyBytes bounds request bodies (413 beyond).
	MaxBodyBytes int64
	// MaxPending bounds the messages waiting for the agent per session (429
	// beyond).
	MaxPending int
	// RetryHint is the reconnection delay sent to EventSource clients.
	RetryHint time.Duration
	// SyncInterval is the period of the session sync round; negative
	// disables it.
	SyncInterval time.Duration
	// IdleTimeout is how long a session with no client and no running reply
	// stays Active before the sync round marks it Detached.
	IdleTimeout time.Duration
	// EndedRetention is how long an ended session is kept (readable, with
	// its history) before the sync round deletes it, freeing its events;
	// zero means DefaultEndedRetention, negative keeps ended sessions
	// forever. DELETE /sessions/{id} deletes one at once.
	EndedRetention time.Duration
	// MemoryHistory is how many events per session the in-memory log keeps
	// (default DefaultMemoryHistory); older ones get a gap or reset.
	MemoryHistory int
	// Drain is how long Shutdown lets running replies finish before it
	// cancels them (zero means DefaultDrain, negative: no drain). A reply
	// canceled there, and every message still queued, stay queued in the
	// log: the next start runs them, the canceled one after a restarted
	// event.
	Drain time.Duration
	// Logger receives structured logs; nil means slog.Default().
	Logger *slog.Logger
}

// Server serves chat sessions. It is safe for concurrent use. Create it
// with New and stop it with Shutdown, which waits for every goroutine it
// started.
type Server struct {
	cfg   Config
	log   *eventlog.Log
	sh    *shared // replicas on PostgreSQL; nil for an embedded log
	agent Agent
	lg    *slog.Logger
	mux   *http.ServeMux

	baseCtx    context.Context // canceled by Shutdown: agents and the sync loop
	cancelBase context.CancelFunc
	closing    context.Context // canceled by Shutdown first: SSE streams return
	endStreams context.CancelFunc

	draining atomic.Bool // set when Shutdown begins: sends and creates get 503

	mu       sync.Mutex // protects sessions, endedAt, stopped, hs
	sessions map[string]*session
	endedAt  map[string]time.Time // when each ended session was seen ended
	stopped  bool
	hs       *http.Server
	wg       sync.WaitGroup // the sync loop and the resume at start
	workers  sync.WaitGroup // the sessions' agent workers

	shutdownOnce sync.Once
	shutdownErr  error
}

// New opens the event log (SQLite when cfg.DBPath is set) and returns a
// Server. It starts the sync loop; call Shutdown to stop it.
//
// Errors: the SQLite store's (for example sqlitestore.ErrCorrupt).
func New(cfg Config) (*Server, error) {
	cfg = cfg.withDefaults()
	lg := cfg.Logger
	if lg == nil {
		lg = slog.Default()
	}
	l, sh, err := openLog(cfg)
	if err != nil {
		return nil, err
	}
	ag := cfg.Agent
	if ag == nil {
		ag = &Simulator{}
	}
	s := &Server{
		cfg: cfg, log: l, agent: ag, lg: lg, sh: sh,
		sessions: make(map[string]*session),
		endedAt:  make(map[string]time.Time),
	}
	s.baseCtx, s.cancelBase = context.WithCancel(context.Background())
	s.closing, s.endStreams = context.WithCancel(context.Background())
	s.routes()
	switch {
	case sh != nil:
		// The leader, once elected, resumes the queues and syncs.
		s.wg.Go(s.elect)
		s.wg.Go(s.refreshLoop)
	default:
		s.wg.Go(func() { s.resumeAll(s.baseCtx) })
		if cfg.SyncInterval > 0 {
			s.wg.Go(func() { s.syncLoop(s.baseCtx) })
		}
	}
	epoch, _ := l.Epoch(context.Background())
	lg.Info("event log opened", "db", redactDB(cfg.DBPath), "epoch", epoch)
	return s, nil
}

// withDefaults returns cfg with its zero fields set to the defaults.
func (cfg Config) withDefaults() Config {
	setInt := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	setDur := func(v *time.Duration, d time.Duration, zeroOnly bool) {
		if *v == 0 || (!zeroOnly && *v < 0) {
			*v = d
		}
	}
	setInt(&cfg.GapCap, DefaultGapCap)
	setInt(&cfg.MaxLag, DefaultMaxLag)
	setInt(&cfg.MaxPending, DefaultMaxPending)
	setInt(&cfg.MemoryHistory, DefaultMemoryHistory)
	if cfg.MaxBodyBytes <= 0 {
		cfg.MaxBodyBytes = DefaultMaxBodyBytes
	}
	setDur(&cfg.Heartbeat, DefaultHeartbeat, false)
	setDur(&cfg.WriteTimeout, DefaultWriteTimeout, false)
	setDur(&cfg.RetryHint, DefaultRetryHint, false)
	setDur(&cfg.IdleTimeout, DefaultIdleTimeout, false)
	setDur(&cfg.SyncInterval, DefaultSyncInterval, true)
	setDur(&cfg.EndedRetention, DefaultEndedRetention, true)
	setDur(&cfg.Drain, DefaultDrain, true)
	return cfg
}

// openLog opens the event log cfg names: PostgreSQL (shared by replicas),
// SQLite, or memory.
func openLog(cfg Config) (*eventlog.Log, *shared, error) {
	switch {
	case IsSharedDB(cfg.DBPath):
		st, sh, err := openShared(cfg.DBPath)
		if err != nil {
			return nil, nil, fmt.Errorf("server: open the PostgreSQL log %s: %w", redactDB(cfg.DBPath), err)
		}
		return eventlog.New(eventlog.WithStore(st)), sh, nil
	case cfg.DBPath != "":
		st, err := sqlitestore.Open(cfg.DBPath)
		if err != nil {
			return nil, nil, fmt.Errorf("server: open %s: %w", cfg.DBPath, err)
		}
		return eventlog.New(eventlog.WithStore(st)), nil, nil
	default:
		return eventlog.New(eventlog.WithRetention(eventlog.Retention{MaxEvents: cfg.MemoryHistory})), nil, nil
	}
}

// redactDB hides the password of a database URL for logs.
func redactDB(db string) string {
	if !IsSharedDB(db) {
		return db
	}
	if u, err := url.Parse(db); err == nil {
		return u.Redacted()
	}
	return "postgres://(unparsable URL)"
}

// Log returns the server's event log (for tests and tools).
func (s *Server) Log() *eventlog.Log { return s.log }

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.mux.ServeHTTP(w, r) }

// Serve serves HTTP on ln until Shutdown. It returns http.ErrServerClosed
// after Shutdown, or the listener's error.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		ln.Close()
		return http.ErrServerClosed
	}
	hs := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(s.lg.Handler(), slog.LevelWarn),
	}
	s.hs = hs
	s.mu.Unlock()
	if s.sh != nil && s.sh.self.Load() == nil {
		self := s.cfg.AdvertiseURL
		if self == "" {
			self = "http://" + ln.Addr().String()
		}
		s.sh.self.Store(&self)
		close(s.sh.ready)
	}
	return hs.Serve(ln)
}

// resumeAll loads every session of the log that is not ended, which
// resumes its queue: messages accepted before a crash or a deploy and never
// answered run now, in order, without waiting for a client to come back.
func (s *Server) resumeAll(ctx context.Context) {
	infos, err := s.log.Streams(ctx, func(st eventlog.State) bool { return st != eventlog.Ended })
	if err != nil {
		if ctx.Err() == nil && !errors.Is(err, eventlog.ErrClosed) {
			s.lg.Error("resume: list sessions", "err", err)
		}
		return
	}
	for _, in := range infos {
		if _, err := s.session(ctx, in.ID); err != nil && ctx.Err() == nil &&
			!errors.Is(err, eventlog.ErrStreamDeleted) && !errors.Is(err, eventlog.ErrClosed) {
			s.lg.Error("resume session", "session", in.ID, "err", err)
		}
	}
}

// Shutdown stops the server gracefully. It drains first: sends and session
// creation answer 503 and /healthz "draining", no queued message starts,
// and running replies get up to Config.Drain (or until ctx ends) to finish,
// while their clients keep streaming. Replies still running then are
// canceled without an outcome; they and the queued messages stay in the
// log for the next start. Then SSE streams end (clients resume by cursor
// from the next server), in-flight requests finish, and the log is closed.
// It is idempotent.
//
// Errors: ctx.Err() if ctx ends before requests finish (connections are then
// closed), or the log's Close error.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutdownOnce.Do(func() {
		s.mu.Lock() // startWorker checks it under s.mu: no worker starts past here
		s.draining.Store(true)
		s.mu.Unlock()
		s.drain(ctx)
		s.endStreams()
		s.mu.Lock()
		hs := s.hs
		s.mu.Unlock()
		var errs []error
		if hs != nil {
			if err := hs.Shutdown(ctx); err != nil {
				errs = append(errs, err)
				hs.Close()
			}
		}
		s.mu.Lock()
		s.stopped = true
		s.mu.Unlock()
		s.cancelBase()
		s.workers.Wait()
		s.wg.Wait()
		if err := s.log.Close(); err != nil {
			errs = append(errs, err)
		}
		if s.sh != nil {
			s.sh.pool.Close()
		}
		s.shutdownErr = errors.Join(errs...)
	})
	return s.shutdownErr
}

// drain waits up to Config.Drain (and no longer than ctx) for the running
// replies to finish, then cancels the rest.
func (s *Server) drain(ctx context.Context) {
	idle := make(chan struct{})
	go func() {
		s.workers.Wait()
		close(idle)
	}()
	if s.cfg.Drain > 0 {
		s.lg.Info("draining", "for", s.cfg.Drain)
		t := time.NewTimer(s.cfg.Drain)
		defer t.Stop()
		select {
		case <-idle:
			return
		case <-t.C:
		case <-ctx.Done():
		}
	}
	s.cancelBase()
	<-idle
}

func (s *Server) routes() {
	m := http.NewServeMux()
	m.HandleFunc("GET /{$}", s.handleIndex)
	m.HandleFunc("GET /healthz", s.handleHealth)
	m.HandleFunc("POST /sessions", s.handleCreate)
	m.HandleFunc("GET /sessions/{id}", s.withSession(s.handleInfo))
	m.HandleFunc("GET /sessions/{id}/events", s.withSession(s.handleEvents))
	m.HandleFunc("GET /sessions/{id}/history", s.withSession(s.handleHistory))
	m.HandleFunc("POST /sessions/{id}/send", s.withSession(s.handleSend))
	m.HandleFunc("POST /sessions/{id}/stop", s.withSession(s.handleStop))
	m.HandleFunc("POST /sessions/{id}/interrupt", s.withSession(s.handleInterrupt))
	m.HandleFunc("DELETE /sessions/{id}", s.withSession(s.handleDelete))
	m.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint: "+r.Method+" "+r.URL.Path)
	})
	s.mux = m
}

// errorBody is every error response.
type errorBody struct {
	Error string `json:"error"`
	State string `json:"state,omitempty"`
	// ID is the cursor of the original message of a send retried with a
	// known idempotency key (409, 422).
	ID string `json:"id,omitempty"`
}

// unavailable answers 503 while the server drains or shuts down: the
// client retries, in order, against the next server.
func (s *Server) unavailable(w http.ResponseWriter) {
	w.Header().Set("Retry-After", "1")
	writeError(w, http.StatusServiceUnavailable, "server shutting down")
}

// HealthResponse is the body of GET /healthz.
type HealthResponse struct {
	// Status is "ok", or "draining" (answered with 503) once Shutdown has
	// begun: a load balancer stops sending new requests here.
	Status string `json:"status"`
}

func (s *Server) handleHealth(w http.ResponseWriter, r *http.Request) {
	if s.draining.Load() {
		writeJSON(w, http.StatusServiceUnavailable, HealthResponse{Status: "draining"})
		return
	}
	writeJSON(w, http.StatusOK, HealthResponse{Status: "ok"})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		code, b = http.StatusInternalServerError, []byte(`{"error":"encoding the response failed"}`)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(code)
	w.Write(append(b, '\n'))
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, errorBody{Error: msg})
}

var idPattern = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// withSession resolves {id} to a loaded session, answering 404 for an
// unknown or malformed id.
func (s *Server) withSession(h func(http.ResponseWriter, *http.Request, *session)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		if !idPattern.MatchString(id) {
			writeError(w, http.StatusNotFound, "unknown session")
			return
		}
		sess, err := s.session(r.Context(), id)
		switch {
		case errors.Is(err, eventlog.ErrStreamDeleted):
			writeError(w, http.StatusGone, "session "+id+" was deleted")
		case errors.Is(err, eventlog.ErrUnknownStream):
			writeError(w, http.StatusNotFound, "unknown session "+id)
		case errors.Is(err, eventlog.ErrClosed):
			writeError(w, http.StatusServiceUnavailable, "server shutting down")
		case err != nil:
			s.lg.Error("load session", "session", id, "err", err)
			writeError(w, http.StatusInternalServerError, "loading the session failed")
		default:
			h(w, r, sess)
		}
	}
}

// decodeBody decodes one JSON object from r's body into v, bounded by
// MaxBodyBytes. It answers the request and returns false on failure.
func (s *Server) decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	body := http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes)
	dec := json.NewDecoder(body)
	err := dec.Decode(v)
	if err == nil {
		if _, terr := dec.Token(); terr != io.EOF {
			err = errors.New("trailing data after the JSON object")
		}
	}
	if err == nil {
		return true
	}
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("request body larger than %d bytes", mbe.Limit))
	case errors.Is(err, io.EOF):
		writeError(w, http.StatusBadRequest, "empty request body: want a JSON object")
	default:
		writeError(w, http.StatusBadRequest, "malformed JSON: "+err.Error())
	}
	return false
}

// ParseResumeCursor returns the cursor a client resumes from: the
// Last-Event-ID header if present (a browser's EventSource sends its latest
// id there on every reconnect, while its URL keeps the first ?cursor=),
// else the cursor query parameter, else the zero cursor.
//
// Errors: one wrapping eventlog.ErrBadCursor for a malformed value.
func ParseResumeCursor(header, query string) (eventlog.Cursor, error) {
	v := header
	if v == "" {
		v = query
	}
	if v == "" {
		return eventlog.Cursor{}, nil
	}
	return eventlog.ParseCursor(v)
}
