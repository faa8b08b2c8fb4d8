package proxy

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/steadfast-go/steadfast/examples/proxy/jsonrpc"
	"github.com/steadfast-go/steadfast/failover"
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
	maxSeenHeads         = 256
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
	unsubOf  string                              // eth_unsubscribe: the client's subscription id
	internal func(x *upConn, m *jsonrpc.Message) // internal requests: consumes the reply
}

// batchReply collects the replies of one client batch. Guarded by
// session.mu.
type batchReply struct {
	remaining int
	parts     [][]byte
}

// subscription is a client subscription, under the id the client knows.
type subscription struct {
	id     string
	kind   string
	params json.RawMessage
	// newHeads: what the client has received, for duplicate suppression
	// and gap filling.
	haveLast bool
	lastNum  uint64
	seen     map[uint64]string // block number -> hash
}

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
	pending map[uint64]*pendingReq
	nextID  uint64
	// since is when the session lost its upstream (zero while connected);
	// outage is set once that lasted longer than SwitchTimeout: requests
	// then fail fast until an upstream is back.
	since  time.Time
	outage bool
	gone   bool // the client connection failed: nothing more can be written
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
	s := &session{
		p: p, cc: cc, log: p.log.With("client", r.RemoteAddr), client: client,
		changed: make(chan struct{}, 1), lost: make(chan *upConn, 16), kick: make(chan struct{}, 1),
		conns: make(map[*upConn]struct{}), subs: make(map[string]*subscription),
		pending: make(map[uint64]*pendingReq),
	}
	s.ctx, s.cancel = context.WithCancel(p.ctx)
	s.q = s.newQueue()
	s.since = time.Now() // not attached yet: SwitchTimeout counts from here
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
	s.mu.Lock()
	s.gone = true
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
}

