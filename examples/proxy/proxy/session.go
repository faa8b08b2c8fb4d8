package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/steadfast-go/steadfast/examples/proxy/jsonrpc"
	"github.com/steadfast-go/steadfast/replayqueue"
)

// How a session moves between upstreams:
//
//   - Break-before-make (the current upstream failed, hung or fell behind):
//     detach it (the queue disconnects, so client messages are buffered),
//     dial the best other upstream, and Connect the queue to it, which
//     replays every subscription with a reserved id and then flushes the
//     buffered messages in order. Requests that were in flight on the dead
//     upstream are sent again if they are safe to repeat, and answered with
//     an error otherwise. The first newHeads of each subscription on the new
//     upstream fills the gap from the last block the client got.
//   - Make-before-break (failback to a better upstream): dial it, Connect the
//     queue to it (replaying the subscriptions), keep the old connection
//     delivering notifications and replies until every replayed subscription
//     is confirmed and the old in-flight requests are answered, then close
//     it. Heads the client already has (same block hash) are suppressed.
//
// The control goroutine makes every switch decision, so a session never
// runs two switches at once. Locks: switchMu (held by the control goroutine
// around Connect, and shared by readers while they turn a client's
// eth_subscribe reply into a replayed subscription) is taken before mu;
// mu is never held while calling into the queue, whose callbacks take mu.

const (
	clientWriteTimeout   = 10 * time.Second
	upstreamWriteTimeout = 5 * time.Second
	maxResend            = 2 // a safe request follows at most two switches
	retryMin, retryMax   = 100 * time.Millisecond, 2 * time.Second
)

var (
	errPlannedSwitch = errors.New("planned switch to a better upstream")
	errNoUpstream    = errors.New("no upstream reachable")
)

// frame is one item of the session's replay queue (an upstream-bound
// message), or, when passed to HandleReply, an upstream reply.
type frame struct {
	data   []byte
	req    *pendingReq // the request this frame carries, if any
	replay bool        // a replayed eth_subscribe
	conn   *upConn     // replies: the connection it arrived on
	msg    *jsonrpc.Message
}

// pendingReq is a request sent (or queued) upstream under a proxy id.
type pendingReq struct {
	upID     uint64
	clientID json.RawMessage // nil for the proxy's internal requests
	method   string
	params   json.RawMessage
	safe     bool
	frame    *frame
	sentOn   atomic.Pointer[upConn]
	batch    *batchReply
	resent   int                                 // times re-sent after losing its upstream (control goroutine only)
	internal func(x *upConn, m *jsonrpc.Message) // internal requests: consumes the reply
	// done takes the outcome of the hub's eth_subscribe (the subscription's
	// id, or why it failed) instead of a client; called without s.mu.
	done func(id string, e *jsonrpc.Error)
}

// batchReply collects the replies of one client batch. Guarded by
// session.mu.
type batchReply struct {
	remaining int
	parts     [][]byte
}

type session struct {
	p      *Proxy
	cc     *websocket.Conn
	log    *slog.Logger
	client string // rate-limit key

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	changed chan struct{} // the failover selection changed
	lost    chan *upConn  // an upstream connection failed
	kick    chan struct{} // a reply arrived (wakes waits in the control loop)

	switchMu sync.RWMutex

	mu      sync.Mutex // guards the fields below and serialises client writes
	q       *replayqueue.Queue[*frame, *frame]
	cur     *upConn // the connection the queue is attached to
	conns   map[*upConn]struct{}
	subs    map[string]*subscription
	joining map[*member]struct{} // shared subscriptions the hub has not confirmed yet
	pending map[uint64]*pendingReq
	nextID  uint64
	// wantUp is set by the first request: a session that only holds
	// subscriptions (they live in the hub) never dials an upstream.
	wantUp bool
	// since is when the session lost its upstream, or first wanted one
	// (zero while connected); outage is set once that lasted longer than
	// SwitchTimeout: requests then fail fast until an upstream is back.
	since  time.Time
	outage bool

	// out is what waits to be written to the client, emptied by writeLoop
	// (wdone is closed when it returns). The hub's session has no client:
	// out is nil and fan takes its notifications instead.
	out   *outbox
	wdone chan struct{}
	fan   func(id string, result json.RawMessage)
}

