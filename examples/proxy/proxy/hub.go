package proxy

// One upstream subscription per distinct subscription.
//
// The hub is a session without a client: it holds one upstream connection
// of its own, subscribes there once per distinct eth_subscribe (the same
// params, compacted), and fans every notification out to the client
// subscriptions that asked for it. Being a session, it gives each of its
// subscriptions (a topic) what a session gives a client's: the id never
// changes across switches, failover replays every topic and consumes the
// replay replies, failback is make-before-break, and newHeads are
// de-duplicated and their gaps filled. It does that once per topic instead
// of once per client, and every member sees the topic's stream from the
// moment it joined.
//
// A notification is parsed once, by the hub session's reader. Fanning it out
// appends (the member's client id, the shared result bytes) to each member
// session's outbox, which never blocks: the message is assembled in that
// session's writer, and a client that falls behind is disconnected without
// holding up the others.
//
// Locks: hub session's mu, then hub.mu, then a member session's mu, then
// its outbox. A member session never calls into the hub while holding its
// own mu.

import (
	"bytes"
	"encoding/json"
	"sync"

	"github.com/steadfast-go/steadfast/examples/proxy/jsonrpc"
)

type hub struct {
	p *Proxy

	mu     sync.Mutex
	s      *session          // the hub's own session, started by the first join
	topics map[string]*topic // by key
	byID   map[string]*topic // confirmed topics, by the hub session's subscription id
}

// topic is one upstream subscription and the client subscriptions that
// share it.
type topic struct {
	key     string
	params  json.RawMessage
	id      string    // the hub session's subscription id; "" until confirmed
	waiters []*member // joined before the upstream confirmed
	members map[*member]struct{}
}

// member is one client subscription of one session in a topic.
type member struct {
	s   *session
	sub *subscription // id and kind the client knows
	t   *topic        // guarded by hub.mu
	// ready answers the client's eth_subscribe: nil, or why the upstream
	// refused it. Called with hub.mu held, before the first notification.
	ready func(*jsonrpc.Error)
}

func newHub(p *Proxy) *hub {
	return &hub{p: p, topics: make(map[string]*topic), byID: make(map[string]*topic)}
}

// topicKey is what makes two subscriptions the same: their params, with
// insignificant whitespace removed.
func topicKey(params json.RawMessage) string {
	var b bytes.Buffer
	if json.Compact(&b, params) != nil {
		return string(params)
	}
	return b.String()
}

// session returns the hub's session, starting it if needed; nil once the
// proxy is closing. Called with h.mu held.
func (h *hub) sessionLocked() *session {
	if h.s != nil {
		return h.s
	}
	p := h.p
	s := p.newSession(nil, p.log.With("session", "hub"), "")
	s.fan = h.fan
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	h.s = s
	p.wg.Go(func() {
		s.control()
		s.wg.Wait()
	})
	return s
}

// running returns the hub's session if it has started.
func (h *hub) running() *session {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.s
}

var errHubClosed = &jsonrpc.Error{Code: jsonrpc.CodeNoUpstream, Message: "proxy shutting down"}

// join adds m to the topic of params, creating it (and its upstream
// subscription) if it is the first. m.ready is called exactly once, now or
// when the upstream answers, unless m leaves first.
func (h *hub) join(m *member, params json.RawMessage) {
	key := topicKey(params)
	h.mu.Lock()
	hs := h.sessionLocked()
	if hs == nil {
		m.ready(errHubClosed)
		h.mu.Unlock()
		return
	}
	t := h.topics[key]
	switch {
	case t == nil:
		t = &topic{key: key, params: params, members: make(map[*member]struct{}), waiters: []*member{m}}
		h.topics[key] = t
		m.t = t
		h.mu.Unlock()
		hs.subscribeFor(params, func(id string, e *jsonrpc.Error) { h.confirm(t, id, e) })
		return
	case t.id == "":
		t.waiters = append(t.waiters, m)
	default:
		m.ready(nil)
		t.members[m] = struct{}{}
	}
	m.t = t
	h.mu.Unlock()
}

// confirm is the upstream's answer to a topic's eth_subscribe.
func (h *hub) confirm(t *topic, id string, e *jsonrpc.Error) {
	h.mu.Lock()
	waiters := t.waiters
	t.waiters = nil
	if e != nil {
		if h.topics[t.key] == t {
			delete(h.topics, t.key)
		}
		for _, m := range waiters {
			m.t = nil
			m.ready(e)
		}
		h.mu.Unlock()
		return
	}
	t.id = id
	for _, m := range waiters {
		m.ready(nil)
		t.members[m] = struct{}{}
	}
	empty := len(t.members) == 0
	if empty {
		// Everyone left while it was being set up.
		if h.topics[t.key] == t {
			delete(h.topics, t.key)
		}
	} else {
		h.byID[id] = t
	}
	hs := h.s
	h.mu.Unlock()
	if empty {
		hs.dropSubscription(id)
	}
}

// leave removes m from its topic; the last member to leave ends the
// upstream subscription. After leave returns, m gets no notification.
func (h *hub) leave(m *member) {
	h.mu.Lock()
	t := m.t
	if t == nil {
		h.mu.Unlock()
		return
	}
	m.t = nil
	delete(t.members, m)
	for i, w := range t.waiters {
		if w == m {
			t.waiters = append(t.waiters[:i], t.waiters[i+1:]...)
			break
		}
	}
	var drop string
	if len(t.members) == 0 && len(t.waiters) == 0 {
		if h.topics[t.key] == t {
			delete(h.topics, t.key)
		}
		if t.id != "" { // a pending topic is dropped by confirm
			delete(h.byID, t.id)
			drop = t.id
		}
	}
	hs := h.s
	h.mu.Unlock()
	if drop != "" {
		hs.dropSubscription(drop)
	}
}

// fan delivers one notification of the hub session's subscription id to
// every member. Called by the hub session with its mu held, in the order
// the session decided (de-duplicated, gaps filled).
func (h *hub) fan(id string, result json.RawMessage) {
	h.mu.Lock()
	defer h.mu.Unlock()
	t := h.byID[id]
	if t == nil {
		return
	}
	for m := range t.members {
		m.s.out.push(outItem{sub: m.sub.id, result: result})
	}
}

// count is the number of upstream subscriptions the hub holds (for the
// gauge).
func (h *hub) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.byID)
}
