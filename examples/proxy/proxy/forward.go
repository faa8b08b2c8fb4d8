package proxy

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"

	"github.com/steadfast-go/steadfast/failover"
)

// epoch is one stretch of time during which the selector stays on an
// upstream. Reads sent to the upstream run on its epoch's context, which
// is cancelled the moment the selection moves away: a read stuck on a hung
// upstream is then retried on the new one at once instead of waiting for
// its timeout. Writes never run on it (cancelling one midway would leave
// its outcome unknown).
type epoch struct {
	ctx    context.Context
	cancel context.CancelFunc
}

func (p *Proxy) newEpoch() *epoch {
	ctx, cancel := context.WithCancel(p.ctx)
	return &epoch{ctx, cancel}
}

// leave ends u's epoch: its in-flight reads are abandoned and retried.
func (p *Proxy) leave(u *upstream) {
	if old := u.epoch.Swap(p.newEpoch()); old != nil {
		old.cancel()
	}
}

// neverSent reports whether err proves the request never left the proxy:
// the connection could not even be dialled (refused, unreachable, dial
// timeout). Such a request may go to another upstream even if it writes.
func neverSent(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "dial"
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}

// forward sends payload to the selected upstream. When that fails on a
// connection error, or the selector leaves the upstream while a read is
// in flight, it tries once more on the upstream selected then (or the
// next healthy one), provided every method in it only reads or the
// request provably never left the proxy.
func (p *Proxy) forward(ctx context.Context, payload []byte, safe bool, methods ...string) (reply, *upstream, error) {
	i, ok := p.group.PickIndex()
	if !ok {
		if j := p.nextHealthy(-1); j >= 0 {
			i, ok = j, true
		}
	}
	rep, u, err := p.attempt(ctx, i, payload, safe, methods)
	if err != nil && !ok {
		err = fmt.Errorf("%w: %w", errNoHealthy, err) // nothing healthy: the selected one was tried anyway
	}
	return rep, u, err
}

func (p *Proxy) attempt(ctx context.Context, i int, payload []byte, safe bool, methods []string) (reply, *upstream, error) {
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		u := p.ups[i]
		ep := u.epoch.Load()
		rctx := ctx
		if safe {
			rctx = ep.ctx
		}
		var rep reply
		rep, err = p.post(rctx, p.transportFor(safe), u, payload)
		if err == nil {
			return rep, u, nil
		}
		left := safe && ep.ctx.Err() != nil && p.ctx.Err() == nil
		if !left && !isConnError(err) && !errors.Is(err, errUpstreamStatus) {
			return reply{}, u, err // the reply was unusable: not a reason to ask another node
		}
		if !left {
			p.reportFailure(i, err)
		}
		retry := safe || neverSent(err)
		p.log.Warn("upstream request failed", "upstream", u.Name, "err", err, "left", left, "retry", retry && attempt == 0)
		if !retry {
			return reply{}, u, err
		}
		j := p.retryTarget(i)
		if j < 0 {
			return reply{}, u, err
		}
		for _, m := range methods {
			p.m.retries.WithLabelValues(methodLabel(m)).Inc()
		}
		i = j
	}
	return reply{}, p.ups[i], err
}

// transportFor returns the transport for a request: the pooled keep-alive
// connections for reads, a fresh connection for anything that writes. A
// reused connection that fails cannot tell whether the node read the
// request before it went away; a fresh one that fails to dial proves the
// request never left, so it may go to the next upstream.
func (p *Proxy) transportFor(safe bool) *http.Transport {
	if safe {
		return p.transport
	}
	return p.writeTransport
}

// retryTarget is where a request that failed on upstream i goes next: the
// selected upstream if the selector has moved, else the next healthy one;
// -1 if there is none.
func (p *Proxy) retryTarget(i int) int {
	if j, ok := p.group.PickIndex(); ok && j != i {
		return j
	}
	return p.nextHealthy(i)
}

// nextHealthy returns the highest-priority healthy upstream other than
// skip, or -1.
func (p *Proxy) nextHealthy(skip int) int {
	for _, s := range p.group.Status() {
		if s.Index != skip && s.State == failover.Healthy && !s.Drained {
			return s.Index
		}
	}
	return -1
}

// post sends payload to u. The reply body is read to its end (so the
// keep-alive connection goes back to the transport's pool) into a pooled
// buffer, which the caller must release. No per-request timer: the
// transport's ResponseHeaderTimeout bounds the wait (RequestTimeout).
func (p *Proxy) post(ctx context.Context, tr *http.Transport, u *upstream, payload []byte) (reply, error) {
	rep := reply{body: replyPool.Get().(*bytes.Buffer)}
	var err error
	if tr == p.transport && u.h1 != nil { // a read over plain http: see h1.go
		rep.status, err = u.h1.do(ctx, payload, rep.body, DefaultMaxReplyBytes)
	} else {
		rep.status, err = roundTrip(ctx, tr, u, payload, rep.body)
	}
	if err == nil && int64(rep.body.Len()) > DefaultMaxReplyBytes {
		err = errReplyTooLarge
	}
	if err != nil {
		rep.release()
		return reply{}, err
	}
	switch rep.status {
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		rep.release()
		return reply{}, fmt.Errorf("%w: %d %s", errUpstreamStatus, rep.status, http.StatusText(rep.status))
	}
	if !looksJSON(rep.body.Bytes(), rep.status) {
		snippet := rep.body.Bytes()[:min(rep.body.Len(), 120)]
		e := &nonJSONError{status: rep.status, snippet: string(snippet)}
		rep.release()
		return reply{}, e
	}
	return rep, nil
}

// roundTrip posts payload through net/http and reads the reply into dst
// (at most DefaultMaxReplyBytes+1 bytes).
func roundTrip(ctx context.Context, tr *http.Transport, u *upstream, payload []byte, dst *bytes.Buffer) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.HTTPURL, bytes.NewReader(payload))
	if err != nil {
		return 0, err
	}
	req.Header = upstreamHeader
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if n := resp.ContentLength; n > 0 && n <= DefaultMaxReplyBytes {
		dst.Grow(int(n))
	}
	_, err = dst.ReadFrom(io.LimitReader(resp.Body, DefaultMaxReplyBytes+1))
	return resp.StatusCode, err
}

// looksJSON reports whether an upstream body may be relayed as
// application/json: a 200 must start like a JSON-RPC object or batch (the
// full check is left to the client, as a node's 200 is JSON), any other
// status must be entirely valid JSON.
func looksJSON(b []byte, status int) bool {
	b = bytes.TrimLeft(b, " \t\r\n")
	if len(b) == 0 || (b[0] != '{' && b[0] != '[') {
		return false
	}
	return status == http.StatusOK || json.Valid(b)
}