// ---- client side ----

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
		if m.Method == "eth_unsubscribe" {
			s.clientUnsubscribe(m, b)
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

// writeLocked writes one message to the client. Called with s.mu held, so
// the order of decisions is the order on the wire.
func (s *session) writeLocked(b []byte) {
	if s.gone {
		s.p.m.dropped.WithLabelValues(dropClientGone).Inc()
		return
	}
	// Not s.ctx: on proxy shutdown the session still tells the client why.
	ctx, cancel := context.WithTimeout(context.Background(), clientWriteTimeout)
	err := s.cc.Write(ctx, websocket.MessageText, b)
	cancel()
	if err != nil {
		s.gone = true
		s.p.m.dropped.WithLabelValues(dropClientGone).Inc()
		s.cancel()
	}
}

func encodeRequest(id uint64, method string, params json.RawMessage) []byte {
	return jsonrpc.AppendRequest(make([]byte, 0, 64+len(method)+len(params)), id, method, params)
}

// forward sends a client request (or notification) upstream through the
// queue under a proxy id.
func (s *session) forward(m *jsonrpc.Message, b *batchReply) {
	req := &pendingReq{clientID: m.ID, method: m.Method, params: m.Params, batch: b,
		safe: safeToRepeat(m.Method) || m.Method == "eth_subscribe"}
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
	hasReply := req.clientID != nil || req.internal != nil
	if req.method == "eth_subscribe" && req.internal == nil && len(s.subs) >= s.p.cfg.MaxSubscriptions {
		s.mu.Unlock()
		s.fail(req, jsonrpc.CodeTooManySubscriptions, "too many subscriptions on this connection (limit "+
			strconv.Itoa(s.p.cfg.MaxSubscriptions)+"); unsubscribe first")
		return
	}
	if hasReply && len(s.pending) >= s.p.cfg.MaxInFlight {
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
	q := s.q
	s.mu.Unlock()
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
	if req.clientID == nil {
		if req.batch != nil {
			s.answer(req.batch, nil, 0)
		}
		return
	}
	s.answer(req.batch, jsonrpc.ErrorResponse(req.clientID, &jsonrpc.Error{Code: code, Message: msg}), code)
}

func (s *session) clientUnsubscribe(m *jsonrpc.Message, b *batchReply) {
	var ids []string
	if err := json.Unmarshal(m.Params, &ids); err != nil || len(ids) != 1 {
		e := &jsonrpc.Error{Code: jsonrpc.CodeInvalidParams, Message: "eth_unsubscribe expects [subscriptionId]"}
		s.answer(b, jsonrpc.ErrorResponse(m.ID, e), e.Code)
		return
	}
	c := ids[0]
	s.mu.Lock()
	if s.subs[c] == nil {
		s.mu.Unlock()
		e := &jsonrpc.Error{Code: -32000, Message: "subscription not found"}
		s.answer(b, jsonrpc.ErrorResponse(m.ID, e), e.Code)
		return
	}
	delete(s.subs, c)
	var curUp string
	type orphan struct {
		x  *upConn
		up string
	}
	var others []orphan
	for x := range s.conns {
		for up, cid := range x.subs {
			if cid != c {
				continue
			}
			delete(x.subs, up)
			if x == s.cur {
				curUp = up
			} else {
				others = append(others, orphan{x, up})
			}
		}
		delete(x.fresh, c)
	}
	q := s.q
	s.mu.Unlock()
	q.RemoveReplay(c)
	for _, o := range others {
		s.unsubscribeInternal(o.x, o.up)
	}
	if curUp == "" || m.ID == nil {
		// Not subscribed upstream right now (mid-switch): the replay set no
		// longer has it, so it will not come back. Answer here.
		if m.HasID() {
			s.answer(b, jsonrpc.Response(m.ID, json.RawMessage("true")), 0)
		} else if b != nil {
			s.answer(b, nil, 0)
		}
		return
	}
	params, _ := json.Marshal([]string{curUp})
	s.send(&pendingReq{clientID: m.ID, method: m.Method, params: params, batch: b, unsubOf: c})
}

// unsubscribeInternal drops an upstream subscription nobody wants any
// more, on connection x, bypassing the queue (x may be an old connection).
// Its reply is consumed here.
func (s *session) unsubscribeInternal(x *upConn, up string) {
	s.mu.Lock()
	s.nextID++
	id := s.nextID
	req := &pendingReq{upID: id, method: "eth_unsubscribe", internal: func(*upConn, *jsonrpc.Message) {}}
	req.sentOn.Store(x) // so detach(x) forgets it if no reply comes
	s.pending[id] = req
	s.mu.Unlock()
	params, _ := json.Marshal([]string{up})
	ctx, cancel := context.WithTimeout(s.ctx, upstreamWriteTimeout)
	err := x.c.Write(ctx, websocket.MessageText, encodeRequest(id, "eth_unsubscribe", params))
	cancel()
	if err != nil {
		s.mu.Lock()
		delete(s.pending, id)
		s.mu.Unlock()
	}
}

func newSubID() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return "0x" + hex.EncodeToString(b[:])
}

// ---- upstream side ----

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
		if sub.kind == "newHeads" {
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
	var m jsonrpc.Message
	if err := json.Unmarshal(data, &m); err != nil {
		s.log.Warn("bad frame from upstream", "upstream", x.u.Name, "err", err)
		return
	}
	s.handleUpstreamMsg(x, &m)
}

func (s *session) handleUpstreamMsg(x *upConn, m *jsonrpc.Message) {
	if m.Method == "eth_subscription" {
		s.onNotification(x, m)
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
	switch {
	case req.unsubOf != "":
		// The client's subscription is gone whatever the upstream says
		// (after a switch its upstream id may be unknown there).
		s.answerLocked(req.batch, jsonrpc.Response(req.clientID, json.RawMessage("true")), 0)
	default:
		s.answerLocked(req.batch, replyFor(req.clientID, m), 0)
	}
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

// onSubscribeReply turns the reply to a client's eth_subscribe into a
// subscription with a proxy id that survives switches.
func (s *session) onSubscribeReply(x *upConn, id uint64, m *jsonrpc.Message) {
	s.switchMu.RLock() // no Connect while the replay set and the maps change
	defer s.switchMu.RUnlock()
	s.mu.Lock()
	req := s.pending[id]
	delete(s.pending, id)
	if req == nil {
		s.mu.Unlock()
		return
	}
	var up string
	if m.Error != nil || json.Unmarshal(m.Result, &up) != nil || up == "" {
		s.answerLocked(req.batch, replyFor(req.clientID, m), 0)
		s.mu.Unlock()
		return
	}
	var kind string
	var ps []json.RawMessage
	if json.Unmarshal(req.params, &ps) == nil && len(ps) > 0 {
		_ = json.Unmarshal(ps[0], &kind)
	}
	sub := &subscription{id: newSubID(), kind: kind, params: req.params}
	s.subs[sub.id] = sub
	x.subs[up] = sub.id
	current := s.cur == x
	s.mu.Unlock()

	if err := s.q.AddReplay(sub.id, s.replayBuilder(sub), s.replayReply(sub.id)); err != nil {
		s.log.Warn("subscription not replayable", "err", err)
	}
	if !current {
		// Defensive: switches claim in-flight subscribes before Connect, so
		// a reply should not arrive on a connection that is no longer the
		// queue's. If it does, the next Connect replays it.
		s.log.Debug("subscribe reply on a non-current upstream connection", "upstream", x.u.Name)
	}
	s.mu.Lock()
	s.answerLocked(req.batch, jsonrpc.Response(req.clientID, mustJSON(sub.id)), 0)
	s.mu.Unlock()
}

func mustJSON(v string) json.RawMessage {
	b, _ := json.Marshal(v)
	return b
}

func (s *session) replayBuilder(sub *subscription) func(replayqueue.ReplayID) *frame {
	return func(id replayqueue.ReplayID) *frame {
		b := make([]byte, 0, 96+len(sub.params))
		b = append(b, `{"jsonrpc":"2.0","id":"`...)
		b = append(b, id.String()...)
		b = append(b, `","method":"eth_subscribe","params":`...)
		b = append(b, sub.params...)
		b = append(b, '}')
		return &frame{data: b, replay: true}
	}
}

func (s *session) replayReply(clientSub string) func(replayqueue.Reply[*frame]) {
	return func(r replayqueue.Reply[*frame]) {
		if r.Err != nil {
			s.p.m.replayReplies.WithLabelValues("error").Inc()
			if errors.Is(r.Err, replayqueue.ErrReplayTimeout) {
				// The upstream stayed connected but never confirmed: the
				// subscription is silent until the next switch replays it.
				s.log.Warn("replayed subscription not confirmed in time", "sub", clientSub, "err", r.Err)
			} else {
				s.log.Debug("replayed subscription got no reply", "sub", clientSub, "err", r.Err)
			}
			return
		}
		x, m := r.Value.conn, r.Value.msg
		var up string
		if m.Error != nil || json.Unmarshal(m.Result, &up) != nil || up == "" {
			s.p.m.replayReplies.WithLabelValues("error").Inc()
			s.log.Warn("upstream refused a replayed subscription", "upstream", x.u.Name, "sub", clientSub, "err", m.Error)
			x.replaysOK.Add(1) // answered: do not hold a planned switch for it
			return
		}
		s.p.m.replayReplies.WithLabelValues("ok").Inc()
		s.p.m.replayed.Inc()
		s.mu.Lock()
		_, alive := s.subs[clientSub]
		if alive {
			x.subs[up] = clientSub
		}
		s.mu.Unlock()
		x.replaysOK.Add(1)
		if !alive { // the client unsubscribed meanwhile
			s.unsubscribeInternal(x, up)
		}
	}
}

type headFields struct {
	Number string `json:"number"`
	Hash   string `json:"hash"`
}

func (s *session) onNotification(x *upConn, m *jsonrpc.Message) {
	var params struct {
		Subscription string          `json:"subscription"`
		Result       json.RawMessage `json:"result"`
	}
	if err := json.Unmarshal(m.Params, &params); err != nil {
		s.log.Warn("bad notification from upstream", "upstream", x.u.Name, "err", err)
		return
	}
	s.mu.Lock()
	cid, ok := x.subs[params.Subscription]
	sub := s.subs[cid]
	if !ok || sub == nil {
		s.mu.Unlock()
		return // a subscription the client dropped; its upstream side is being removed
	}
	if sub.kind != "newHeads" {
		s.writeLocked(notification(cid, params.Result))
		s.mu.Unlock()
		return
	}
	var h headFields
	_ = json.Unmarshal(params.Result, &h)
	num, err := strconv.ParseUint(trim0x(h.Number), 16, 64)
	if err != nil {
		s.writeLocked(notification(cid, params.Result))
		s.mu.Unlock()
		return
	}
	var gapFrom uint64
	if x.fresh[cid] {
		delete(x.fresh, cid)
		if sub.haveLast && num > sub.lastNum+1 && s.p.cfg.GapFill > 0 {
			gapFrom = sub.lastNum + 1
			if limit := uint64(s.p.cfg.GapFill); num-gapFrom > limit {
				gapFrom = num - limit // a longer gap is left for the client to fetch
			}
		}
	}
	s.mu.Unlock()

	var filled []json.RawMessage
	if gapFrom > 0 {
		filled = s.fetchHeads(x.u, gapFrom, num-1)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.subs[cid] == nil {
		return
	}
	for _, hdr := range filled {
		var fh headFields
		if json.Unmarshal(hdr, &fh) != nil {
			continue
		}
		if n, err := strconv.ParseUint(trim0x(fh.Number), 16, 64); err == nil && s.deliverHeadLocked(sub, n, fh.Hash, hdr) {
			s.p.m.gapHeads.Inc()
		}
	}
	s.deliverHeadLocked(sub, num, h.Hash, params.Result)
}

// deliverHeadLocked forwards a head unless the client already has that
// block hash at that height.
func (s *session) deliverHeadLocked(sub *subscription, num uint64, hash string, result json.RawMessage) bool {
	if sub.seen == nil {
		sub.seen = make(map[uint64]string)
	}
	if prev, ok := sub.seen[num]; ok && prev == hash {
		s.p.m.dupHeads.Inc()
		return false
	}
	sub.seen[num] = hash
	if !sub.haveLast || num > sub.lastNum {
		sub.lastNum, sub.haveLast = num, true
	}
	if len(sub.seen) > 2*maxSeenHeads {
		for n := range sub.seen {
			if n+maxSeenHeads < sub.lastNum {
				delete(sub.seen, n)
			}
		}
	}
	s.writeLocked(notification(sub.id, result))
	return true
}

func trim0x(s string) string {
	if len(s) > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X') {
		return s[2:]
	}
	return "!"
}

func notification(sub string, result json.RawMessage) []byte {
	return jsonrpc.AppendNotification(make([]byte, 0, 96+len(sub)+len(result)), sub, result)
}

// fetchHeads gets blocks from..to from u as newHeads-shaped headers, to
// fill the gap a switch left. Errors end the fill early (logged).
func (s *session) fetchHeads(u *upstream, from, to uint64) []json.RawMessage {
	var out []json.RawMessage
	for n := from; n <= to; n++ {
		ctx, cancel := context.WithTimeout(s.ctx, s.p.cfg.CheckTimeout*2)
		raw, err := s.p.call(ctx, u, "eth_getBlockByNumber", []any{"0x" + strconv.FormatUint(n, 16), false})
		cancel()
		if err != nil || string(raw) == "null" {
			s.log.Warn("could not fill a newHeads gap", "upstream", u.Name, "block", n, "err", err)
			return out
		}
		var fields map[string]json.RawMessage
		if json.Unmarshal(raw, &fields) != nil {
			return out
		}
		for _, k := range []string{"transactions", "uncles", "withdrawals", "size", "totalDifficulty"} {
			delete(fields, k)
		}
		b, err := json.Marshal(fields)
		if err != nil {
			return out
		}
		out = append(out, b)
	}
	return out
}

// ---- control: switching ----

func (s *session) control() {
	defer s.shutdown()
	delay := retryMin
	s.reconcile(-1)
	for {
		var wake <-chan time.Time
		var t *time.Timer
		if d, ok := s.retryIn(delay); ok {
			t = time.NewTimer(d)
			wake = t.C
		}
		select {
		case <-s.ctx.Done():
			return
		case <-s.changed:
			delay = retryMin
			s.reconcile(-1)
		case x := <-s.lost:
			s.onLost(x)
		case <-wake:
			if !s.reconcile(-1) {
				delay = min(2*delay, retryMax)
			} else {
				delay = retryMin
			}
		}
		if t != nil {
			t.Stop()
		}
	}
}

// retryIn says whether the session should try again to reach its
// preferred upstream, and when.
func (s *session) retryIn(delay time.Duration) (time.Duration, bool) {
	want, ok := s.pick()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cur == nil {
		if !s.outage {
			left := s.p.cfg.SwitchTimeout - time.Since(s.since)
			return max(0, min(delay, left)), true
		}
		return delay, true
	}
	if ok && want != s.cur.u.index {
		return delay, true
	}
	return 0, false
}

// reconcile moves the session to the upstream the failover group selects,
// or to any reachable one when it has none. skip is an upstream to try
// last (one that just failed). It reports whether the session ended up
// where it wants to be.
func (s *session) reconcile(skip int) bool {
	want, ok := s.pick()
	s.mu.Lock()
	cur := s.cur
	s.mu.Unlock()
	if cur != nil {
		if !ok || want == cur.u.index {
			return true
		}
		if want < cur.u.index {
			return s.makeBeforeBreak(want)
		}
		s.p.m.wsSwitches.WithLabelValues("current_unhealthy").Inc()
		s.detach(cur, errors.New("upstream "+cur.u.Name+" no longer selected"))
	}
	if s.connectBest(skip) {
		return true
	}
	s.mu.Lock()
	expired := s.cur == nil && !s.outage && time.Since(s.since) >= s.p.cfg.SwitchTimeout
	s.mu.Unlock()
	if expired {
		s.failQueued()
	}
	return false
}

func (s *session) onLost(x *upConn) {
	s.mu.Lock()
	_, open := s.conns[x]
	isCur := s.cur == x
	s.mu.Unlock()
	if !open {
		return // closed by us
	}
	s.log.Warn("upstream connection lost", "upstream", x.u.Name, "err", x.lostErr)
	s.p.reportFailure(x.u.index, x.lostErr)
	s.detach(x, x.lostErr)
	if isCur {
		s.p.m.wsSwitches.WithLabelValues("upstream_lost").Inc()
		s.reconcile(x.u.index)
	}
}

// candidates lists upstreams to try: the selected one, then the healthy
// ones by priority, then the rest; skip goes last.
func (s *session) candidates(skip int) []int {
	want, ok := s.pick()
	var out []int
	seen := make([]bool, len(s.p.ups))
	add := func(i int) {
		if i >= 0 && !seen[i] && i != skip {
			seen[i] = true
			out = append(out, i)
		}
	}
	if ok {
		add(want)
	}
	st := s.p.group.Status()
	for _, t := range st {
		if t.State.String() == "healthy" {
			add(t.Index)
		}
	}
	for i := range s.p.ups {
		add(i)
	}
	if skip >= 0 {
		out = append(out, skip)
	}
	return slices.DeleteFunc(out, func(i int) bool { return s.p.ups[i].WSURL == "" })
}

func (s *session) connectBest(skip int) bool {
	for _, i := range s.candidates(skip) {
		if s.ctx.Err() != nil {
			return false
		}
		x, err := s.dial(i)
		if err != nil {
			s.log.Debug("upstream dial failed", "upstream", s.p.ups[i].Name, "err", err)
			if isConnError(err) {
				s.p.reportFailure(i, err)
			}
			continue
		}
		if s.attach(x) {
			return true
		}
	}
	return false
}

// attach connects the queue to x: replays, then buffered messages.
func (s *session) attach(x *upConn) bool {
	s.switchMu.Lock()
	s.mu.Lock()
	wasDown := !s.since.IsZero()
	s.mu.Unlock()
	gen, err := x.q.Connect(x.send)
	if err != nil {
		s.switchMu.Unlock()
		s.log.Warn("upstream failed during replay", "upstream", x.u.Name, "err", err)
		s.detach(x, err)
		return false
	}
	s.mu.Lock()
	x.gen = gen
	s.cur = x
	s.since = time.Time{}
	s.outage = false
	s.mu.Unlock()
	s.switchMu.Unlock()
	if wasDown {
		s.log.Info("session reattached", "upstream", x.u.Name)
	}
	return true
}

// detach closes x. Requests in flight on it are sent again when safe to
// repeat, and answered with an error otherwise.
func (s *session) detach(x *upConn, cause error) {
	s.mu.Lock()
	gen := x.gen
	s.mu.Unlock()
	if gen != 0 {
		x.q.Disconnect(gen, cause)
	}
	_ = x.c.CloseNow()
	s.mu.Lock()
	delete(s.conns, x)
	if s.cur == x {
		s.cur = nil
		s.since = time.Now()
	}
	var inflight []*pendingReq
	for id, req := range s.pending {
		if req.sentOn.Load() == x {
			delete(s.pending, id)
			inflight = append(inflight, req)
		}
	}
	s.mu.Unlock()
	for _, req := range inflight {
		s.retry(req, cause)
	}
}

// retry handles a request whose connection went away before the reply.
func (s *session) retry(req *pendingReq, cause error) {
	switch {
	case req.internal != nil:
		// nothing waits for it
	case req.unsubOf != "":
		s.answer(req.batch, jsonrpc.Response(req.clientID, json.RawMessage("true")), 0)
	case req.safe && req.resent < maxResend:
		req.resent++
		req.sentOn.Store(nil)
		s.mu.Lock()
		s.pending[req.upID] = req
		q := s.q
		s.mu.Unlock()
		s.enqueue(q, req, true)
	case req.safe:
		// Lost its upstream twice: perhaps the request itself kills
		// connections. Stop before it takes every upstream down.
		s.fail(req, jsonrpc.CodeUpstreamLost, "upstream connection lost before the reply, twice ("+cause.Error()+")")
	default:
		s.fail(req, jsonrpc.CodeUpstreamLost, "upstream connection lost before the reply; "+req.method+
			" is not retried because it may have been executed ("+cause.Error()+")")
	}
}

// makeBeforeBreak moves the session to the better upstream want while the
// current one keeps delivering.
func (s *session) makeBeforeBreak(want int) bool {
	s.mu.Lock()
	old := s.cur
	s.mu.Unlock()
	x, err := s.dial(want)
	if err != nil {
		s.log.Debug("failback dial failed", "upstream", s.p.ups[want].Name, "err", err)
		if isConnError(err) {
			s.p.reportFailure(want, err)
		}
		return false
	}
	s.switchMu.Lock()
	s.mu.Lock()
	oldGen := old.gen
	s.cur = nil // client messages are buffered from here until Connect
	var moved []*pendingReq
	for id, req := range s.pending {
		if req.sentOn.Load() == old && req.method == "eth_subscribe" && req.internal == nil {
			delete(s.pending, id)
			moved = append(moved, req)
		}
	}
	q := s.q
	s.mu.Unlock()
	old.q.Disconnect(oldGen, errPlannedSwitch)
	// A subscribe still unanswered on the old upstream is sent again on the
	// new one (its late reply on the old one finds no pending entry).
	for _, req := range moved {
		req.sentOn.Store(nil)
		s.mu.Lock()
		s.pending[req.upID] = req
		s.mu.Unlock()
		if err := q.Send(s.ctx, req.frame); err != nil {
			s.mu.Lock()
			delete(s.pending, req.upID)
			s.mu.Unlock()
			s.fail(req, jsonrpc.CodeQueueFull, "could not move the subscription: "+err.Error())
		}
	}
	gen, err := x.q.Connect(x.send)
	if err != nil {
		s.switchMu.Unlock()
		s.log.Warn("failback upstream failed during replay", "upstream", x.u.Name, "err", err)
		s.detach(x, err)
		s.detach(old, errPlannedSwitch)
		return false
	}
	s.mu.Lock()
	x.gen = gen
	s.cur = x
	s.since = time.Time{}
	s.mu.Unlock()
	s.switchMu.Unlock()

	// Break: once every replayed subscription is live on x and the old
	// connection has answered what it owes, close it.
	grace := min(s.p.cfg.SwitchTimeout, 2*time.Second)
	s.waitFor(grace, func() bool {
		if x.replaysOK.Load() < x.replaysSent.Load() {
			return false
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, req := range s.pending {
			if req.sentOn.Load() == old {
				return false
			}
		}
		return true
	})
	s.detach(old, errPlannedSwitch)
	s.p.m.wsSwitches.WithLabelValues("better_available").Inc()
	s.log.Info("session failed back", "from", old.u.Name, "to", x.u.Name)
	return true
}

// waitFor waits until cond holds, the timeout passes or the session ends.
// Readers wake it through s.kick whenever a reply arrives.
func (s *session) waitFor(timeout time.Duration, cond func() bool) bool {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for !cond() {
		select {
		case <-s.kick:
		case <-t.C:
			return cond()
		case <-s.ctx.Done():
			return false
		}
	}
	return true
}

// failQueued answers every buffered request with a no-upstream error after
// SwitchTimeout without an upstream, and makes later requests fail fast
// until an upstream is back. The subscriptions stay and are replayed then.
func (s *session) failQueued() {
	s.switchMu.Lock()
	s.mu.Lock()
	old := s.q
	s.mu.Unlock()
	keys := old.ReplayKeys()
	items := old.Fail(errNoUpstream)
	nq := s.newQueue()
	s.mu.Lock()
	for _, k := range keys {
		if sub := s.subs[k]; sub != nil {
			_ = nq.AddReplay(k, s.replayBuilder(sub), s.replayReply(k))
		}
	}
	s.q = nq
	s.outage = true
	for _, it := range items {
		if it.req != nil {
			delete(s.pending, it.req.upID)
		}
	}
	s.mu.Unlock()
	s.switchMu.Unlock()
	s.log.Warn("no upstream reachable; failing queued requests", "queued", len(items))
	for _, it := range items {
		if it.req != nil {
			s.fail(it.req, jsonrpc.CodeNoUpstream, "no upstream reachable within "+s.p.cfg.SwitchTimeout.String())
		}
	}
}

// shutdown runs when the client left or the proxy closes.
func (s *session) shutdown() {
	s.mu.Lock()
	conns := make([]*upConn, 0, len(s.conns))
	for x := range s.conns {
		conns = append(conns, x)
	}
	s.conns = map[*upConn]struct{}{}
	s.cur = nil
	q := s.q
	s.mu.Unlock()
	for _, x := range conns {
		_ = x.c.CloseNow()
	}
	items := q.Fail(nil) // hands the buffered frames back
	if s.p.ctx.Err() != nil {
		// The proxy is shutting down but the client is still there: tell it.
		for _, it := range items {
			if it.req != nil {
				s.fail(it.req, jsonrpc.CodeNoUpstream, "proxy shutting down")
			}
		}
		_ = s.cc.Close(websocket.StatusGoingAway, "proxy shutting down")
	} else if n := countReqs(items); n > 0 {
		s.p.m.dropped.WithLabelValues(dropClientGone).Add(float64(n))
	}
	_ = s.cc.CloseNow()
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

// pick is the upstream the session should be on: the selected one, or,
// when that one has no WebSocket URL, the best healthy one that has.
func (s *session) pick() (int, bool) {
	i, ok := s.p.group.PickIndex()
	if s.p.ups[i].WSURL != "" {
		return i, ok
	}
	for _, t := range s.p.group.Status() {
		if t.State == failover.Healthy && !t.Drained && s.p.ups[t.Index].WSURL != "" {
			return t.Index, true
		}
	}
	return i, false
}
