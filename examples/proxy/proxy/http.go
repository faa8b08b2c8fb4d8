package proxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/steadfast-go/steadfast/examples/proxy/jsonrpc"
)

// safeToRepeat reports whether a method only reads, so a request that
// failed on a connection error may be sent again to another upstream, and
// identical ones may share one upstream call. Anything unknown is unsafe:
// eth_sendRawTransaction in particular must never be sent twice by the
// proxy (the first attempt may have reached the node), and
// eth_getFilterChanges consumes what it returns.
func safeToRepeat(method string) bool {
	switch method {
	case "eth_blockNumber", "eth_chainId", "eth_call", "eth_estimateGas", "eth_gasPrice", "eth_feeHistory",
		"eth_maxPriorityFeePerGas", "eth_syncing", "eth_blobBaseFee", "eth_createAccessList", "eth_accounts",
		"eth_protocolVersion", "eth_simulateV1",
		"eth_getBalance", "eth_getCode", "eth_getStorageAt", "eth_getTransactionCount", "eth_getProof",
		"eth_getBlockByNumber", "eth_getBlockByHash", "eth_getBlockReceipts", "eth_getLogs",
		"eth_getHeaderByNumber", "eth_getHeaderByHash", "eth_getTransactionByHash", "eth_getTransactionReceipt",
		"eth_getTransactionByBlockHashAndIndex", "eth_getTransactionByBlockNumberAndIndex",
		"eth_getBlockTransactionCountByHash", "eth_getBlockTransactionCountByNumber",
		"eth_getUncleByBlockHashAndIndex", "eth_getUncleByBlockNumberAndIndex",
		"eth_getUncleCountByBlockHash", "eth_getUncleCountByBlockNumber",
		"net_version", "net_listening", "net_peerCount", "web3_clientVersion", "web3_sha3":
		return true
	}
	return false
}

// Errors of one HTTP exchange with an upstream.
var (
	// errUpstreamStatus: a 502/503/504 from an upstream (a load balancer
	// in front of a dead node), which counts as a connection error.
	errUpstreamStatus = errors.New("upstream gateway error")
	// errReplyTooLarge: a reply over DefaultMaxReplyBytes, never
	// forwarded truncated.
	errReplyTooLarge = fmt.Errorf("upstream reply larger than %d bytes", DefaultMaxReplyBytes)
	// errBadReply: the upstream answered, but not with JSON-RPC.
	errBadReply = errors.New("upstream reply is not JSON-RPC")
	// errNoHealthy: no upstream is healthy right now.
	errNoHealthy = errors.New("no healthy upstream")
)

// nonJSONError is an upstream answer that is not JSON (an HTML 413 from a
// reverse proxy, say): reported with its status, never relayed as JSON.
type nonJSONError struct {
	status  int
	snippet string
}

func (e *nonJSONError) Error() string {
	return fmt.Sprintf("upstream answered HTTP %d with a non-JSON body: %q", e.status, e.snippet)
}

// httpFailure is what the client gets for a request the proxy could not
// deliver: an HTTP status for load balancers and a JSON-RPC error.
type httpFailure struct {
	status int
	code   int
	msg    string
}

// failure classifies an error from forward.
func failure(safe bool, err error) httpFailure {
	var nj *nonJSONError
	switch {
	case errors.As(err, &nj):
		st := http.StatusBadGateway
		if nj.status == http.StatusRequestEntityTooLarge || nj.status == http.StatusTooManyRequests {
			st = nj.status // the client's request is too large, or too frequent, for the node
		}
		return httpFailure{st, jsonrpc.CodeInternalError, err.Error()}
	case errors.Is(err, errReplyTooLarge), errors.Is(err, errBadReply):
		return httpFailure{http.StatusBadGateway, jsonrpc.CodeInternalError, err.Error()}
	case !safe && !neverSent(err):
		st := http.StatusBadGateway
		if isTimeout(err) {
			st = http.StatusGatewayTimeout
		}
		return httpFailure{st, jsonrpc.CodeUpstreamLost,
			"upstream failed during the request, which is not retried because it may have been executed: " + err.Error()}
	case errors.Is(err, errNoHealthy):
		return httpFailure{http.StatusServiceUnavailable, jsonrpc.CodeNoUpstream, "no upstream could answer: " + err.Error()}
	case isTimeout(err):
		return httpFailure{http.StatusGatewayTimeout, jsonrpc.CodeTimeout, "no upstream answered in time: " + err.Error()}
	}
	return httpFailure{http.StatusBadGateway, jsonrpc.CodeNoUpstream, "no upstream could answer: " + err.Error()}
}

