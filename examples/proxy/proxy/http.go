package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/steadfast-go/steadfast/examples/proxy/jsonrpc"
	"github.com/steadfast-go/steadfast/failover"
)

// safeToRepeat reports whether a method only reads, so a request that
// failed on a connection error may be sent again to another upstream.
// Anything unknown is unsafe: eth_sendRawTransaction in particular must never
// be sent twice by the proxy (the first attempt may have reached the node).
func safeToRepeat(method string) bool {
	switch method {
	case "eth_blockNumber", "eth_chainId", "eth_call", "eth_estimateGas", "eth_gasPrice", "eth_feeHistory",
		"eth_maxPriorityFeePerGas", "eth_syncing", "eth_blobBaseFee", "eth_createAccessList", "eth_accounts",
		"eth_protocolVersion":
		return true
	}
	return strings.HasPrefix(method, "eth_get") || strings.HasPrefix(method, "net_") ||
		strings.HasPrefix(method, "web3_")
}

// errUpstreamStatus is returned for a 502/503/504 from an upstream (a load
// balancer in front of a dead node), which counts as a connection error.
var errUpstreamStatus = errors.New("upstream gateway error")

// readBody reads a request body into one exactly-sized allocation when the
// client announced its length (the common case), instead of io.ReadAll's
// growing copies.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	rd := http.MaxBytesReader(w, r.Body, DefaultMaxBodyBytes)
	if n := r.ContentLength; n > 0 && n <= DefaultMaxBodyBytes {
		b := make([]byte, n)
		if _, err := io.ReadFull(rd, b); err != nil {
			return nil, err
		}
		return b, nil
	}
	return io.ReadAll(rd)
}

func (p *Proxy) serveHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := readBody(w, r)
	if err != nil {
		p.writeLocal(w, nil, &jsonrpc.Error{Code: jsonrpc.CodeInvalidRequest, Message: "request body: " + err.Error()})
		return
	}
	f, perr := jsonrpc.Parse(body)
	if perr != nil {
		var je *jsonrpc.Error
		errors.As(perr, &je)
		p.writeLocal(w, nil, je)
		return
	}
	if !f.Batch && f.Errs[0] == nil {
		p.serveSingle(w, r, body, &f.Msgs[0])
		return
	}
	// Answer invalid elements here; forward the rest.
	var local [][]byte
	fwd := make([]int, 0, len(f.Msgs))
	for i := range f.Msgs {
		e := f.Errs[i]
		if e == nil {
			e = jsonrpc.Validate(&f.Msgs[i])
		}
		if e != nil {
			p.m.requestErrors.WithLabelValues(strconv.Itoa(e.Code)).Inc()
			local = append(local, jsonrpc.ErrorResponse(f.Msgs[i].ID, e))
			continue
		}
		fwd = append(fwd, i)
	}
	if len(fwd) == 0 {
		writeJSON(w, http.StatusOK, joinReplies(f.Batch, local))
		return
	}
	payload := body
	if len(local) > 0 { // rebuild the batch without the invalid elements
		parts := make([][]byte, 0, len(fwd))
		for _, i := range fwd {
			b, err := jsonrpc.Marshal(&f.Msgs[i])
			if err != nil {
				p.writeLocal(w, f.Msgs[i].ID, &jsonrpc.Error{Code: jsonrpc.CodeInternalError, Message: err.Error()})
				return
			}
			parts = append(parts, b)
		}
		payload = jsonrpc.JoinBatch(parts)
	}
	safe := true
	methods := make([]string, len(fwd))
	for k, i := range fwd {
		methods[k] = f.Msgs[i].Method
		safe = safe && safeToRepeat(f.Msgs[i].Method)
	}
	rep, u, err := p.forward(r.Context(), payload, safe, methods)
	if err != nil {
		code, msg := failure(safe, err)
		for _, i := range fwd {
			if f.Msgs[i].HasID() {
				p.m.requestErrors.WithLabelValues(strconv.Itoa(code)).Inc()
				local = append(local, jsonrpc.ErrorResponse(f.Msgs[i].ID, &jsonrpc.Error{Code: code, Message: msg}))
			}
		}
		writeJSON(w, http.StatusOK, joinReplies(f.Batch, local))
		return
	}
	defer rep.release()
	for _, m := range methods {
		p.m.request(m, u.index, transportHTTP).Inc()
	}
	if len(local) == 0 {
		writeJSON(w, rep.status, rep.body.Bytes())
		return
	}
	// Merge the upstream's batch reply with the local errors.
	rf, err := jsonrpc.Parse(rep.body.Bytes())
	if err != nil {
		writeJSON(w, rep.status, rep.body.Bytes())
		return
	}
	for i := range rf.Msgs {
		if b, err := jsonrpc.Marshal(&rf.Msgs[i]); err == nil {
			local = append(local, b)
		}
	}
	writeJSON(w, http.StatusOK, joinReplies(true, local))
}

