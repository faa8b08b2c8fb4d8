package server

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/steadfast-go/steadfast/eventlog"
)

// Stored event types.
const (
	TypeUser        = "user"
	TypeDelta       = "delta"
	TypeDone        = "done"
	TypeInterrupted = "interrupted"
	// TypeFailed is the outcome of a reply that failed (an agent error or
	// panic, or a message not answered because the session was stopped).
	// It is not named "error": that name is EventSource's own error event,
	// and a page listening for it would take every failure for a dropped
	// connection.
	TypeFailed = "failed"
	// TypeRestarted says the reply to ReplyTo was cut mid-way by a crash
	// or a deploy and is being run again from the start: a client drops the
	// partial reply it shows and appends the deltas that follow.
	TypeRestarted = "restarted"
	TypeState     = "state"
)

// typeLegacyError is what TypeFailed was called before: logs written by
// older versions still hold it, and it is read as TypeFailed.
const typeLegacyError = "error"

// Payloads of stored events (the SSE data field, and history entries).
type (
	// UserEvent is a stored user message.
	UserEvent struct {
		Key  string `json:"key"`
		Text string `json:"text"`
	}
	// ReplyEvent is a delta, done, interrupted, failed or restarted event
	// of the reply to the message with key ReplyTo.
	ReplyEvent struct {
		ReplyTo string `json:"reply_to,omitempty"`
		Text    string `json:"text,omitempty"`
		Error   string `json:"error,omitempty"`
		// Reason says why a reply was restarted.
		Reason string `json:"reason,omitempty"`
	}
	// StateEvent announces a session state: created, active, error,
	// detached or ended.
	StateEvent struct {
		State  string `json:"state"`
		Detail string `json:"detail,omitempty"`
	}
)

// Limits of a send request.
const (
	MaxTextBytes = 16 << 10
	MaxKeyBytes  = 128
)

var (
	errInterrupted = errors.New("interrupted by the user")
	errStopped     = errors.New("session stopped")
)

// accepted is what the server knows of one accepted message: where its user
// event is, a digest of its text (a key reused with other text is refused),
// and whether its reply has an outcome.
type accepted struct {
	seq      uint64
	sum      [sha256.Size]byte
	answered bool
}

// queued is a message waiting for the agent. Restart is set for a message
// whose reply was cut mid-way (by a crash or the end of a drain): a
// restarted event goes first, so no client takes the partial reply and the
// new one for one reply.
type queued struct {
	UserEvent
	restart bool
}

// session is the in-memory side of one stream: the idempotency index and
// the agent work queue. Both are derived from the stream, which is the
// truth: an accepted message is a user event in the log before its 202, and
// its place in the queue is its place in the stream, so a restarted server
// rebuilds the queue from the log and runs it in order.
type session struct {
	id string

	mu         chanMutex
	keys       map[string]*accepted // idempotency key -> its message
	started    map[string]bool      // a delta of the reply was stored since its last (re)start
	unanswered int                  // accepted messages with no outcome yet (queued or running)
	indexed    uint64               // the last seq applied to keys and started
	queue      []queued             // accepted, waiting for the agent
	running    bool                 // a worker goroutine is active
	workerDone chan struct{}        // closed when the running worker exits
	cancel     context.CancelCauseFunc
	stopping   bool
	clients    int       // SSE streams attached
	lastActive time.Time // last send, reply or client detach
}

// chanMutex is a mutex whose Lock can be abandoned when a context ends
// (send handlers must not hang behind a stuck append).
type chanMutex chan struct{}

func newChanMutex() chanMutex { return make(chanMutex, 1) }

func (m chanMutex) Lock()   { m <- struct{}{} }
func (m chanMutex) Unlock() { <-m }