// readBody reads a request body into one exactly-sized allocation when the
// client announced its length (the common case), instead of io.ReadAll's
// growing copies.
func (p *Proxy) readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	limit := p.cfg.MaxBodyBytes
	if r.ContentLength > limit {
		return nil, &http.MaxBytesError{Limit: limit}
	}
	rd := http.MaxBytesReader(w, r.Body, limit)
	if n := r.ContentLength; n > 0 {
		b := make([]byte, n)
		if _, err := io.ReadFull(rd, b); err != nil {
			return nil, err
		}
		return b, nil
	}
	return io.ReadAll(rd)
}

// gate applies authentication, the body limit and the rate limit. It
// writes the refusal itself and returns false when the request must stop.
func (p *Proxy) gate(w http.ResponseWriter, r *http.Request) ([]byte, string, bool) {
	client, ok := p.authorize(r)
	if !ok {
		p.m.denied.WithLabelValues(denyAuth).Inc()
		w.Header().Set("WWW-Authenticate", `Bearer realm="steadfast-proxy"`)
		p.writeLocal(w, http.StatusUnauthorized, nil, &jsonrpc.Error{Code: jsonrpc.CodeUnauthorized,
			Message: "missing or unknown bearer token (Authorization: Bearer TOKEN)"})
		return nil, "", false
	}
	body, err := p.readBody(w, r)
	if err != nil {
		var mb *http.MaxBytesError
		if errors.As(err, &mb) {
			p.m.denied.WithLabelValues(denyTooLarge).Inc()
			p.writeLocal(w, http.StatusRequestEntityTooLarge, nil, &jsonrpc.Error{Code: jsonrpc.CodeInvalidRequest,
				Message: "request body over " + strconv.FormatInt(p.cfg.MaxBodyBytes, 10) + " bytes"})
			return nil, "", false
		}
		if isTimeout(err) {
			// The server's read timeout ran out mid-body: 408, as net/http
			// and load balancers answer a client too slow to send.
			p.writeLocal(w, http.StatusRequestTimeout, nil, &jsonrpc.Error{Code: jsonrpc.CodeInvalidRequest, Message: "request body: not received in time"})
			return nil, "", false
		}
		p.writeLocal(w, http.StatusBadRequest, nil, &jsonrpc.Error{Code: jsonrpc.CodeInvalidRequest, Message: "request body: " + err.Error()})
		return nil, "", false
	}
	return body, client, true
}

func (p *Proxy) rateLimited(w http.ResponseWriter, client string, n int, id []byte) bool {
	if p.limit.take(client, n, time.Now()) {
		return false
	}
	p.m.denied.WithLabelValues(denyRateLimit).Inc()
	w.Header().Set("Retry-After", "1")
	p.writeLocal(w, http.StatusTooManyRequests, id, &jsonrpc.Error{Code: jsonrpc.CodeLimitExceeded, Message: "rate limit exceeded"})
	return true
}

func (p *Proxy) serveHTTP(w http.ResponseWriter, r *http.Request) {
	body, client, ok := p.gate(w, r)
	if !ok {
		return
	}
	if m, ok := jsonrpc.ScanRequest(body); ok { // the common shape: no full decode
		if !p.rateLimited(w, client, 1, m.ID) {
			p.serveSingle(w, body, &m)
		}
		return
	}
	f, perr := jsonrpc.Parse(body)
	if perr != nil {
		var je *jsonrpc.Error
		errors.As(perr, &je)
		p.writeLocal(w, http.StatusOK, nil, je)
		return
	}
	if !f.Batch {
		if p.rateLimited(w, client, 1, f.Msgs[0].ID) {
			return
		}
		if f.Errs[0] == nil {
			p.serveSingle(w, body, &f.Msgs[0])
			return
		}
	}
	if len(f.Msgs) > p.cfg.MaxBatch {
		p.m.denied.WithLabelValues(denyTooLarge).Inc()
		p.writeLocal(w, http.StatusRequestEntityTooLarge, nil, &jsonrpc.Error{Code: jsonrpc.CodeLimitExceeded,
			Message: "batch of " + strconv.Itoa(len(f.Msgs)) + " requests is over the limit of " + strconv.Itoa(p.cfg.MaxBatch)})
		return
	}
	if f.Batch && p.rateLimited(w, client, len(f.Msgs), nil) {
		return
	}
	p.serveBatch(w, body, &f)
}

