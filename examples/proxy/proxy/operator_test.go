package proxy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/steadfast-go/steadfast/examples/proxy/jsonrpc"
	"github.com/steadfast-go/steadfast/examples/proxy/proxy"
)

// postH posts body with extra headers and returns status, body and the
// reply's Content-Type.
func (c *cluster) postH(t testing.TB, body string, hdr map[string]string) (int, []byte, http.Header) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, "http://"+c.addr, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b, resp.Header
}

// rpcError decodes a single JSON-RPC error reply, failing the test if the
// body is not one.
func rpcError(t testing.TB, body []byte) (json.RawMessage, *jsonrpc.Error) {
	t.Helper()
	var m jsonrpc.Message
	if err := json.Unmarshal(body, &m); err != nil || m.Error == nil {
		t.Fatalf("want a JSON-RPC error, got %q (%v)", body, err)
	}
	return m.ID, m.Error
}

// TestIncident_SendRawTransactionAfterRefusedDialGoesToTheBackup (defect
// 1): with the primary dead and its death not yet noticed by the health
// checks, eth_sendRawTransaction is refused at dial time, so it provably
// never left the proxy and is sent to the backup; one that may have
// reached a hung primary is never repeated, and is answered with -32012
// and HTTP 504.
func TestIncident_SendRawTransactionAfterRefusedDialGoesToTheBackup(t *testing.T) {
	c := newCluster(t, []string{"primary", "backup"}, blockTime, func(cfg *proxy.Config) {
		cfg.CheckInterval, cfg.CheckTimeout = 5*time.Second, time.Second
		cfg.Rise, cfg.Fall = 1, 1
		cfg.RequestTimeout = 500 * time.Millisecond
	})
	primary, backup := c.nodes[0], c.nodes[1]
	c.waitCurrent(t, "primary", 5*time.Second)
	eventually(t, 5*time.Second, "backup healthy", func() bool {
		return c.metrics(t)[`steadfast_proxy_upstream_healthy{upstream="backup"}`] == 1
	})
	for i := range 3 {
		c.post(t, `{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"}`) // warm the keep-alive pool
		primary.Kill()
		status, body := c.post(t, `{"jsonrpc":"2.0","id":"tx","method":"eth_sendRawTransaction","params":["0x02f8"]}`)
		if status != 200 || !jsonHas(body, `"id":"tx"`, `"result":"0x`) {
			t.Fatalf("round %d: %d %s, want the backup's answer", i, status, body)
		}
		if n := backup.Requests("eth_sendRawTransaction"); n != int64(i+1) {
			t.Fatalf("round %d: backup got %d transactions, want %d", i, n, i+1)
		}
		if err := primary.Restart(); err != nil {
			t.Fatal(err)
		}
		c.waitCurrent(t, "primary", 15*time.Second)
	}

	primary.Hang()
	t.Cleanup(primary.Resume)
	status, body := c.post(t, `{"jsonrpc":"2.0","id":9,"method":"eth_sendRawTransaction","params":["0x02f9"]}`)
	if _, e := rpcError(t, body); status != http.StatusGatewayTimeout || e.Code != jsonrpc.CodeUpstreamLost {
		t.Fatalf("transaction on a hung primary: %d %s, want 504 and -32012", status, body)
	}
	if n := backup.Requests("eth_sendRawTransaction"); n != 3 {
		t.Fatalf("a transaction that may have been executed was repeated on the backup (%d)", n)
	}
}

// TestIncident_TwoUpstreamsResolveToTheOneAhead (defect 2): with only two
// upstreams, a primary 50 blocks behind its backup is left for the backup,
// and the lag metric says how far behind the highest head it is.
func TestIncident_TwoUpstreamsResolveToTheOneAhead(t *testing.T) {
	c := newCluster(t, []string{"primary", "backup"}, blockTime, func(cfg *proxy.Config) { cfg.MaxLag = 10 })
	primary := c.nodes[0]
	c.waitCurrent(t, "primary", 5*time.Second)
	primary.SetLag(50)
	c.waitCurrent(t, "backup", 5*time.Second)
	eventually(t, 5*time.Second, "lag metrics", func() bool {
		m := c.metrics(t)
		return m[`steadfast_proxy_upstream_lag_blocks{upstream="primary"}`] == 50 &&
			m[`steadfast_proxy_upstream_lag_blocks{upstream="backup"}`] == 0 &&
			m[`steadfast_proxy_upstream_healthy{upstream="primary"}`] == 0
	})
	primary.SetLag(0)
	c.waitCurrent(t, "primary", 5*time.Second)
}