func (m chanMutex) LockCtx(ctx context.Context) error {
	select {
	case m <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func newSessionID() string {
	var b [8]byte
	rand.Read(b[:])
	return "s" + hex.EncodeToString(b[:])
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic("server: " + err.Error()) // only plain structs of strings are marshaled
	}
	return b
}

// stateName is the state a client sees: an errored session is Suspended in
// the log.
func stateName(st eventlog.State) string {
	if st == eventlog.Suspended {
		return "error"
	}
	return st.String()
}

func newSession(id string) *session {
	return &session{id: id, mu: newChanMutex(), keys: make(map[string]*accepted), started: make(map[string]bool), lastActive: time.Now()}
}

// session returns the loaded session id, loading it from the log (after a
// restart) if needed. Loading resumes the session's queue: the accepted
// messages that have no outcome yet run again, in order.
//
// Errors: eventlog.ErrUnknownStream, eventlog.ErrClosed, or a read error.
func (s *Server) session(ctx context.Context, id string) (*session, error) {
	s.mu.Lock()
	sess := s.sessions[id]
	s.mu.Unlock()
	if sess != nil {
		return sess, nil
	}
	st, err := s.log.State(ctx, id)
	if err != nil {
		return nil, err
	}
	sess = newSession(id)
	open, err := s.rebuild(ctx, sess)
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	if other := s.sessions[id]; other != nil {
		s.mu.Unlock()
		return other, nil
	}
	s.sessions[id] = sess
	s.mu.Unlock()
	// A DELETE may have removed the stream while it was being loaded: do
	// not keep a session for it.
	if _, err := s.log.State(ctx, id); err != nil {
		s.forget(id)
		return nil, err
	}
	if st != eventlog.Ended && len(open) > 0 && s.runCtx() != nil {
		sess.mu.Lock()
		if st == eventlog.Created || st == eventlog.Detached {
			// A session with a reply to run is active (and synced) again.
			if err := s.setState(sess, eventlog.Active, "resumed"); err != nil {
				s.lg.Warn("resume: set active", "session", id, "err", err)
			}
		}
		sess.queue = append(open, sess.queue...)
		s.startWorker(sess)
		sess.mu.Unlock()
		s.lg.Info("session queue resumed", "session", id, "messages", len(open), "restarted", open[0].restart)
	}
	return sess, nil
}

// rebuild reads a session's stream to rebuild its idempotency index (so a
// send retried across a restart still executes once) and returns its
// queue: the messages with no outcome yet, in stream order, the first of
// them marked for a restart if its reply was cut mid-way.
func (s *Server) rebuild(ctx context.Context, sess *session) ([]queued, error) {
	var (
		buf   []eventlog.Event
		order []UserEvent
	)
	// Older history may have been dropped by retention: keys of those
	// messages are forgotten (the dedup window is the retention). Start at
	// the oldest retained event.
	oldest, err := s.log.Oldest(ctx, sess.id)
	if err != nil {
		return nil, err
	}
	after := oldest - 1
	for {
		evs, err := s.log.ReadAfterInto(ctx, sess.id, eventlog.Cursor{Seq: after}, 1000, buf)
		if errors.Is(err, eventlog.ErrCursorExpired) {
			// Retention moved on while we read: continue from its new start.
			if oldest, err = s.log.Oldest(ctx, sess.id); err != nil {
				return nil, err
			}
			after = max(after, oldest-1)
			continue
		}
		if errors.Is(err, eventlog.ErrCursorAhead) {
			break
		}
		if err != nil {
			return nil, err
		}
		if len(evs) == 0 {
			break
		}
		for _, ev := range evs {
			if u, ok := sess.replay(ev, sess.started); ok {
				order = append(order, u)
			}
		}
		after = evs[len(evs)-1].Seq
		buf = evs
	}
	sess.indexed = after
	var open []queued
	for _, u := range order {
		if !sess.keys[u.Key].answered {
			open = append(open, queued{UserEvent: u, restart: sess.started[u.Key]})
		}
	}
	return open, nil
}

// replay applies one stored event to the idempotency index; it returns the
// message of a user event seen for the first time.
func (sess *session) replay(ev eventlog.Event, started map[string]bool) (UserEvent, bool) {
	if ev.Type == TypeUser {
		var u UserEvent
		if json.Unmarshal(ev.Data, &u) != nil || u.Key == "" || sess.keys[u.Key] != nil {
			return UserEvent{}, false
		}
		sess.accept(u, ev.Seq)
		return u, true
	}
	var re ReplyEvent
	if json.Unmarshal(ev.Data, &re) != nil || re.ReplyTo == "" {
		return UserEvent{}, false
	}
	switch ev.Type {
	case TypeDelta:
		started[re.ReplyTo] = true
	case TypeRestarted:
		started[re.ReplyTo] = false
	case TypeDone, TypeInterrupted, TypeFailed, typeLegacyError:
		sess.answer(re.ReplyTo)
	}
	return UserEvent{}, false
}

// accept records message u, stored at seq, in the idempotency index.
func (sess *session) accept(u UserEvent, seq uint64) {
	sess.keys[u.Key] = &accepted{seq: seq, sum: sha256.Sum256([]byte(u.Text))}
	sess.unanswered++
}

// answer records that the message with key has an outcome.
func (sess *session) answer(key string) {
	if a := sess.keys[key]; a != nil && !a.answered {
		a.answered = true
		sess.unanswered--
	}
}

// append stores one event; its error is logged and returned.
func (s *Server) append(sess *session, typ string, payload any) (eventlog.Cursor, error) {
	c, err := s.log.AppendEvent(context.Background(), sess.id, typ, mustJSON(payload))
	if err != nil && !errors.Is(err, eventlog.ErrStreamEnded) && !errors.Is(err, eventlog.ErrClosed) && !errors.Is(err, eventlog.ErrStreamDeleted) {
		s.lg.Error("append", "session", sess.id, "type", typ, "err", err)
	}
	return c, err
}

// setState stores st and announces it with a state event.
func (s *Server) setState(sess *session, st eventlog.State, detail string) error {
	name := stateName(st)
	if st != eventlog.Ended {
		if err := s.log.SetState(context.Background(), sess.id, st); err != nil {
			return err
		}
		_, err := s.append(sess, TypeState, StateEvent{State: name, Detail: detail})
		return err
	}
	// The announcement goes first: an ended stream takes no more events.
	if _, err := s.append(sess, TypeState, StateEvent{State: name, Detail: detail}); err != nil {
		return err
	}
	return s.log.SetState(context.Background(), sess.id, st)
}

type sessionInfo struct {
	ID    string `json:"id"`
	State string `json:"state"`
	Head  string `json:"head"`
}

// cursor pairs seq with the log's current epoch (the zero epoch if the log
// cannot tell).
func (s *Server) cursor(ctx context.Context, seq uint64) eventlog.Cursor {
	epoch, _ := s.log.Epoch(ctx)
	return eventlog.Cursor{Epoch: epoch, Seq: seq}
}

func (s *Server) info(ctx context.Context, id string) (sessionInfo, error) {
	st, err := s.log.State(ctx, id)
	if err != nil {
		return sessionInfo{}, err
	}
	h, err := s.log.Head(ctx, id)
	if err != nil {
		return sessionInfo{}, err
	}
	return sessionInfo{ID: id, State: stateName(st), Head: h.String()}, nil
}

func (s *Server) handleCreate(w http.ResponseWriter, r *http.Request) {
	if s.draining.Load() {
		s.unavailable(w)
		return
	}
	var id string
	var sess *session
	for try := 0; ; try++ {
		id = newSessionID()
		sess = newSession(id)
		err := s.setState(sess, eventlog.Created, "")
		if err == nil {
			break
		}
		// A deleted id is never reused; a random one hitting it is all
		// but impossible, but costs only another try.
		if !errors.Is(err, eventlog.ErrStreamDeleted) || try == 2 {
			s.internalError(w, "create session", id, err)
			return
		}
	}
	s.mu.Lock()
	s.sessions[id] = sess
	s.mu.Unlock()
	inf, err := s.info(r.Context(), id)
	if err != nil {
		s.internalError(w, "create session", id, err)
		return
	}
	s.lg.Info("session created", "session", id)
	writeJSON(w, http.StatusCreated, inf)
}

func (s *Server) internalError(w http.ResponseWriter, op, id string, err error) {
	if errors.Is(err, eventlog.ErrClosed) {
		writeError(w, http.StatusServiceUnavailable, "server shutting down")
		return
	}
	if errors.Is(err, eventlog.ErrStreamDeleted) {
		writeError(w, http.StatusGone, "session deleted")
		return
	}
	s.lg.Error(op, "session", id, "err", err)
	writeError(w, http.StatusInternalServerError, op+" failed")
}

func (s *Server) handleInfo(w http.ResponseWriter, r *http.Request, sess *session) {
	inf, err := s.info(r.Context(), sess.id)
	if err != nil {
		s.internalError(w, "session info", sess.id, err)
		return
	}
	writeJSON(w, http.StatusOK, inf)
}

// SendRequest is the body of POST /sessions/{id}/send.
type SendRequest struct {
	Text           string `json:"text"`
	IdempotencyKey string `json:"idempotency_key"`
}

// SendResponse answers a send: Status is "accepted" (202) and ID is the
// cursor of the stored user event. A retry of a send whose reply has an
// outcome gets the same answer again, with the header Idempotency-Replayed:
// true, and nothing is stored or executed again.
type SendResponse struct {
	Status string `json:"status"`
	ID     string `json:"id"`
}

// sendKey returns the request's idempotency key: the Idempotency-Key header
// (the IETF draft's) or the body's idempotency_key; it answers 400 and
// returns false when both are set and differ.
func sendKey(w http.ResponseWriter, r *http.Request, req *SendRequest) bool {
	hk := r.Header.Get("Idempotency-Key")
	if hk == "" {
		return true
	}
	if req.IdempotencyKey != "" && req.IdempotencyKey != hk {
		writeError(w, http.StatusBadRequest, "the Idempotency-Key header and idempotency_key differ")
		return false
	}
	req.IdempotencyKey = hk
	return true
}

func validSend(w http.ResponseWriter, req SendRequest) bool {
	switch {
	case req.IdempotencyKey == "":
		writeError(w, http.StatusBadRequest, "idempotency_key is required")
	case len(req.IdempotencyKey) > MaxKeyBytes:
		writeError(w, http.StatusBadRequest, fmt.Sprintf("idempotency_key longer than %d bytes", MaxKeyBytes))
	case strings.TrimSpace(req.Text) == "":
		writeError(w, http.StatusBadRequest, "text is empty")
	case len(req.Text) > MaxTextBytes:
		writeError(w, http.StatusRequestEntityTooLarge, fmt.Sprintf("text longer than %d bytes", MaxTextBytes))
	case !utf8.ValidString(req.Text):
		writeError(w, http.StatusBadRequest, "text is not valid UTF-8")
	default:
		return true
	}
	return false
}

func (s *Server) handleSend(w http.ResponseWriter, r *http.Request, sess *session) {
	if s.draining.Load() {
		s.unavailable(w)
		return
	}
	var req SendRequest
	if !s.decodeBody(w, r, &req) || !sendKey(w, r, &req) || !validSend(w, req) {
		return
	}
	// With replicas, the session's lock across them is held from the key
	// check to the append, and the index is first brought up to date with
	// what the others accepted.
	unlock, err := s.sharedLock(r.Context(), sess.id)
	if err != nil {
		if r.Context().Err() == nil {
			s.internalError(w, "send", sess.id, err)
		}
		return
	}
	defer unlock()
	if err := sess.mu.LockCtx(r.Context()); err != nil {
		return // the client left
	}
	defer sess.mu.Unlock()
	if s.sh != nil {
		if err := s.refresh(r.Context(), sess); err != nil {
			s.internalError(w, "send", sess.id, err)
			return
		}
	}
	if a := sess.keys[req.IdempotencyKey]; a != nil {
		s.answerRetry(w, r, a, req.Text)
		return
	}
	s.accept(w, r, sess, UserEvent{Key: req.IdempotencyKey, Text: req.Text})
}

// accept stores a new message and queues it, or answers why not. Called
// with sess.mu (and with replicas, the session's shared lock) held.
func (s *Server) accept(w http.ResponseWriter, r *http.Request, sess *session, msg UserEvent) {
	st, err := s.log.State(r.Context(), sess.id)
	if err != nil {
		s.internalError(w, "send", sess.id, err)
		return
	}
	if st == eventlog.Ended || sess.stopping {
		writeJSON(w, http.StatusConflict, errorBody{Error: "session ended", State: "ended"})
		return
	}
	if sess.unanswered >= s.cfg.MaxPending {
		writeError(w, http.StatusTooManyRequests, fmt.Sprintf("%d messages already wait for the agent", sess.unanswered))
		return
	}
	if st != eventlog.Active {
		if err := s.setState(sess, eventlog.Active, ""); err != nil {
			s.internalError(w, "send", sess.id, err)
			return
		}
	}
	// The user event is the message's durable acceptance and its place in
	// the queue: once it is stored, a restarted server runs it.
	c, err := s.append(sess, TypeUser, msg)
	if err != nil {
		s.internalError(w, "send", sess.id, err)
		return
	}
	if s.sh != nil {
		// The queue takes messages in stream order, whichever replica
		// accepted them: through the index.
		if err := s.refresh(r.Context(), sess); err != nil {
			s.lg.Warn("send: refresh after the append", "session", sess.id, "err", err)
		}
	}
	if sess.keys[msg.Key] == nil {
		sess.accept(msg, c.Seq)
		sess.queue = append(sess.queue, queued{UserEvent: msg})
	}
	sess.lastActive = time.Now()
	s.startWorker(sess)
	writeJSON(w, http.StatusAccepted, SendResponse{Status: "accepted", ID: c.String()})
}

// answerRetry answers a send whose key was accepted before, as the IETF
// Idempotency-Key draft says: 422 if the text differs (the key was reused
// for another message), 409 while the original's reply has no outcome yet
// (it is queued or running: the client should treat it as accepted and
// follow the stream), else the original answer, marked as replayed.
// Called with sess.mu held.
func (s *Server) answerRetry(w http.ResponseWriter, r *http.Request, a *accepted, text string) {
	id := s.cursor(r.Context(), a.seq).String()
	switch {
	case a.sum != sha256.Sum256([]byte(text)):
		writeJSON(w, http.StatusUnprocessableEntity, errorBody{Error: "idempotency key already used for another message", ID: id})
	case !a.answered:
		writeJSON(w, http.StatusConflict, errorBody{Error: "a send with this idempotency key is in progress", State: StateInProgress, ID: id})
	default:
		w.Header().Set("Idempotency-Replayed", "true")
		writeJSON(w, http.StatusAccepted, SendResponse{Status: "accepted", ID: id})
	}
}

// StateInProgress is the state of a 409 answer to a send retried while the
// original is queued or running.
const StateInProgress = "in-progress"

// startWorker starts the session's agent worker unless it runs. Called
// with sess.mu held.
func (s *Server) startWorker(sess *session) {
	if sess.running {
		return
	}
	ctx := s.runCtx()
	if ctx == nil || ctx.Err() != nil {
		return // a follower replica: the leader runs the queues
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped || s.draining.Load() {
		return // a draining server leaves the queue for the next start
	}
	sess.running = true
	done := make(chan struct{})
	sess.workerDone = done
	s.workers.Go(func() {
		defer close(done)
		s.work(ctx, sess)
	})
}

// work runs the agent on the session's queued messages, one at a time, in
// order. On shutdown it stops between messages and leaves the rest
// queued in the log: the next start runs them.
func (s *Server) work(runCtx context.Context, sess *session) {
	for {
		sess.mu.Lock()
		for len(sess.queue) > 0 && sess.keys[sess.queue[0].Key] != nil && sess.keys[sess.queue[0].Key].answered {
			sess.queue = sess.queue[1:] // answered since it was queued (by another leader)
		}
		if len(sess.queue) == 0 || sess.stopping || s.draining.Load() || runCtx.Err() != nil {
			sess.running = false
			sess.cancel = nil
			sess.lastActive = time.Now()
			sess.mu.Unlock()
			return
		}
		msg := sess.queue[0]
		sess.queue = sess.queue[1:]
		msg.restart = msg.restart || sess.started[msg.Key]
		ctx, cancel := context.WithCancelCause(runCtx)
		sess.cancel = cancel
		sess.mu.Unlock()

		if msg.restart {
			// The half reply a client may have seen is void: say so before
			// the new one starts.
			s.append(sess, TypeRestarted, ReplyEvent{ReplyTo: msg.Key, Reason: "the reply was cut short (a crash, a deploy or a replica taking over); running it again"})
		}
		final := s.execute(ctx, sess, msg.UserEvent)
		cancel(nil)

		// The reply's final event is stored with the bookkeeping done, so a
		// client that sees it sees an idle session.
		sess.mu.Lock()
		sess.cancel = nil
		sess.lastActive = time.Now()
		last := len(sess.queue) == 0 && !sess.stopping
		if last {
			sess.running = false
		}
		if final != nil {
			final()
			sess.answer(msg.Key)
		}
		sess.mu.Unlock()
		if last {
			return
		}
	}
}

// execute runs the agent on one message and returns the storing of its
// outcome (nil if there is none to store). A panic or error of the agent
// never escapes: the origin's server died when its agent's interrupt()
// threw, and lost every session's in-memory state.
func (s *Server) execute(ctx context.Context, sess *session, msg UserEvent) (final func()) {
	emit := func(text string) error {
		if text == "" {
			return nil
		}
		_, err := s.append(sess, TypeDelta, ReplyEvent{ReplyTo: msg.Key, Text: text})
		return err
	}
	err := s.safeReply(ctx, Request{Session: sess.id, Key: msg.Key, Text: msg.Text}, emit)
	cause := context.Cause(ctx)
	var pe *panicError
	switch {
	case errors.As(err, &pe):
		return func() { s.agentFailed(sess, msg, err) }
	case err == nil:
		return func() { s.append(sess, TypeDone, ReplyEvent{ReplyTo: msg.Key}) }
	case ctx.Err() != nil && (errors.Is(cause, errInterrupted) || errors.Is(cause, errStopped)):
		// Stop waits for this event before it ends the stream.
		return func() { s.append(sess, TypeInterrupted, ReplyEvent{ReplyTo: msg.Key}) }
	case ctx.Err() != nil:
		// Shut down past the drain: no outcome is stored, so the message
		// is still queued in the log and the next start restarts it.
		s.lg.Info("reply cut short by shutdown; it restarts on the next start", "session", sess.id, "key", msg.Key)
		return nil
	case errors.Is(err, eventlog.ErrStreamEnded), errors.Is(err, eventlog.ErrClosed):
		return nil
	default:
		return func() { s.agentFailed(sess, msg, err) }
	}
}

// agentFailed records a failed reply and moves the session to the error
// state (Suspended in the log: not synced; the next send restarts the
// agent).
func (s *Server) agentFailed(sess *session, msg UserEvent, err error) {
	s.lg.Warn("agent failed", "session", sess.id, "key", msg.Key, "err", err)
	s.append(sess, TypeFailed, ReplyEvent{ReplyTo: msg.Key, Error: err.Error()})
	if serr := s.setState(sess, eventlog.Suspended, err.Error()); serr != nil && !errors.Is(serr, eventlog.ErrStreamEnded) && !errors.Is(serr, eventlog.ErrClosed) {
		s.lg.Error("set error state", "session", sess.id, "err", serr)
	}
}

// panicError is an agent panic turned into an error.
type panicError struct{ v any }

func (e *panicError) Error() string { return fmt.Sprintf("agent panicked: %v", e.v) }

// safeReply calls the agent, turning a panic into a *panicError.
func (s *Server) safeReply(ctx context.Context, req Request, emit func(string) error) (err error) {
	defer func() {
		if v := recover(); v != nil {
			err = &panicError{v}
		}
	}()
	return s.agent.Reply(ctx, req, emit)
}

// ControlResponse answers stop and interrupt.
type ControlResponse struct {
	State       string `json:"state"`
	Already     bool   `json:"already,omitempty"`
	Interrupted bool   `json:"interrupted"`
}

func (s *Server) handleStop(w http.ResponseWriter, r *http.Request, sess *session) {
	if s.forwardToLeader(w, r) {
		return
	}
	resp, err := s.stop(r.Context(), sess)
	switch {
	case r.Context().Err() != nil:
		return // the client left
	case err != nil:
		s.internalError(w, "stop", sess.id, err)
	default:
		writeJSON(w, http.StatusOK, resp)
	}
}

// stop ends the session: the running reply is interrupted, waiting
// messages are answered with an error, and the stream is Ended. Stopping an
// ended session answers Already.
//
// Errors: ctx.Err() (the session may then still be stopping), or the log's.
func (s *Server) stop(ctx context.Context, sess *session) (ControlResponse, error) {
	if err := sess.mu.LockCtx(ctx); err != nil {
		return ControlResponse{}, err
	}
	st, err := s.log.State(ctx, sess.id)
	if err != nil {
		sess.mu.Unlock()
		return ControlResponse{}, err
	}
	if st == eventlog.Ended || sess.stopping {
		sess.mu.Unlock()
		return ControlResponse{State: "ended", Already: true}, nil
	}
	sess.stopping = true
	interrupted := sess.cancel != nil
	if sess.cancel != nil {
		sess.cancel(errStopped)
	}
	waiting := sess.queue
	sess.queue = nil
	done := sess.workerDone
	running := sess.running
	sess.mu.Unlock()
	if running {
		select {
		case <-done:
		case <-ctx.Done():
			return ControlResponse{}, ctx.Err()
		}
	}
	for _, m := range waiting {
		if _, err := s.append(sess, TypeFailed, ReplyEvent{ReplyTo: m.Key, Error: "not answered: session stopped"}); err == nil {
			sess.mu.Lock()
			sess.answer(m.Key)
			sess.mu.Unlock()
		}
	}
	if err := s.setState(sess, eventlog.Ended, "stopped"); err != nil && !errors.Is(err, eventlog.ErrStreamEnded) {
		return ControlResponse{}, err
	}
	if s.cfg.EndedRetention >= 0 {
		s.mu.Lock()
		s.endedAt[sess.id] = time.Now()
		s.mu.Unlock()
	}
	s.lg.Info("session stopped", "session", sess.id)
	return ControlResponse{State: "ended", Interrupted: interrupted}, nil
}

// DeleteResponse answers DELETE /sessions/{id}.
type DeleteResponse struct {
	Deleted bool `json:"deleted"`
	// Stopped is true if the session was still running and was stopped
	// first.
	Stopped bool `json:"stopped"`
}

// handleDelete stops the session if it runs, then deletes its stream: its
// events are freed, its clients get an end event, and later requests for it
// get 410 Gone. The id is never reused (see eventlog.Log.Delete).
func (s *Server) handleDelete(w http.ResponseWriter, r *http.Request, sess *session) {
	if s.forwardToLeader(w, r) {
		return
	}
	resp, err := s.stop(r.Context(), sess)
	if r.Context().Err() != nil {
		return
	}
	if err == nil {
		err = s.deleteSession(r.Context(), sess.id)
	}
	if err != nil {
		s.internalError(w, "delete", sess.id, err)
		return
	}
	s.lg.Info("session deleted", "session", sess.id)
	writeJSON(w, http.StatusOK, DeleteResponse{Deleted: true, Stopped: !resp.Already})
}

// deleteSession deletes the stream of session id and forgets the session.
//
// Errors: as eventlog.Log.Delete.
func (s *Server) deleteSession(ctx context.Context, id string) error {
	err := s.log.Delete(ctx, id)
	if err == nil || errors.Is(err, eventlog.ErrStreamDeleted) {
		s.forget(id)
	}
	return err
}

// forget drops the in-memory side of session id.
func (s *Server) forget(id string) {
	s.mu.Lock()
	delete(s.sessions, id)
	delete(s.endedAt, id)
	s.mu.Unlock()
}

func (s *Server) handleInterrupt(w http.ResponseWriter, r *http.Request, sess *session) {
	if s.forwardToLeader(w, r) {
		return
	}
	if err := sess.mu.LockCtx(r.Context()); err != nil {
		return
	}
	defer sess.mu.Unlock()
	st, err := s.log.State(r.Context(), sess.id)
	if err != nil {
		s.internalError(w, "interrupt", sess.id, err)
		return
	}
	if st == eventlog.Ended || sess.stopping {
		writeJSON(w, http.StatusConflict, errorBody{Error: "session ended: nothing to interrupt", State: "ended"})
		return
	}
	interrupted := sess.cancel != nil
	if interrupted {
		sess.cancel(errInterrupted)
	}
	writeJSON(w, http.StatusOK, ControlResponse{State: stateName(st), Interrupted: interrupted})
}

// HistoryEvent is one entry of GET /sessions/{id}/history.
type HistoryEvent struct {
	ID   string          `json:"id"`
	Type string          `json:"type"`
	Data json.RawMessage `json:"data"`
}

// HistoryResponse is the body of GET /sessions/{id}/history: the events
// before the given position, oldest first, and whether older ones exist.
type HistoryResponse struct {
	Events []HistoryEvent `json:"events"`
	// More is true if older retained events exist (page on with before =
	// the first id).
	More bool `json:"more"`
	// Oldest is the cursor of the oldest retained event; events before it
	// were dropped by retention.
	Oldest string `json:"oldest"`
	// Truncated is true if events before this page existed but are no
	// longer retained: the history is complete back to Oldest only.
	Truncated bool `json:"truncated,omitempty"`
}

func (s *Server) handleHistory(w http.ResponseWriter, r *http.Request, sess *session) {
	q := r.URL.Query()
	limit := DefaultHistoryLimit
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxHistoryLimit {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("limit must be 1..%d", MaxHistoryLimit))
			return
		}
		limit = n
	}
	head, err := s.log.Head(r.Context(), sess.id)
	if err != nil {
		s.internalError(w, "history", sess.id, err)
		return
	}
	before := head.Seq + 1
	if v := q.Get("before"); v != "" {
		if n, perr := strconv.ParseUint(v, 10, 64); perr == nil {
			before = n
		} else {
			c, cerr := eventlog.ParseCursor(v)
			if cerr != nil {
				writeError(w, http.StatusBadRequest, "bad before: want a cursor <epoch>:<seq> or a seq")
				return
			}
			if !c.IsZero() && c.Epoch != head.Epoch {
				writeJSON(w, http.StatusConflict, errorBody{Error: "cursor from another epoch: reload"})
				return
			}
			before = c.Seq
		}
	}
	if before > head.Seq+1 {
		writeError(w, http.StatusBadRequest, "before is beyond the head of the session")
		return
	}
	oldest, err := s.log.Oldest(r.Context(), sess.id)
	if err != nil {
		s.internalError(w, "history", sess.id, err)
		return
	}
	if before <= oldest && before > 1 {
		// Every event before `before` was dropped by retention.
		writeJSON(w, http.StatusGone, errorBody{Error: fmt.Sprintf("that history is no longer retained (oldest retained seq %d)", oldest)})
		return
	}
	// The page is the events after..before-1, at most limit of them, and
	// never older than the oldest retained one.
	var after uint64
	if before > uint64(limit)+1 {
		after = before - 1 - uint64(limit)
	}
	after = max(after, oldest-1)
	resp := HistoryResponse{
		Events:    []HistoryEvent{},
		More:      after >= oldest,
		Oldest:    eventlog.Cursor{Epoch: head.Epoch, Seq: oldest}.String(),
		Truncated: after < oldest && oldest > 1,
	}
	n := int(before - 1 - after)
	if n > 0 {
		evs, err := s.log.ReadAfter(r.Context(), sess.id, eventlog.Cursor{Epoch: head.Epoch, Seq: after}, n)
		if errors.Is(err, eventlog.ErrCursorExpired) {
			// Retention moved on since Oldest: the client asks again.
			writeError(w, http.StatusGone, "that history is no longer retained")
			return
		}
		if err != nil {
			s.internalError(w, "history", sess.id, err)
			return
		}
		for _, ev := range evs {
			resp.Events = append(resp.Events, HistoryEvent{ID: eventlog.Cursor{Epoch: head.Epoch, Seq: ev.Seq}.String(), Type: ev.Type, Data: json.RawMessage(ev.Data)})
		}
	}
	writeJSON(w, http.StatusOK, resp)
}