// serveSingle is the hot path: one well-formed request (not a batch). The
// client's bytes are forwarded as they are, and the upstream's reply is
// copied back from a pooled buffer.
func (p *Proxy) serveSingle(w http.ResponseWriter, r *http.Request, body []byte, m *jsonrpc.Message) {
	if e := jsonrpc.Validate(m); e != nil {
		p.writeLocal(w, m.ID, e)
		return
	}
	safe := safeToRepeat(m.Method)
	rep, u, err := p.forward(r.Context(), body, safe, []string{m.Method})
	if err != nil {
		if !m.HasID() {
			w.WriteHeader(http.StatusNoContent) // a notification: nobody waits for an answer
			return
		}
		code, msg := failure(safe, err)
		p.writeLocal(w, m.ID, &jsonrpc.Error{Code: code, Message: msg})
		return
	}
	p.m.request(m.Method, u.index, transportHTTP).Inc()
	writeJSON(w, rep.status, rep.body.Bytes())
	rep.release()
}

// failure is the JSON-RPC error for requests forward could not deliver.
func failure(safe bool, err error) (int, string) {
	if errors.Is(err, errReplyTooLarge) {
		return jsonrpc.CodeInternalError, err.Error()
	}
	if !safe {
		return jsonrpc.CodeUpstreamLost, "upstream failed during the request, which is not retried because it may have been executed: " + err.Error()
	}
	return jsonrpc.CodeNoUpstream, "no upstream could answer: " + err.Error()
}

func joinReplies(batch bool, parts [][]byte) []byte {
	if !batch && len(parts) == 1 {
		return parts[0]
	}
	if len(parts) == 0 {
		return nil
	}
	return jsonrpc.JoinBatch(parts)
}

func writeJSON(w http.ResponseWriter, status int, b []byte) {
	if len(bytes.TrimSpace(b)) == 0 { // only notifications: nothing to answer
		w.WriteHeader(http.StatusNoContent)
		return
	}
	w.Header()["Content-Type"] = jsonContentType // shared, never modified: no per-request allocation
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

func (p *Proxy) writeLocal(w http.ResponseWriter, id []byte, e *jsonrpc.Error) {
	p.m.requestErrors.WithLabelValues(strconv.Itoa(e.Code)).Inc()
	writeJSON(w, http.StatusOK, jsonrpc.ErrorResponse(id, e))
}

var jsonContentType = []string{"application/json"}

// upstreamHeader is the header of every proxied request. It is shared by
// all requests and never modified (the transport only reads it).
var upstreamHeader = http.Header{"Content-Type": jsonContentType}

// reply is an upstream's answer in a pooled buffer; release returns it.
type reply struct {
	status int
	body   *bytes.Buffer
}

var replyPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

func (r reply) release() {
	if r.body.Cap() <= 1<<20 { // do not keep huge buffers alive
		r.body.Reset()
		replyPool.Put(r.body)
	}
}

// forward sends payload to the selected upstream and, when that fails on a
// connection error and every method in it is safe to repeat, once more to
// the next healthy upstream.
func (p *Proxy) forward(ctx context.Context, payload []byte, safe bool, methods []string) (reply, *upstream, error) {
	i, _ := p.group.PickIndex()
	u := p.ups[i]
	rep, err := p.post(ctx, u, payload)
	if err == nil {
		return rep, u, nil
	}
	if ctx.Err() != nil || (!isConnError(err) && !errors.Is(err, errUpstreamStatus)) {
		return reply{}, u, err // the client gave up, or the reply was unusable: not the upstream's fault
	}
	p.reportFailure(i, err)
	p.log.Warn("upstream request failed", "upstream", u.Name, "err", err, "retry", safe)
	if !safe {
		return reply{}, u, err
	}
	j := p.nextHealthy(i)
	if j < 0 {
		return reply{}, u, err
	}
	for _, m := range methods {
		p.m.retries.WithLabelValues(methodLabel(m)).Inc()
	}
	u = p.ups[j]
	rep, err = p.post(ctx, u, payload)
	if err != nil {
		if ctx.Err() == nil && isConnError(err) {
			p.reportFailure(j, err)
		}
		return reply{}, u, err
	}
	return rep, u, nil
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

// errReplyTooLarge: an upstream reply over DefaultMaxReplyBytes. It is
// reported as an error, never forwarded truncated.
var errReplyTooLarge = fmt.Errorf("upstream reply larger than %d bytes", DefaultMaxReplyBytes)

// post sends payload to u. The reply body is read to its end (so the
// keep-alive connection goes back to the transport's pool) into a pooled
// buffer, which the caller must release.
func (p *Proxy) post(ctx context.Context, u *upstream, payload []byte) (reply, error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.RequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.HTTPURL, bytes.NewReader(payload))
	if err != nil {
		return reply{}, err
	}
	req.Header = upstreamHeader
	resp, err := p.transport.RoundTrip(req)
	if err != nil {
		return reply{}, err
	}
	defer resp.Body.Close()
	rep := reply{status: resp.StatusCode, body: replyPool.Get().(*bytes.Buffer)}
	if n := resp.ContentLength; n > 0 && n <= DefaultMaxReplyBytes {
		rep.body.Grow(int(n))
	}
	n, err := rep.body.ReadFrom(io.LimitReader(resp.Body, DefaultMaxReplyBytes+1))
	if err == nil && n > DefaultMaxReplyBytes {
		err = errReplyTooLarge
	}
	if err != nil {
		rep.release()
		return reply{}, err
	}
	switch resp.StatusCode {
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		rep.release()
		return reply{}, fmt.Errorf("%w: %s", errUpstreamStatus, resp.Status)
	}
	return rep, nil
}