// TestIncident_ReadsInFlightOnALeftUpstreamMove (defect 3): reads stuck on
// a hung primary are retried on the backup as soon as the health checks
// move the selection, long before the 10 s request timeout.
func TestIncident_ReadsInFlightOnALeftUpstreamMove(t *testing.T) {
	c := newCluster(t, []string{"primary", "backup"}, blockTime, nil) // RequestTimeout: the 10 s default
	primary := c.nodes[0]
	c.waitCurrent(t, "primary", 5*time.Second)
	primary.Hang()
	t.Cleanup(primary.Resume)
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan string, 4)
	for i := range 4 {
		wg.Go(func() {
			// Different blocks: four separate upstream calls, not one shared.
			body := `{"jsonrpc":"2.0","id":1,"method":"eth_getBlockByNumber","params":["0x` + string(rune('1'+i)) + `",false]}`
			status, b := c.post(t, body)
			if status != 200 || !strings.Contains(string(b), `"hash":"0x`) {
				errs <- string(b)
			}
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Errorf("read after the primary hung: %s", e)
	}
	if d := time.Since(start); d > 4*time.Second {
		t.Fatalf("reads took %v: they waited for the request timeout instead of following the selector", d)
	}
	if r := sum(c.metrics(t), "steadfast_proxy_http_retries_total"); r < 4 {
		t.Fatalf("retries %v, want the 4 stuck reads retried", r)
	}
}

// htmlGateway is an upstream behind a reverse proxy that answers health
// checks but refuses anything else with a non-JSON HTTP status.
func htmlGateway(t *testing.T, status int) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		if bytes.Contains(b, []byte("eth_blockNumber")) || bytes.Contains(b, []byte("eth_chainId")) {
			w.Header().Set("Content-Type", "application/json")
			_, _ = io.WriteString(w, `{"jsonrpc":"2.0","id":1,"result":"0x10"}`)
			return
		}
		w.Header().Set("Content-Type", "text/html")
		w.WriteHeader(status)
		_, _ = io.WriteString(w, "<html><body>nope</body></html>")
	})}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close(); <-done })
	return "http://" + ln.Addr().String()
}

// TestIncident_HTTPStatusCodes (defect 4): transport-level failures get the
// status codes load balancers expect, always with a JSON-RPC body labelled
// application/json, and a non-JSON upstream body is never relayed.
func TestIncident_HTTPStatusCodes(t *testing.T) {
	c := newCluster(t, []string{"node"}, blockTime, func(cfg *proxy.Config) {
		cfg.MaxBatch = 3
		cfg.RequestTimeout = 300 * time.Millisecond
		// Slow checks: the failed requests themselves demote the node.
		cfg.CheckInterval, cfg.CheckTimeout = 5*time.Second, time.Second
		cfg.Rise, cfg.Fall = 1, 1
	})
	c.waitCurrent(t, "node", 5*time.Second)
	check := func(what string, status int, body []byte, h http.Header, wantStatus, wantCode int) {
		t.Helper()
		_, e := rpcError(t, body)
		if status != wantStatus || e.Code != wantCode || h.Get("Content-Type") != "application/json" {
			t.Errorf("%s: %d %s (%s), want %d and %d", what, status, body, h.Get("Content-Type"), wantStatus, wantCode)
		}
	}
	big := `{"jsonrpc":"2.0","id":1,"method":"eth_call","params":["` + strings.Repeat("a", 20<<20) + `"]}`
	status, body, h := c.postH(t, big, nil)
	check("20 MB body", status, body, h, http.StatusRequestEntityTooLarge, jsonrpc.CodeInvalidRequest)
	status, _, _ = c.postH(t, strings.Repeat(`{"jsonrpc":"2.0","id":1,"method":"eth_chainId"},`, 4), nil)
	if status != 200 { // not a batch: a parse error stays a JSON-RPC matter
		t.Errorf("parse error: status %d", status)
	}
	batch := "[" + strings.TrimSuffix(strings.Repeat(`{"jsonrpc":"2.0","id":1,"method":"eth_chainId"},`, 4), ",") + "]"
	status, body, h = c.postH(t, batch, nil)
	check("batch over -max-batch", status, body, h, http.StatusRequestEntityTooLarge, jsonrpc.CodeLimitExceeded)

	c.nodes[0].Hang()
	status, body, h = c.postH(t, `{"jsonrpc":"2.0","id":2,"method":"eth_chainId"}`, nil)
	check("hung upstream", status, body, h, http.StatusGatewayTimeout, jsonrpc.CodeTimeout)
	c.nodes[0].Resume()
	c.nodes[0].Kill()
	c.postH(t, `{"jsonrpc":"2.0","id":3,"method":"eth_chainId"}`, nil) // refused: the node is demoted at once
	eventually(t, 5*time.Second, "node unhealthy", func() bool { _, ok := c.p.Current(); return !ok })
	status, body, h = c.postH(t, `{"jsonrpc":"2.0","id":3,"method":"eth_chainId"}`, nil)
	check("no healthy upstream", status, body, h, http.StatusServiceUnavailable, jsonrpc.CodeNoUpstream)

	for _, up := range []int{http.StatusRequestEntityTooLarge, http.StatusTooManyRequests, http.StatusForbidden} {
		g := newCluster(t, nil, blockTime, func(cfg *proxy.Config) {
			cfg.Upstreams = []proxy.Upstream{{Name: "gw", HTTPURL: htmlGateway(t, up)}}
		})
		g.waitCurrent(t, "gw", 5*time.Second)
		status, body, h = g.postH(t, `{"jsonrpc":"2.0","id":"q","method":"eth_call","params":[{},"latest"]}`, nil)
		want := up
		if up == http.StatusForbidden {
			want = http.StatusBadGateway
		}
		check("upstream HTML "+http.StatusText(up), status, body, h, want, jsonrpc.CodeInternalError)
		if id, _ := rpcError(t, body); string(id) != `"q"` {
			t.Errorf("error id %s, want \"q\"", id)
		}
	}
}