// syncLoop runs the periodic session sync round until Shutdown.
func (s *Server) syncLoop(ctx context.Context) {
	err := s.log.SyncEvery(ctx, s.cfg.SyncInterval, s.allIDs, s.syncSession, func(r eventlog.SyncReport) {
		s.syncReport(r)
		s.expireEnded(ctx)
	})
	if err != nil && ctx.Err() == nil && !errors.Is(err, eventlog.ErrClosed) {
		s.lg.Error("sync loop stopped", "err", err)
	}
}

// allIDs lists every session in the log, not only those loaded since the
// server started: after a restart, sessions nobody has touched yet are
// synced too.
func (s *Server) allIDs() []string {
	infos, err := s.log.Streams(s.baseCtx, nil)
	if err != nil {
		if !errors.Is(err, eventlog.ErrClosed) && s.baseCtx.Err() == nil {
			s.lg.Error("sync: list sessions", "err", err)
		}
		return nil
	}
	ids := make([]string, len(infos))
	for i, in := range infos {
		ids[i] = in.ID
	}
	return ids
}

// SyncOnce runs one sync round over every session in the log now, then
// deletes the ended sessions past EndedRetention, and returns the round's
// report (the loop does this every SyncInterval).
//
// Errors: as eventlog.Log.Sync.
func (s *Server) SyncOnce(ctx context.Context) (eventlog.SyncReport, error) {
	rep, err := s.log.Sync(ctx, s.allIDs(), s.syncSession)
	if err == nil {
		s.expireEnded(ctx)
	}
	return rep, err
}

