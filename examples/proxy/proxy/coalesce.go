package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/steadfast-go/steadfast/examples/proxy/jsonrpc"
)

// Coalescing and caching of HTTP reads. The rules that make every answer
// one the node could have given:
//
//   - Only methods that read (safeToRepeat) are shared; writes,
//     subscriptions and anything unknown always go upstream one by one.
//   - Identical in-flight requests (same method and params bytes) share one
//     upstream call, and only with calls that started when the proxy had
//     seen the same head: the highest block number it knows of (health
//     checks, and the eth_blockNumber and block replies it relays) is part
//     of the key. An answer is therefore never older than the head the
//     proxy had seen when the request arrived, so a client that saw block
//     N from the proxy never gets an older "latest" afterwards.
//   - eth_blockNumber and the "latest" block are also reused until the
//     next head, when the proxy follows the upstream's heads (follow.go).
//     The generation of the follower, bumped by every head, switch and
//     loss, is part of the flight key too, so a reorg's replacement head
//     at the same height starts new calls.
//   - Answers are cached only when they can never change: about a block
//     named by its hash, or by a number at or below the finalized block,
//     and only successful, non-null results.
//
// The shared upstream call runs on the upstream's own context, not on any
// one client's: a client that leaves does not cancel it for the others.

// shared is the outcome of one upstream call, shared by its waiters.
type shared struct {
	status int
	result json.RawMessage // the "result" member, as the node encoded it
	errObj json.RawMessage // or the "error" member
	u      *upstream
}

// serveShared answers one read through the cache or a shared upstream
// call. ok is false when the request is not eligible (the caller forwards
// it as usual).
func (p *Proxy) serveShared(m *jsonrpc.Message) (reply []byte, status int, u *upstream, err error) {
	fin := p.finalized.Load()
	var ckey string
	if cacheable(m.Method, m.Params, fin) {
		ckey = m.Method + "\x00" + string(m.Params)
		if res, ok := p.cache.get(ckey); ok {
			p.m.cacheHits.Inc()
			return jsonrpc.AppendResult(make([]byte, 0, 48+len(m.ID)+len(res)), m.ID, res, nil), 200, nil, nil
		}
	}
	var rkey string
	if p.cfg.ReuseLatest > 0 && headRead(m.Method, m.Params) {
		rkey = m.Method + "\x00" + string(m.Params)
		if sh, ok := p.reused(rkey); ok {
			p.m.reused.Inc()
			return jsonrpc.AppendResult(make([]byte, 0, 48+len(m.ID)+len(sh.result)), m.ID, sh.result, nil), sh.status, nil, nil
		}
	}
	gen := p.follow.gen.Load() // before head: see keep
	head := p.head.Load()
	key := strconv.FormatUint(gen, 16) + "\x00" + strconv.FormatUint(head, 16) + "\x00" + m.Method + "\x00" + string(m.Params)
	v, err, dup := p.flight.Do(key, func() (any, error) {
		at := time.Now()
		sh, err := p.sharedCall(m.Method, m.Params)
		if err == nil && rkey != "" {
			p.keep(rkey, gen, head, at, sh)
		}
		return sh, err
	})
	if dup {
		p.m.coalesced.Inc()
	}
	if err != nil {
		return nil, 0, nil, err
	}
	sh := v.(*shared)
	if ckey != "" && sh.status == 200 && len(sh.errObj) == 0 && len(sh.result) > 0 && !bytes.Equal(sh.result, jsonrpc.Null) {
		p.cache.put(ckey, sh.result)
	}
	out := jsonrpc.AppendResult(make([]byte, 0, 48+len(m.ID)+len(sh.result)+len(sh.errObj)), m.ID, sh.result, sh.errObj)
	return out, sh.status, sh.u, nil
}

// sharedCall makes the one upstream call of a flight.
func (p *Proxy) sharedCall(method string, params json.RawMessage) (*shared, error) {
	body := jsonrpc.AppendRequest(make([]byte, 0, 64+len(method)+len(params)), 1, method, params)
	rep, u, err := p.forward(context.Background(), body, true, method)
	if err != nil {
		return nil, err
	}
	defer rep.release()
	result, errObj, ok := jsonrpc.ScanResult(rep.body.Bytes())
	if !ok {
		return nil, errBadReply
	}
	sh := &shared{status: rep.status, u: u, result: bytes.Clone(result), errObj: bytes.Clone(errObj)}
	if len(sh.errObj) == 0 {
		p.noteHead(method, sh.result)
	}
	return sh, nil
}

// noteHead raises the proxy's view of the head from an answer it relays:
// eth_blockNumber, or a block or header asked for by tag.
func (p *Proxy) noteHead(method string, result json.RawMessage) {
	var n uint64
	var ok bool
	switch method {
	case "eth_blockNumber":
		var s string
		if json.Unmarshal(result, &s) == nil {
			n, ok = parseHex(s)
		}
	case "eth_getBlockByNumber", "eth_getHeaderByNumber":
		n, ok = blockNumberOf(result)
	}
	if ok {
		raiseTo(&p.head, n)
	}
}

// blockNumberOf finds the top-level "number" of an encoded block without
// decoding the whole block (its transactions carry "blockNumber", which
// this does not match).
func blockNumberOf(block json.RawMessage) (uint64, bool) {
	const field = `"number":"`
	i := bytes.Index(block, []byte(field))
	if i < 0 {
		return 0, false
	}
	rest := block[i+len(field):]
	j := bytes.IndexByte(rest, '"')
	if j < 0 {
		return 0, false
	}
	return parseHex(string(rest[:j]))
}

// raiseTo sets a to n if n is higher.
func raiseTo(a *atomic.Uint64, n uint64) {
	for {
		cur := a.Load()
		if n <= cur || a.CompareAndSwap(cur, n) {
			return
		}
	}
}