func (p *Proxy) serveWS(w http.ResponseWriter, r *http.Request) {
	client, ok := p.authorize(r)
	if !ok {
		p.m.denied.WithLabelValues(denyAuth).Inc()
		w.Header().Set("WWW-Authenticate", `Bearer realm="steadfast-proxy"`)
		p.writeLocal(w, http.StatusUnauthorized, nil, &jsonrpc.Error{Code: jsonrpc.CodeUnauthorized,
			Message: "missing or unknown bearer token (Authorization: Bearer TOKEN)"})
		return
	}
	if !p.hasWS() {
		p.writeLocal(w, http.StatusServiceUnavailable, nil, &jsonrpc.Error{Code: jsonrpc.CodeNoUpstream,
			Message: "no upstream has a WebSocket URL: use HTTP"})
		return
	}
	cc, err := websocket.Accept(w, r, nil)
	if err != nil {
		return // Accept wrote the HTTP error
	}
	cc.SetReadLimit(p.cfg.MaxBodyBytes)
	s := p.newSession(cc, p.log.With("client", r.RemoteAddr), client)
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		_ = cc.Close(websocket.StatusGoingAway, "proxy shutting down")
		return
	}
	p.sessions[s] = struct{}{}
	p.wg.Add(1)
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.sessions, s)
		p.mu.Unlock()
		p.wg.Done()
	}()
	s.log.Debug("websocket client connected")
	s.run()
	s.log.Debug("websocket client gone")
}

// newSession makes a session for client connection cc (nil for the hub's
// own session); run or control starts it.
func (p *Proxy) newSession(cc *websocket.Conn, log *slog.Logger, client string) *session {
	s := &session{
		p: p, cc: cc, log: log, client: client,
		changed: make(chan struct{}, 1), lost: make(chan *upConn, 16), kick: make(chan struct{}, 1),
		conns: make(map[*upConn]struct{}), subs: make(map[string]*subscription),
		joining: make(map[*member]struct{}), pending: make(map[uint64]*pendingReq),
	}
	if cc != nil {
		s.out = newOutbox(p.cfg.ClientBufferBytes, func(reason string, n int) {
			p.m.dropped.WithLabelValues(reason).Add(float64(n))
		})
	}
	s.ctx, s.cancel = context.WithCancel(p.ctx)
	s.q = s.newQueue()
	return s
}

func (s *session) newQueue() *replayqueue.Queue[*frame, *frame] {
	return replayqueue.New[*frame, *frame](
		replayqueue.WithMaxItems[*frame](s.p.cfg.QueueSize),
		replayqueue.WithMaxBytes(s.p.cfg.QueueBytes, func(f *frame) int { return len(f.data) }),
		replayqueue.WithReplayTimeout[*frame](s.p.cfg.SwitchTimeout),
	)
}

func (s *session) notifyChange() {
	select {
	case s.changed <- struct{}{}:
	default:
	}
}

func (s *session) wake() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

func (s *session) run() {
	s.wdone = make(chan struct{})
	go s.writeLoop(s.wdone)
	s.wg.Go(s.control)
	for {
		// Not s.ctx: cancelling a Read closes the connection, and on proxy
		// shutdown the control goroutine first answers what is queued and
		// then closes the client with a close frame (which ends this Read).
		_, data, err := s.cc.Read(context.Background())
		if err != nil {
			break
		}
		s.handleClientFrame(data)
	}
	s.out.dropped(dropClientGone, s.out.kill()) // nothing more can be written
	s.cancel()
	s.wg.Wait()
	<-s.wdone
}

// shutdown runs when the client left or the proxy closes (for the hub's
// session: when the proxy closes).
func (s *session) shutdown() {
	s.mu.Lock()
	conns := make([]*upConn, 0, len(s.conns))
	for x := range s.conns {
		conns = append(conns, x)
	}
	s.conns = map[*upConn]struct{}{}
	s.cur = nil
	q := s.q
	var members []*member
	for _, sub := range s.subs {
		if sub.member != nil {
			members = append(members, sub.member)
		}
	}
	for m := range s.joining {
		members = append(members, m)
	}
	s.mu.Unlock()
	for _, m := range members {
		s.p.hub.leave(m)
	}
	for _, x := range conns {
		_ = x.c.CloseNow()
	}
	items := q.Fail(nil) // hands the buffered frames back
	switch {
	case s.p.ctx.Err() != nil:
		// The proxy is shutting down but the client may still be there:
		// tell it.
		for _, it := range items {
			if it.req != nil {
				s.fail(it.req, jsonrpc.CodeNoUpstream, "proxy shutting down")
			}
		}
		if s.cc == nil {
			return
		}
		s.out.stop()
		<-s.wdone
		_ = s.cc.Close(websocket.StatusGoingAway, "proxy shutting down")
	case countReqs(items) > 0:
		s.p.m.dropped.WithLabelValues(dropClientGone).Add(float64(countReqs(items)))
	}
	if s.cc != nil {
		s.out.stop()
		_ = s.cc.CloseNow()
	}
}

func countReqs(items []*frame) int {
	n := 0
	for _, it := range items {
		if it.req != nil && it.req.clientID != nil {
			n++
		}
	}
	return n
}

// stats for the gauges.
// The queue is asked outside s.mu: its lock can be held for a whole
// replay on a slow upstream, and a scrape must not stall the session.
func (s *session) stats() (subs, queued int) {
	s.mu.Lock()
	subs, q := len(s.subs), s.q
	s.mu.Unlock()
	return subs, q.Len()
}
