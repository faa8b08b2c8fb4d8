package proxy

// Upstream connections of a WebSocket session: dialling, reading, and
// routing what arrives to the pending requests.

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/steadfast-go/steadfast/examples/proxy/jsonrpc"
	"github.com/steadfast-go/steadfast/replayqueue"
)

// upConn is one WebSocket connection to an upstream.
type upConn struct {
	u    *upstream
	c    *websocket.Conn
	q    *replayqueue.Queue[*frame, *frame] // the queue it was connected through
	gen  uint64                             // queue generation; guarded by session.mu
	subs map[string]string                  // upstream sub id -> client sub id; guarded by session.mu
	// fresh holds the client sub ids that have not had a head on this
	// connection yet (gap filling); guarded by session.mu.
	fresh map[string]bool

	replaysSent, replaysOK atomic.Int64
	m                      *metrics

	lostOnce sync.Once
	lostErr  error
}

func (x *upConn) send(f *frame) error {
	ctx, cancel := context.WithTimeout(context.Background(), upstreamWriteTimeout)
	err := x.c.Write(ctx, websocket.MessageText, f.data)
	cancel()
	if err != nil {
		return err
	}
	if f.replay {
		x.replaysSent.Add(1)
	}
	if f.req != nil {
		f.req.sentOn.Store(x)
		if f.req.internal == nil {
			x.m.request(f.req.method, x.u.index, transportWS).Inc()
		}
	}
	return nil
}

func (s *session) dial(i int) (*upConn, error) {
	u := s.p.ups[i]
	ctx, cancel := context.WithTimeout(s.ctx, max(2*s.p.cfg.CheckTimeout, time.Second))
	defer cancel()
	c, _, err := websocket.Dial(ctx, u.WSURL, nil)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", u.Name, err)
	}
	c.SetReadLimit(4 * DefaultMaxBodyBytes)
	x := &upConn{u: u, c: c, subs: make(map[string]string), fresh: make(map[string]bool), m: s.p.m}
	s.mu.Lock()
	x.q = s.q // before the reader starts: it routes replay replies to x.q
	s.conns[x] = struct{}{}
	for id, sub := range s.subs {
		if sub.kind == "newHeads" && sub.member == nil {
			x.fresh[id] = true
		}
	}
	s.mu.Unlock()
	s.wg.Go(func() { s.readUpstream(x) })
	return x, nil
}

func (s *session) signalLost(x *upConn, err error) {
	x.lostOnce.Do(func() {
		x.lostErr = err
		select {
		case s.lost <- x:
		case <-s.ctx.Done():
		}
	})
}

func (s *session) readUpstream(x *upConn) {
	for {
		_, data, err := x.c.Read(s.ctx)
		if err != nil {
			s.signalLost(x, err)
			return
		}
		s.handleUpstreamFrame(x, data)
	}
}

func (s *session) handleUpstreamFrame(x *upConn, data []byte) {
	if len(data) > 0 && data[0] == '[' {
		var msgs []jsonrpc.Message
		if err := json.Unmarshal(data, &msgs); err != nil {
			s.log.Warn("bad frame from upstream", "upstream", x.u.Name, "err", err)
			return
		}
		for i := range msgs {
			s.handleUpstreamMsg(x, &msgs[i])
		}
		return
	}
	if sub, result, ok := jsonrpc.ScanNotification(data); ok { // the common case: no full decode
		s.onNotification(x, string(sub), result)
		return
	}
	var m jsonrpc.Message
	if err := json.Unmarshal(data, &m); err != nil {
		s.log.Warn("bad frame from upstream", "upstream", x.u.Name, "err", err)
		return
	}
	s.handleUpstreamMsg(x, &m)
}

func (s *session) handleUpstreamMsg(x *upConn, m *jsonrpc.Message) {
	if m.Method == "eth_subscription" {
		s.onNotificationMsg(x, m)
		return
	}
	if !m.HasID() {
		return // some other upstream notification: nothing for the client
	}
	if m.ID[0] == '"' {
		var id string
		if json.Unmarshal(m.ID, &id) == nil && replayqueue.IsReserved(id) {
			// A reply to a replayed subscribe: consumed, never forwarded.
			x.q.HandleReply(id, &frame{conn: x, msg: m})
			s.wake()
			return
		}
	}
	id, err := strconv.ParseUint(string(m.ID), 10, 64)
	if err != nil {
		s.log.Warn("reply with an id the proxy never sent", "upstream", x.u.Name, "id", string(m.ID))
		return
	}
	s.onReply(x, id, m)
}

func (s *session) onReply(x *upConn, id uint64, m *jsonrpc.Message) {
	defer s.wake()
	if s.isSubscribeReply(id) {
		s.onSubscribeReply(x, id, m)
		return
	}
	s.mu.Lock()
	req := s.pending[id]
	delete(s.pending, id)
	if req == nil {
		s.mu.Unlock()
		return // answered already (re-sent after a switch) or internal and abandoned
	}
	if req.internal != nil {
		s.mu.Unlock()
		req.internal(x, m)
		return
	}
	s.answerLocked(req.batch, replyFor(req.clientID, m), 0)
	s.mu.Unlock()
}

func (s *session) isSubscribeReply(id uint64) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	req := s.pending[id]
	return req != nil && req.internal == nil && req.method == "eth_subscribe"
}

// replyFor re-addresses an upstream reply to the client's id.
func replyFor(clientID json.RawMessage, m *jsonrpc.Message) []byte {
	if m.Error != nil {
		return jsonrpc.ErrorResponse(clientID, m.Error)
	}
	res := m.Result
	if len(res) == 0 {
		res = jsonrpc.Null
	}
	b := make([]byte, 0, 40+len(clientID)+len(res))
	b = append(b, `{"jsonrpc":"2.0","id":`...)
	b = append(b, clientID...)
	b = append(b, `,"result":`...)
	b = append(b, res...)
	return append(b, '}')
}
