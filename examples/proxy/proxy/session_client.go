package proxy

// The client side of a WebSocket session: frames and requests from the
// client, and the replies and errors written back to it.

import (
	"encoding/json"
	"errors"
	"strconv"
	"time"

	"github.com/steadfast-go/steadfast/examples/proxy/jsonrpc"
	"github.com/steadfast-go/steadfast/replayqueue"
)

func (s *session) handleClientFrame(data []byte) {
	f, err := jsonrpc.Parse(data)
	if err != nil {
		var je *jsonrpc.Error
		errors.As(err, &je)
		s.answer(nil, jsonrpc.ErrorResponse(nil, je), je.Code)
		return
	}
	var b *batchReply
	if f.Batch {
		b = &batchReply{remaining: len(f.Msgs)}
	}
	limited := !s.p.limit.take(s.client, len(f.Msgs), time.Now())
	if limited {
		s.p.m.denied.WithLabelValues(denyRateLimit).Inc()
	}
	for i := range f.Msgs {
		m := &f.Msgs[i]
		e := f.Errs[i]
		if e == nil {
			e = jsonrpc.Validate(m)
		}
		if e == nil && limited {
			e = &jsonrpc.Error{Code: jsonrpc.CodeLimitExceeded, Message: "rate limit exceeded"}
		}
		if e == nil {
			e = s.p.admit(m)
		}
		if e != nil {
			s.answer(b, jsonrpc.ErrorResponse(m.ID, e), e.Code)
			continue
		}
		switch m.Method {
		case "eth_unsubscribe":
			s.clientUnsubscribe(m, b)
			continue
		case "eth_subscribe":
			s.clientSubscribe(m, b)
			continue
		}
		s.forward(m, b)
	}
}

// answer delivers a reply the proxy produced (code != 0: an error it
// answered itself) or forwards an upstream's reply, within the client's
// batch if any.
func (s *session) answer(b *batchReply, reply []byte, code int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.answerLocked(b, reply, code)
}

func (s *session) answerLocked(b *batchReply, reply []byte, code int) {
	if code != 0 {
		s.p.m.requestErrors.WithLabelValues(strconv.Itoa(code)).Inc()
	}
	if b == nil {
		if reply != nil {
			s.writeLocked(reply)
		}
		return
	}
	if reply != nil {
		b.parts = append(b.parts, reply)
	}
	b.remaining--
	if b.remaining == 0 && len(b.parts) > 0 {
		s.writeLocked(jsonrpc.JoinBatch(b.parts))
	}
}

// writeLocked queues one message for the client. Called with s.mu held,
// so the order of decisions is the order on the wire. The hub's session
// has no client: its requests answer through pendingReq.done.
func (s *session) writeLocked(b []byte) {
	if s.out != nil {
		s.out.push(outItem{msg: b})
	}
}

func encodeRequest(id uint64, method string, params json.RawMessage) []byte {
	return jsonrpc.AppendRequest(make([]byte, 0, 64+len(method)+len(params)), id, method, params)
}

// forward sends a client request (or notification) upstream through the
// queue under a proxy id.
func (s *session) forward(m *jsonrpc.Message, b *batchReply) {
	req := &pendingReq{clientID: m.ID, method: m.Method, params: m.Params, batch: b,
		safe: safeToRepeat(m.Method)}
	s.send(req)
}

// send registers req and hands it to the queue; on refusal the client gets
// a JSON-RPC error, never silence.
func (s *session) send(req *pendingReq) {
	s.mu.Lock()
	if s.outage && s.cur == nil {
		s.mu.Unlock()
		s.fail(req, jsonrpc.CodeNoUpstream, "no upstream reachable")
		return
	}
	hasReply := req.clientID != nil || req.internal != nil || req.done != nil
	// The hub's requests are bounded by the clients' own limits.
	if hasReply && s.fan == nil && len(s.pending) >= s.p.cfg.MaxInFlight {
		s.mu.Unlock()
		s.fail(req, jsonrpc.CodeTooManyInFlight, "too many requests awaiting a reply on this connection (limit "+
			strconv.Itoa(s.p.cfg.MaxInFlight)+")")
		return
	}
	s.nextID++
	req.upID = s.nextID
	if hasReply {
		s.pending[req.upID] = req
	}
	first := !s.wantUp
	if first {
		s.wantUp = true
		s.since = time.Now() // SwitchTimeout counts from here
	}
	q := s.q
	s.mu.Unlock()
	if first {
		s.notifyChange() // the control goroutine dials; the queue holds req until then
	}
	if req.frame == nil {
		req.frame = &frame{data: encodeRequest(req.upID, req.method, req.params), req: req}
	}
	s.enqueue(q, req, hasReply)
}

func (s *session) enqueue(q *replayqueue.Queue[*frame, *frame], req *pendingReq, hasReply bool) {
	err := q.Send(s.ctx, req.frame)
	if err == nil {
		if req.sentOn.Load() == nil {
			s.p.m.queued.Inc()
		}
		if !hasReply && req.batch != nil {
			s.answer(req.batch, nil, 0) // a notification inside a batch: nothing to wait for
		}
		return
	}
	s.mu.Lock()
	delete(s.pending, req.upID)
	s.mu.Unlock()
	switch {
	case errors.Is(err, replayqueue.ErrFull), errors.Is(err, replayqueue.ErrTooLarge):
		s.fail(req, jsonrpc.CodeQueueFull, "upstream switch in progress and the session's queue is full: "+err.Error())
	default:
		s.fail(req, jsonrpc.CodeNoUpstream, "no upstream reachable")
	}
}

// fail answers req with a JSON-RPC error (internal requests are dropped:
// no client waits for them).
func (s *session) fail(req *pendingReq, code int, msg string) {
	if req.done != nil {
		req.done("", &jsonrpc.Error{Code: code, Message: msg})
		return
	}
	if req.clientID == nil {
		if req.batch != nil {
			s.answer(req.batch, nil, 0)
		}
		return
	}
	s.answer(req.batch, jsonrpc.ErrorResponse(req.clientID, &jsonrpc.Error{Code: code, Message: msg}), code)
}