// serveBatch answers invalid or refused elements itself and forwards the
// rest as one batch.
func (p *Proxy) serveBatch(w http.ResponseWriter, body []byte, f *jsonrpc.Frame) {
	var local [][]byte
	fwd := make([]int, 0, len(f.Msgs))
	for i := range f.Msgs {
		e := f.Errs[i]
		if e == nil {
			e = jsonrpc.Validate(&f.Msgs[i])
		}
		if e == nil {
			e = p.admit(&f.Msgs[i])
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
	if len(local) > 0 { // rebuild the batch without the refused elements
		parts := make([][]byte, 0, len(fwd))
		for _, i := range fwd {
			b, err := jsonrpc.Marshal(&f.Msgs[i])
			if err != nil {
				p.writeLocal(w, http.StatusOK, f.Msgs[i].ID, &jsonrpc.Error{Code: jsonrpc.CodeInternalError, Message: err.Error()})
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
	start := time.Now()
	rep, u, err := p.forward(context.Background(), payload, safe, methods...)
	if err != nil {
		fl := failure(safe, err)
		for _, i := range fwd {
			if f.Msgs[i].HasID() {
				p.m.requestErrors.WithLabelValues(strconv.Itoa(fl.code)).Inc()
				local = append(local, jsonrpc.ErrorResponse(f.Msgs[i].ID, &jsonrpc.Error{Code: fl.code, Message: fl.msg}))
			}
		}
		writeJSON(w, fl.status, joinReplies(f.Batch, local))
		return
	}
	defer rep.release()
	for _, m := range methods {
		p.m.request(m, u.index, transportHTTP).Inc()
		p.m.observe(m, u.index, start)
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

// serveSingle is the hot path: one well-formed request (not a batch).
// Reads go through the cache and shared calls; anything else is forwarded
// as the client's bytes, and the upstream's reply copied back from a
// pooled buffer.
func (p *Proxy) serveSingle(w http.ResponseWriter, body []byte, m *jsonrpc.Message) {
	e := jsonrpc.Validate(m)
	if e == nil {
		e = p.admit(m)
	}
	if e != nil {
		p.writeLocal(w, http.StatusOK, m.ID, e)
		return
	}
	safe := safeToRepeat(m.Method)
	start := time.Now()
	if safe && m.HasID() && p.flight != nil {
		out, status, u, err := p.serveShared(m)
		if err != nil {
			fl := failure(true, err)
			p.writeLocal(w, fl.status, m.ID, &jsonrpc.Error{Code: fl.code, Message: fl.msg})
			return
		}
		if u != nil { // nil: answered from the cache
			p.m.request(m.Method, u.index, transportHTTP).Inc()
			p.m.observe(m.Method, u.index, start)
		}
		writeJSON(w, status, out)
		return
	}
	rep, u, err := p.forward(context.Background(), body, safe, m.Method)
	if err != nil {
		if !m.HasID() {
			w.WriteHeader(http.StatusNoContent) // a notification: nobody waits for an answer
			return
		}
		fl := failure(safe, err)
		p.writeLocal(w, fl.status, m.ID, &jsonrpc.Error{Code: fl.code, Message: fl.msg})
		return
	}
	p.m.request(m.Method, u.index, transportHTTP).Inc()
	p.m.observe(m.Method, u.index, start)
	writeJSON(w, rep.status, rep.body.Bytes())
	rep.release()
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

func (p *Proxy) writeLocal(w http.ResponseWriter, status int, id []byte, e *jsonrpc.Error) {
	p.m.requestErrors.WithLabelValues(strconv.Itoa(e.Code)).Inc()
	writeJSON(w, status, jsonrpc.ErrorResponse(id, e))
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
