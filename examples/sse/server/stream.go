package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/steadfast-go/steadfast/eventlog"
	"github.com/steadfast-go/steadfast/examples/sse/wire"
)

// SSE-only event types (not stored; the gap, reset and cutoff events carry
// the cursor to continue from as their id).
const (
	TypeGap    = "gap"
	TypeReset  = "reset"
	TypeCutoff = "cutoff"
	TypeEnd    = "end"
)

// GapEvent tells a client that Skipped events after its cursor, up to and
// including Head, were not replayed; History is where to fetch them (the
// newest page; follow older pages with before = the first id).
type GapEvent struct {
	Skipped uint64 `json:"skipped"`
	Head    string `json:"head"`
	History string `json:"history"`
}

// ResetEvent tells a client its cursor names no position here
// (wrong-epoch, expired or cursor-ahead): it should drop its transcript and
// reload from History.
type ResetEvent struct {
	Reason  string `json:"reason"`
	Head    string `json:"head"`
	History string `json:"history"`
}

// CutoffEvent tells a client it is disconnected because it fell too far
// behind; it should reconnect from Resume.
type CutoffEvent struct {
	Reason string `json:"reason"`
	Resume string `json:"resume"`
}

// handleEvents streams a session's events as SSE: the replay from the
// client's cursor (or a gap or reset event), then live events as they are
// appended, with comment heartbeats.
func (s *Server) handleEvents(w http.ResponseWriter, r *http.Request, sess *session) {
	from, err := ParseResumeCursor(r.Header.Get("Last-Event-ID"), r.URL.Query().Get("cursor"))
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad cursor: want <epoch>:<seq>")
		return
	}
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()

	opts := eventlog.SubscribeOptions{GapCap: s.cfg.GapCap, MaxLag: s.cfg.MaxLag}
	sub, err := s.log.Subscribe(ctx, sess.id, from, opts)
	ahead := false
	if errors.Is(err, eventlog.ErrCursorAhead) {
		// A cursor beyond head in this epoch is never taken as "nothing to
		// send": the client is told to reset and continues from head.
		ahead = true
		var head eventlog.Cursor
		if head, err = s.log.Head(ctx, sess.id); err == nil {
			sub, err = s.log.Subscribe(ctx, sess.id, head, opts)
		}
	}
	if err != nil {
		if s.closing.Err() != nil {
			writeError(w, http.StatusServiceUnavailable, "server shutting down")
		} else if r.Context().Err() == nil {
			s.internalError(w, "subscribe", sess.id, err)
		}
		return
	}
	defer sub.Close()

	sess.mu.Lock()
	sess.clients++
	sess.mu.Unlock()
	defer func() {
		sess.mu.Lock()
		sess.clients--
		sess.lastActive = time.Now()
		sess.mu.Unlock()
	}()

	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	st := &sseWriter{w: w, rc: http.NewResponseController(w), timeout: s.cfg.WriteTimeout, epoch: s.cursor(ctx, 0).Epoch}
	st.buf = append(st.buf, "retry: "...)
	st.buf = strconv.AppendInt(st.buf, s.cfg.RetryHint.Milliseconds(), 10)
	st.buf = append(st.buf, '\n', '\n')
	st.buf = wire.AppendComment(st.buf, "session "+sess.id)
	if ahead {
		head, _ := s.log.Head(ctx, sess.id)
		st.control(TypeReset, head, ResetEvent{Reason: "cursor-ahead", Head: head.String(), History: s.historyURL(sess.id, head)})
	}
	if err := st.flush(); err != nil {
		return
	}
	// Shutdown ends streams (after its drain) before it waits for
	// requests: a stream first writes what was appended up to then (the
	// end of a drained reply), for at most closeGrace.
	stopOnClose := context.AfterFunc(s.closing, func() {
		if s.caughtUp(sess.id, st.lastSeq.Load()) {
			cancel()
			return
		}
		time.AfterFunc(closeGrace, cancel)
	})
	defer stopOnClose()

	for {
		hbCtx, hbCancel := context.WithTimeout(ctx, s.cfg.Heartbeat)
		err := s.pump(ctx, hbCtx, sess, sub, st)
		hbCancel()
		switch {
		case err == nil:
			return
		case errors.Is(err, errHeartbeat):
			st.buf = wire.AppendComment(st.buf, "hb")
			if st.flush() != nil {
				return
			}
		default:
			if ctx.Err() == nil && !errors.Is(err, errWrite) {
				s.lg.Warn("event stream ended", "session", sess.id, "err", err)
			}
			return
		}
	}
}

var (
	errHeartbeat = errors.New("heartbeat due")
	errWrite     = errors.New("write to client failed")
)

