package proxy

// Subscriptions of a WebSocket session and their id mapping: the client
// keeps the ids the proxy gave it, whatever upstream serves them.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strconv"

	"github.com/coder/websocket"

	"github.com/steadfast-go/steadfast/examples/proxy/jsonrpc"
	"github.com/steadfast-go/steadfast/replayqueue"
)

// subscription is a subscription under the id its holder knows: a client's
// (shared through the hub: member is set), or one of the hub's topics.
type subscription struct {
	id     string
	kind   string
	params json.RawMessage
	member *member
	// newHeads of the hub's topics: what the members were given, for
	// duplicate suppression and gap filling.
	heads headTracker
}

// clientSubscribe gives the client a subscription of its own id on the
// hub's shared upstream subscription for these params.
func (s *session) clientSubscribe(m *jsonrpc.Message, b *batchReply) {
	if !m.HasID() {
		s.answer(b, nil, 0) // a notification: nobody could learn the id
		return
	}
	s.mu.Lock()
	if len(s.subs) >= s.p.cfg.MaxSubscriptions {
		s.mu.Unlock()
		e := &jsonrpc.Error{Code: jsonrpc.CodeTooManySubscriptions, Message: "too many subscriptions on this connection (limit " +
			strconv.Itoa(s.p.cfg.MaxSubscriptions) + "); unsubscribe first"}
		s.answer(b, jsonrpc.ErrorResponse(m.ID, e), e.Code)
		return
	}
	sub := &subscription{id: newSubID(), kind: subKind(m.Params), params: m.Params}
	mem := &member{s: s, sub: sub}
	sub.member = mem
	s.joining[mem] = struct{}{}
	s.mu.Unlock()
	id := m.ID
	mem.ready = func(e *jsonrpc.Error) {
		s.mu.Lock()
		defer s.mu.Unlock()
		delete(s.joining, mem)
		if e != nil {
			s.answerLocked(b, jsonrpc.ErrorResponse(id, e), e.Code)
			return
		}
		s.subs[sub.id] = sub
		s.answerLocked(b, jsonrpc.Response(id, mustJSON(sub.id)), 0)
	}
	s.p.hub.join(mem, m.Params)
}

func subKind(params json.RawMessage) string {
	var kind string
	var ps []json.RawMessage
	if json.Unmarshal(params, &ps) == nil && len(ps) > 0 {
		_ = json.Unmarshal(ps[0], &kind)
	}
	return kind
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
	sub := s.subs[c]
	if sub == nil {
		s.mu.Unlock()
		e := &jsonrpc.Error{Code: -32000, Message: "subscription not found"}
		s.answer(b, jsonrpc.ErrorResponse(m.ID, e), e.Code)
		return
	}
	delete(s.subs, c)
	s.mu.Unlock()
	// Out of the topic before the answer: no notification follows "true".
	s.p.hub.leave(sub.member)
	if m.HasID() {
		s.answer(b, jsonrpc.Response(m.ID, json.RawMessage("true")), 0)
	} else {
		s.answer(b, nil, 0)
	}
}

// subscribeFor sends the hub's eth_subscribe for params through the
// session's queue; done gets the subscription's id, or why it failed.
func (s *session) subscribeFor(params json.RawMessage, done func(string, *jsonrpc.Error)) {
	s.send(&pendingReq{method: "eth_subscribe", params: params, safe: true, done: done})
}

