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

func (p *Proxy) serveHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, DefaultMaxBodyBytes))
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
	for _, i := range fwd {
		safe = safe && safeToRepeat(f.Msgs[i].Method)
	}
	status, reply, u, err := p.forward(r.Context(), payload, safe, f, fwd)
	if err != nil {
		code, msg := jsonrpc.CodeNoUpstream, "no upstream could answer: "+err.Error()
		if !safe {
			code, msg = jsonrpc.CodeUpstreamLost, "upstream failed during the request, which is not retried because it may have been executed: "+err.Error()
		}
		for _, i := range fwd {
			if f.Msgs[i].HasID() {
				p.m.requestErrors.WithLabelValues(strconv.Itoa(code)).Inc()
				local = append(local, jsonrpc.ErrorResponse(f.Msgs[i].ID, &jsonrpc.Error{Code: code, Message: msg}))
			}
		}
		writeJSON(w, http.StatusOK, joinReplies(f.Batch, local))
		return
	}
	for _, i := range fwd {
		p.m.requests.WithLabelValues(methodLabel(f.Msgs[i].Method), u.Name, "http").Inc()
	}
	if len(local) == 0 {
		writeJSON(w, status, reply)
		return
	}
	// Merge the upstream's batch reply with the local errors.
	rf, err := jsonrpc.Parse(reply)
	if err != nil {
		writeJSON(w, status, reply)
		return
	}
	for i := range rf.Msgs {
		if b, err := jsonrpc.Marshal(&rf.Msgs[i]); err == nil {
			local = append(local, b)
		}
	}
	writeJSON(w, http.StatusOK, joinReplies(true, local))
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
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

func (p *Proxy) writeLocal(w http.ResponseWriter, id []byte, e *jsonrpc.Error) {
	p.m.requestErrors.WithLabelValues(strconv.Itoa(e.Code)).Inc()
	writeJSON(w, http.StatusOK, jsonrpc.ErrorResponse(id, e))
}

// forward sends payload to the selected upstream and, when that fails on a
// connection error and every method in it is safe to repeat, once more to
// the next healthy upstream.
func (p *Proxy) forward(ctx context.Context, payload []byte, safe bool, f jsonrpc.Frame, fwd []int) (int, []byte, *upstream, error) {
	i, _ := p.group.PickIndex()
	u := p.ups[i]
	status, reply, err := p.post(ctx, u, payload)
	if err == nil {
		return status, reply, u, nil
	}
	if ctx.Err() != nil || (!isConnError(err) && !errors.Is(err, errUpstreamStatus)) {
		return 0, nil, u, err // the client gave up: not the upstream's fault
	}
	_ = p.group.ReportFailure(i, err)
	p.log.Warn("upstream request failed", "upstream", u.Name, "err", err, "retry", safe)
	if !safe {
		return 0, nil, u, err
	}
	j := p.nextHealthy(i)
	if j < 0 {
		return 0, nil, u, err
	}
	for _, k := range fwd {
		p.m.retries.WithLabelValues(methodLabel(f.Msgs[k].Method)).Inc()
	}
	u = p.ups[j]
	status, reply, err = p.post(ctx, u, payload)
	if err != nil {
		if ctx.Err() == nil && isConnError(err) {
			_ = p.group.ReportFailure(j, err)
		}
		return 0, nil, u, err
	}
	return status, reply, u, nil
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

func (p *Proxy) post(ctx context.Context, u *upstream, payload []byte) (int, []byte, error) {
	ctx, cancel := context.WithTimeout(ctx, p.cfg.RequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.HTTPURL, bytes.NewReader(payload))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := p.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, DefaultMaxBodyBytes))
	if err != nil {
		return 0, nil, err
	}
	switch resp.StatusCode {
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return 0, nil, fmt.Errorf("%w: %s", errUpstreamStatus, resp.Status)
	}
	return resp.StatusCode, b, nil
}