// pump writes results until ctx ends (errHeartbeat when only the heartbeat
// deadline passed) or the stream is over (nil).
func (s *Server) pump(ctx, hbCtx context.Context, sess *session, sub *eventlog.Subscription, st *sseWriter) error {
	for {
		res, err := sub.Next(hbCtx)
		if err != nil {
			switch {
			case errors.Is(err, eventlog.ErrStreamEnded):
				st.control(TypeEnd, eventlog.Cursor{}, StateEvent{State: "ended"})
				st.flush()
				return nil
			case errors.Is(err, eventlog.ErrStreamDeleted):
				// The session was deleted: its events are gone, so the
				// stream ends here, and the client does not reconnect.
				st.control(TypeEnd, eventlog.Cursor{}, StateEvent{State: "deleted"})
				st.flush()
				return nil
			case ctx.Err() == nil && hbCtx.Err() != nil:
				return errHeartbeat
			}
			return err
		}
		switch res.Outcome {
		case eventlog.Events:
			for _, ev := range res.Events {
				st.event(ev)
			}
		case eventlog.SkippedToHead:
			st.control(TypeGap, res.Head, GapEvent{Skipped: res.Gap, Head: res.Head.String(), History: s.historyURL(sess.id, res.Head)})
		case eventlog.Unrecoverable:
			st.control(TypeReset, res.Head, ResetEvent{Reason: res.Reason.String(), Head: res.Head.String(), History: s.historyURL(sess.id, res.Head)})
		case eventlog.Lagged:
			// A slow client is cut off with a reason rather than slowing
			// anyone else; it resumes by cursor.
			st.control(TypeCutoff, eventlog.Cursor{}, CutoffEvent{Reason: fmt.Sprintf("more than %d events behind", s.cfg.MaxLag), Resume: res.Resume.String()})
			st.flush()
			s.lg.Info("slow client cut off", "session", sess.id, "resume", res.Resume.String())
			return nil
		}
		if err := st.flush(); err != nil {
			return errWrite
		}
		if s.closing.Err() != nil && s.caughtUp(sess.id, st.lastSeq.Load()) {
			return nil // shutting down, and this client has everything
		}
	}
}

// closeGrace bounds how long a stream may take at shutdown to write the
// events appended before it.
const closeGrace = 2 * time.Second

// caughtUp reports whether a stream that wrote up to seq has every event of
// session id (or the log cannot tell any more).
func (s *Server) caughtUp(id string, seq uint64) bool {
	h, err := s.log.Head(context.Background(), id)
	return err != nil || seq >= h.Seq
}

// historyURL is where a client fetches what a gap or reset skipped: the
// events up to and including head (before is exclusive).
func (s *Server) historyURL(id string, head eventlog.Cursor) string {
	next := eventlog.Cursor{Epoch: head.Epoch, Seq: head.Seq + 1}
	return "/sessions/" + id + "/history?before=" + next.String() + "&limit=" + strconv.Itoa(DefaultHistoryLimit)
}

// sseWriter batches frames and writes them with a deadline, so a client
// that stops reading is disconnected instead of holding a goroutine.
type sseWriter struct {
	w       http.ResponseWriter
	rc      *http.ResponseController
	timeout time.Duration
	epoch   string
	buf     []byte
	id      []byte
	lastSeq atomic.Uint64 // the seq of the last stored event (or gap/reset head) written
}

// event appends a stored event with id "<epoch>:<seq>".
func (st *sseWriter) event(ev eventlog.Event) {
	st.id = append(st.id[:0], st.epoch...)
	st.id = append(st.id, ':')
	st.id = strconv.AppendUint(st.id, ev.Seq, 10)
	st.lastSeq.Store(ev.Seq)
	// Stored types and epochs never contain line breaks, so this cannot fail.
	st.buf, _ = wire.AppendFrame(st.buf, st.id, ev.Type, ev.Data)
}

// control appends an SSE-only event; a non-zero id moves the client's
// Last-Event-ID (to head after a gap or reset).
func (st *sseWriter) control(typ string, id eventlog.Cursor, payload any) {
	ids := ""
	if !id.IsZero() {
		ids = id.String()
		st.lastSeq.Store(id.Seq)
	}
	st.buf, _ = wire.AppendFrame(st.buf, ids, typ, mustJSON(payload))
}

func (st *sseWriter) flush() error {
	if len(st.buf) == 0 {
		return nil
	}
	st.rc.SetWriteDeadline(time.Now().Add(st.timeout)) // unsupported writers just have none
	_, err := st.w.Write(st.buf)
	if err == nil {
		err = st.rc.Flush()
	}
	if cap(st.buf) > 1<<20 {
		st.buf = nil
	} else {
		st.buf = st.buf[:0]
	}
	return err
}
