package proxy

// Switching a WebSocket session between upstreams: failover
// (break-before-make) and failback (make-before-break).

import (
	"errors"
	"slices"
	"time"

	"github.com/steadfast-go/steadfast/examples/proxy/jsonrpc"
	"github.com/steadfast-go/steadfast/failover"
)

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
	if !s.wantUp {
		return 0, false
	}
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
	cur, wantUp := s.cur, s.wantUp
	s.mu.Unlock()
	if !wantUp {
		return true // no request yet: nothing to connect
	}
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