// expireEnded deletes the sessions that have been ended for at least
// EndedRetention. The end time is when this server stopped the session, or
// for sessions ended before a restart, when the first round after it saw
// them ended (so a restart only ever lengthens the retention).
func (s *Server) expireEnded(ctx context.Context) {
	if s.cfg.EndedRetention < 0 {
		return
	}
	ended, err := s.log.Streams(ctx, func(st eventlog.State) bool { return st == eventlog.Ended })
	if err != nil {
		return // closed or canceled: the next round retries
	}
	now := time.Now()
	var expired []string
	s.mu.Lock()
	for _, in := range ended {
		t, ok := s.endedAt[in.ID]
		if !ok {
			s.endedAt[in.ID] = now
			continue
		}
		if now.Sub(t) >= s.cfg.EndedRetention {
			expired = append(expired, in.ID)
		}
	}
	s.mu.Unlock()
	for _, id := range expired {
		if err := s.deleteSession(ctx, id); err != nil && !errors.Is(err, eventlog.ErrStreamDeleted) {
			if !errors.Is(err, eventlog.ErrClosed) && ctx.Err() == nil {
				s.lg.Warn("delete expired session", "session", id, "err", err)
			}
			return
		}
		s.lg.Info("ended session deleted after retention", "session", id, "retention", s.cfg.EndedRetention)
	}
}

