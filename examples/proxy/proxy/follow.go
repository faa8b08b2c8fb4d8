package proxy

// Reusing answers about the head.
//
// eth_blockNumber and the "latest" block change only when the chain gets a
// new head. The proxy follows the selected upstream's newHeads over one
// WebSocket subscription of its own, and while no new head has arrived it
// answers those reads from the last answer the node gave for the current
// head instead of asking again. An answer is reused only while all of these
// hold, so it is always one the node gave since the newest head the proxy
// knows of:
//
//   - the follower is subscribed on the upstream that gave the answer, and
//     that upstream is still the selected one;
//   - no head (new, or a reorg's replacement at the same height), switch
//     of upstream or loss of the subscription happened since the call that
//     produced it started (a generation counter, bumped by each);
//   - the highest head the proxy has seen from any source (checks, relayed
//     answers, the follower) is the one it had when that call started;
//   - it is younger than Config.ReuseLatest, which bounds what a
//     subscription that hangs without failing could cost.
//
// Without a WebSocket URL on the selected upstream there is nothing to
// follow, and these reads are only coalesced.

import (
	"bytes"
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
)

// headFollower holds the state that decides whether an answer about the
// head may be reused.
type headFollower struct {
	start sync.Once
	// gen is bumped by every head, switch and loss of the subscription.
	gen atomic.Uint64
	// on is the upstream the follower is subscribed on; nil when it is not.
	on atomic.Pointer[upstream]

	mu      sync.Mutex
	answers map[string]*reusable // by method and params
}

// reusable is the last answer about the head for one request.
type reusable struct {
	gen  uint64
	head uint64
	at   time.Time
	sh   *shared
}

// maxReusable bounds the answers kept; reusable reads name the head by tag,
// so few distinct ones exist, and the map is simply emptied past this.
const maxReusable = 256

// headRead reports whether an answer to method with params is fixed by the
// current head alone: eth_blockNumber, and a block or header asked for by
// the tag "latest".
func headRead(method string, params json.RawMessage) bool {
	switch method {
	case "eth_blockNumber":
		return true
	case "eth_getBlockByNumber", "eth_getHeaderByNumber":
		// The first argument, as the client wrote it: a block number (the
		// common case) is rejected without decoding anything.
		rest := bytes.TrimLeft(params, " \t\r\n")
		if len(rest) == 0 || rest[0] != '[' {
			return false
		}
		rest = bytes.TrimLeft(rest[1:], " \t\r\n")
		if !bytes.HasPrefix(rest, []byte(`"latest"`)) {
			return false
		}
		var args []json.RawMessage // the whole params must still be valid
		return json.Unmarshal(params, &args) == nil
	}
	return false
}

// reused returns the answer to key that may still be given, if any.
func (p *Proxy) reused(key string) (*shared, bool) {
	f := &p.follow
	f.start.Do(func() {
		p.mu.Lock() // as the hub's session: nothing starts once Close has begun
		defer p.mu.Unlock()
		if !p.closed {
			p.wg.Go(p.followHeads)
		}
	})
	f.mu.Lock()
	r := f.answers[key]
	f.mu.Unlock()
	if r == nil || r.gen != f.gen.Load() || r.head != p.head.Load() || r.sh.u != f.on.Load() ||
		time.Since(r.at) >= p.cfg.ReuseLatest {
		return nil, false
	}
	// The selection itself, not only its report: watchChanges bumps the
	// generation a moment after the switch, and no reused answer may come
	// from an upstream that is no longer the selected one in between.
	if i, _ := p.group.PickIndex(); p.ups[i] != r.sh.u {
		return nil, false
	}
	return r.sh, true
}

// keep records sh, the answer of a call that started at generation gen and
// head head, unless anything moved while it ran.
func (p *Proxy) keep(key string, gen, head uint64, at time.Time, sh *shared) {
	f := &p.follow
	if sh.status != 200 || len(sh.errObj) != 0 || gen != f.gen.Load() || head != p.head.Load() || sh.u != f.on.Load() {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.answers == nil || len(f.answers) >= maxReusable {
		f.answers = make(map[string]*reusable)
	}
	f.answers[key] = &reusable{gen: gen, head: head, at: at, sh: sh}
}

// moved ends every reuse: a new head, a switch, a lost subscription.
func (f *headFollower) moved() { f.gen.Add(1) }

// followHeads keeps a newHeads subscription on the selected upstream until
// the proxy closes, moving with the selection.
func (p *Proxy) followHeads() {
	const minWait, maxWait = 100 * time.Millisecond, 5 * time.Second
	wait := minWait
	for p.ctx.Err() == nil {
		i, _ := p.group.PickIndex()
		u := p.ups[i]
		if u.WSURL == "" {
			wait = maxWait // nothing to follow; look again later
		} else if p.followOn(u) {
			wait = minWait // it was subscribed: the upstream works
		}
		p.follow.on.Store(nil)
		p.follow.moved()
		select {
		case <-p.ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, maxWait)
	}
}

// followOn subscribes to u's newHeads and records every head until the
// connection fails or the selection leaves u. It reports whether the
// subscription was made.
func (p *Proxy) followOn(u *upstream) bool {
	ctx := u.epoch.Load().ctx // ends when the selection leaves u
	dctx, cancel := context.WithTimeout(ctx, max(2*p.cfg.CheckTimeout, time.Second))
	c, _, err := websocket.Dial(dctx, u.WSURL, nil)
	cancel()
	if err != nil {
		p.log.Debug("head follower: dial failed", "upstream", u.Name, "err", err)
		return false
	}
	defer c.CloseNow()
	c.SetReadLimit(4 * DefaultMaxBodyBytes)
	wctx, cancel := context.WithTimeout(ctx, upstreamWriteTimeout)
	err = c.Write(wctx, websocket.MessageText, []byte(`{"jsonrpc":"2.0","id":1,"method":"eth_subscribe","params":["newHeads"]}`))
	cancel()
	if err != nil {
		return false
	}
	var sub string
	for {
		_, data, err := c.Read(ctx)
		if err != nil {
			if sub != "" {
				p.log.Debug("head follower: connection ended", "upstream", u.Name, "err", err)
			}
			return sub != ""
		}
		var msg struct {
			ID     json.RawMessage `json:"id"`
			Result json.RawMessage `json:"result"`
			Params struct {
				Subscription string          `json:"subscription"`
				Result       json.RawMessage `json:"result"`
			} `json:"params"`
		}
		if json.Unmarshal(data, &msg) != nil {
			continue
		}
		switch {
		case sub == "" && string(msg.ID) == "1":
			if json.Unmarshal(msg.Result, &sub) != nil || sub == "" {
				p.log.Warn("head follower: newHeads refused", "upstream", u.Name, "reply", string(data))
				return false
			}
			if i, _ := p.group.PickIndex(); p.ups[i] != u {
				return true // the selection moved while subscribing
			}
			p.follow.moved()
			p.follow.on.Store(u)
		case sub != "" && msg.Params.Subscription == sub:
			if num, _, ok := headOf(msg.Params.Result); ok {
				raiseTo(&p.head, num)
			}
			p.follow.moved()
		}
	}
}