// TestIncident_AllowListRateLimitAndAuth (defect 5): methods outside the
// allow list never reach the node and get a clear error and a metric; a
// client over its rate limit gets 429 (HTTP) or -32005 (WebSocket); with
// tokens configured, a request needs one.
func TestIncident_AllowListRateLimitAndAuth(t *testing.T) {
	c := newCluster(t, []string{"node"}, blockTime, func(cfg *proxy.Config) {
		cfg.AuthTokens = []string{"alpha", "beta"}
		cfg.RateLimit, cfg.RateBurst = 1, 20
	})
	node := c.nodes[0]
	c.waitCurrent(t, "node", 5*time.Second)
	auth := map[string]string{"Authorization": "Bearer beta"}

	for _, hdr := range []map[string]string{nil, {"Authorization": "Bearer gamma"}, {"Authorization": "beta"}} {
		status, body, h := c.postH(t, `{"jsonrpc":"2.0","id":1,"method":"eth_chainId"}`, hdr)
		if _, e := rpcError(t, body); status != http.StatusUnauthorized || e.Code != jsonrpc.CodeUnauthorized || h.Get("WWW-Authenticate") == "" {
			t.Errorf("auth %v: %d %s", hdr, status, body)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if conn, resp, err := websocket.Dial(ctx, "ws://"+c.addr, nil); err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		if conn != nil {
			_ = conn.CloseNow()
		}
		t.Fatalf("WebSocket upgrade without a token: %v %v", resp, err)
	}
	conn, _, err := websocket.Dial(ctx, "ws://"+c.addr, &websocket.DialOptions{HTTPHeader: http.Header{"Authorization": {"Bearer alpha"}}})
	if err != nil {
		t.Fatalf("WebSocket upgrade with a token: %v", err)
	}
	_ = conn.Close(websocket.StatusNormalClosure, "")
	status, body, _ := c.postH(t, `{"jsonrpc":"2.0","id":1,"method":"eth_chainId"}`, auth)
	if status != 200 || !strings.Contains(string(body), `"result":"0x539"`) {
		t.Fatalf("authorised request: %d %s", status, body)
	}

	for _, method := range []string{"admin_nodeInfo", "debug_traceTransaction", "personal_unlockAccount", "miner_start", "eth_sendTransaction"} {
		status, body, _ := c.postH(t, `{"jsonrpc":"2.0","id":5,"method":"`+method+`","params":[]}`, auth)
		if _, e := rpcError(t, body); status != 200 || e.Code != jsonrpc.CodeMethodNotFound || !strings.Contains(e.Message, "not allowed") {
			t.Errorf("%s: %d %s", method, status, body)
		}
		if n := node.Requests(method); n != 0 {
			t.Errorf("%s reached the node", method)
		}
	}
	_, body, _ = c.postH(t, `[{"jsonrpc":"2.0","id":1,"method":"admin_peers"},{"jsonrpc":"2.0","id":2,"method":"eth_chainId"}]`, auth)
	if !jsonHas(body, `"code":-32601`, `"result":"0x539"`) {
		t.Errorf("batch with a denied element: %s", body)
	}
	m := c.metrics(t)
	if m[`steadfast_proxy_denied_requests_total{reason="method"}`] != 6 || m[`steadfast_proxy_denied_requests_total{reason="auth"}`] < 3 {
		t.Errorf("denied metrics: method %v auth %v", m[`steadfast_proxy_denied_requests_total{reason="method"}`], m[`steadfast_proxy_denied_requests_total{reason="auth"}`])
	}

	limited := 0
	for range 30 {
		status, body, h := c.postH(t, `{"jsonrpc":"2.0","id":7,"method":"eth_chainId"}`, auth)
		if status == http.StatusTooManyRequests {
			if _, e := rpcError(t, body); e.Code != jsonrpc.CodeLimitExceeded || h.Get("Retry-After") == "" {
				t.Errorf("rate limited: %s", body)
			}
			limited++
		}
	}
	if limited < 5 {
		t.Fatalf("%d of 30 requests over a burst of 20 were limited", limited)
	}
	// Another token is another client, with a bucket of its own.
	if status, _, _ := c.postH(t, `{"jsonrpc":"2.0","id":8,"method":"eth_chainId"}`, map[string]string{"Authorization": "Bearer alpha"}); status != 200 {
		t.Fatalf("other client limited too: %d", status)
	}
}

// TestIncident_WebSocketAllowListAndRateLimit: the same policy on a
// WebSocket connection: denied methods and requests over the rate limit
// are answered with errors, on a connection that stays usable.
func TestIncident_WebSocketAllowListAndRateLimit(t *testing.T) {
	c := newCluster(t, []string{"node"}, blockTime, func(cfg *proxy.Config) {
		cfg.RateLimit, cfg.RateBurst = 0.5, 6
	})
	c.waitCurrent(t, "node", 5*time.Second)
	w := dialClient(t, c, "client")
	if m := w.result(w.send("admin_nodeInfo"), 5*time.Second); m.Error == nil || m.Error.Code != jsonrpc.CodeMethodNotFound {
		t.Fatalf("admin_nodeInfo over WebSocket: %+v", m)
	}
	if c.nodes[0].Requests("admin_nodeInfo") != 0 {
		t.Fatal("denied method reached the node")
	}
	var ids []string
	for range 10 {
		ids = append(ids, w.send("eth_chainId"))
	}
	limited := 0
	for _, id := range ids {
		if m := w.result(id, 5*time.Second); m.Error != nil && m.Error.Code == jsonrpc.CodeLimitExceeded {
			limited++
		}
	}
	if limited < 4 {
		t.Fatalf("%d of 10 requests over a burst of 5 limited", limited)
	}
	w.check()
}

// TestIncident_OperatorLimits (item 6): JSON-RPC 1.0 is refused, the
// eth_getLogs range is bounded, latency histograms exist per method and
// upstream, and an HTTP-only upstream serves HTTP while WebSocket clients
// go to one that has a WebSocket URL.
func TestIncident_OperatorLimits(t *testing.T) {
	c := newCluster(t, []string{"httponly", "full"}, blockTime, func(cfg *proxy.Config) {
		cfg.Upstreams[0].WSURL = ""
		cfg.MaxLogsRange = 100
	})
	httpOnly, full := c.nodes[0], c.nodes[1]
	c.waitCurrent(t, "httponly", 5*time.Second)
	before := httpOnly.Requests("eth_chainId")
	status, body := c.post(t, `{"jsonrpc":"1.0","id":1,"method":"eth_chainId"}`)
	if _, e := rpcError(t, body); status != 200 || e.Code != jsonrpc.CodeInvalidRequest || httpOnly.Requests("eth_chainId") != before {
		t.Fatalf("JSON-RPC 1.0: %d %s", status, body)
	}
	_, body = c.post(t, `{"jsonrpc":"2.0","id":2,"method":"eth_getLogs","params":[{"fromBlock":"0x0","toBlock":"0x1000"}]}`)
	if _, e := rpcError(t, body); e.Code != jsonrpc.CodeLimitExceeded || httpOnly.Requests("eth_getLogs") != 0 {
		t.Fatalf("wide eth_getLogs: %s", body)
	}
	_, body = c.post(t, `{"jsonrpc":"2.0","id":3,"method":"eth_getLogs","params":[{"fromBlock":"0x0","toBlock":"0x10"}]}`)
	if httpOnly.Requests("eth_getLogs") != 1 {
		t.Fatalf("narrow eth_getLogs not forwarded: %s", body)
	}
	c.post(t, `{"jsonrpc":"2.0","id":4,"method":"eth_chainId"}`)
	if n := c.metrics(t)[`steadfast_proxy_request_duration_seconds_count{method="eth_chainId",upstream="httponly"}`]; n < 1 {
		t.Fatalf("latency histogram count %v", n)
	}
	w := dialClient(t, c, "client")
	w.subscribe("newHeads")
	w.waitMoreHeads(2, 5*time.Second)
	if full.Subscriptions() != 1 {
		t.Fatalf("WebSocket session not on the upstream with a WebSocket URL (%d subscriptions)", full.Subscriptions())
	}
	w.check()
}