// syncSession is called for syncable sessions only (created, starting,
// active): the origin synced every watched session, including suspended
// and detached ones, and replayed thousands of events nobody waited for. A
// session with no client and no reply running for IdleTimeout is marked
// Detached, so later rounds skip it.
func (s *Server) syncSession(ctx context.Context, id string, st eventlog.State) error {
	// A session not loaded since a restart is loaded now: its replies cut
	// short by the restart are closed, and its idle clock starts.
	sess, err := s.session(ctx, id)
	if errors.Is(err, eventlog.ErrStreamDeleted) {
		return nil // deleted since the round listed it
	}
	if err != nil {
		return err
	}
	if err := sess.mu.LockCtx(ctx); err != nil {
		return err
	}
	defer sess.mu.Unlock()
	if st != eventlog.Active || sess.running || sess.clients > 0 || time.Since(sess.lastActive) < s.cfg.IdleTimeout {
		return nil
	}
	return s.setState(sess, eventlog.Detached, "no client")
}

func (s *Server) syncReport(r eventlog.SyncReport) {
	for _, f := range r.Failed {
		s.lg.Warn("sync failed", "session", f.Stream, "err", f.Err)
	}
	if len(r.Unknown) > 0 {
		s.lg.Warn("sync: sessions missing from the log", "sessions", r.Unknown)
	}
	s.lg.Debug("sync round", "synced", len(r.Synced), "skipped", len(r.Skipped))
}