// dropSubscription ends the hub's subscription c: out of the replay set,
// and unsubscribed on every connection that has it.
func (s *session) dropSubscription(c string) {
	s.mu.Lock()
	if s.subs[c] == nil {
		s.mu.Unlock()
		return
	}
	delete(s.subs, c)
	type orphan struct {
		x  *upConn
		up string
	}
	var ups []orphan
	for x := range s.conns {
		for up, cid := range x.subs {
			if cid == c {
				delete(x.subs, up)
				ups = append(ups, orphan{x, up})
			}
		}
		delete(x.fresh, c)
	}
	q := s.q
	s.mu.Unlock()
	q.RemoveReplay(c)
	for _, o := range ups {
		s.unsubscribeInternal(o.x, o.up)
	}
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

// onSubscribeReply turns the reply to the hub's eth_subscribe into a
// subscription with an id of the hub's that survives switches.
func (s *session) onSubscribeReply(x *upConn, id uint64, m *jsonrpc.Message) {
	s.switchMu.RLock() // no Connect while the replay set and the maps change
	defer s.switchMu.RUnlock()
	s.mu.Lock()
	req := s.pending[id]
	delete(s.pending, id)
	if req == nil || req.done == nil {
		s.mu.Unlock()
		return
	}
	var up string
	if m.Error != nil || json.Unmarshal(m.Result, &up) != nil || up == "" {
		s.mu.Unlock()
		e := m.Error
		if e == nil {
			e = &jsonrpc.Error{Code: jsonrpc.CodeInternalError, Message: "upstream answered eth_subscribe without a subscription id"}
		}
		req.done("", e)
		return
	}
	sub := &subscription{id: newSubID(), kind: subKind(req.params), params: req.params}
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
	req.done(sub.id, nil)
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

// headOf reads a header's number and hash without decoding the rest (the
// top-level members only: transactions and withdrawals are skipped). ok is
// false when either is missing or not a plain hex string.
func headOf(result json.RawMessage) (num uint64, hash string, ok bool) {
	var numOK, hashOK bool
	jsonrpc.Members(result, func(key, val []byte) bool {
		switch string(key) {
		case "number":
			if v, plain := jsonrpc.PlainString(val); plain {
				num, numOK = parseHex(string(v))
			}
		case "hash":
			if v, plain := jsonrpc.PlainString(val); plain {
				hash, hashOK = string(v), true
			}
		}
		return !(numOK && hashOK)
	})
	return num, hash, numOK && hashOK
}

// onNotificationMsg handles a notification that came in a form
// ScanNotification left to the full decoder.
func (s *session) onNotificationMsg(x *upConn, m *jsonrpc.Message) {
	var params struct {
		Subscription string          `json:"subscription"`
		Result       json.RawMessage `json:"result"`
	}
	if err := json.Unmarshal(m.Params, &params); err != nil || !json.Valid(params.Result) {
		s.log.Warn("bad notification from upstream", "upstream", x.u.Name, "err", err)
		return
	}
	s.onNotification(x, params.Subscription, params.Result)
}

// onNotification delivers one upstream notification (its subscription id
// and result, decoded once) to the client under the client's id.
func (s *session) onNotification(x *upConn, upSub string, result json.RawMessage) {
	s.mu.Lock()
	cid, ok := x.subs[upSub]
	sub := s.subs[cid]
	if !ok || sub == nil {
		s.mu.Unlock()
		return // a subscription the client dropped; its upstream side is being removed
	}
	if sub.kind != "newHeads" {
		s.emitLocked(cid, result)
		s.mu.Unlock()
		return
	}
	num, hash, isHead := headOf(result)
	if !isHead {
		s.emitLocked(cid, result)
		s.mu.Unlock()
		return
	}
	var gapFrom uint64
	var fill bool
	if x.fresh[cid] {
		delete(x.fresh, cid)
		gapFrom, fill = sub.heads.gap(num, s.p.cfg.GapFill)
	}
	s.mu.Unlock()

	var filled []json.RawMessage
	if fill {
		filled = s.fetchHeads(x.u, gapFrom, num-1)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.subs[cid] == nil {
		return
	}
	for _, hdr := range filled {
		if n, fh, ok := headOf(hdr); ok && s.deliverHeadLocked(sub, n, fh, hdr) {
			s.p.m.gapHeads.Inc()
		}
	}
	s.deliverHeadLocked(sub, num, hash, result)
}

// deliverHeadLocked forwards a head unless the client already has that
// block hash at that height.
func (s *session) deliverHeadLocked(sub *subscription, num uint64, hash string, result json.RawMessage) bool {
	if !sub.heads.accept(num, hash) {
		s.p.m.dupHeads.Inc()
		return false
	}
	s.emitLocked(sub.id, result)
	return true
}

// emitLocked delivers a notification of subscription sub: for the hub, to
// the topic's members; otherwise to the client.
func (s *session) emitLocked(sub string, result json.RawMessage) {
	if s.fan != nil {
		s.fan(sub, result)
		return
	}
	s.out.push(outItem{sub: sub, result: result})
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
