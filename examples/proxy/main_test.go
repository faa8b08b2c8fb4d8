package main

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/steadfast-go/steadfast/examples/proxy/fakenode"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// syncBuffer is a bytes.Buffer safe for the program and the test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestDemo runs the quick-start command (with a faster chain) and checks
// that it reports an unnoticed failover and failback, and exits by itself.
func TestDemo(t *testing.T) {
	var out, errOut syncBuffer
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	if err := run(ctx, []string{"-demo", "-demo-block-time", "200ms"}, &out, &errOut); err != nil {
		t.Fatalf("demo failed: %v\nstdout:\n%s\nstderr:\n%s", err, out.String(), errOut.String())
	}
	s := out.String()
	for _, want := range []string{
		"primary killed", "proxy switched primary -> backup", "primary restarted",
		"proxy switched backup -> primary (better_available)", "(unchanged: true)",
		"notifications lost: 0, duplicated: 0",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("demo output lacks %q:\n%s", want, s)
		}
	}
}

func TestFlagErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.json")
	if err := os.WriteFile(bad, []byte(`{"upstreams":[{"name":"a"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	envcfg := filepath.Join(dir, "env.json")
	if err := os.WriteFile(envcfg, []byte(`{"upstreams":[{"name":"a","http":"http://x"}],"auth_tokens":["${UNSET_STEADFAST_TOKEN}"]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	unknown := filepath.Join(dir, "unknown.json")
	if err := os.WriteFile(unknown, []byte(`{"upstream":[]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "no upstreams"},
		{[]string{"-upstream", "nourls"}, "NAME=HTTP_URL[,WS_URL]"},
		{[]string{"-upstream", "a=http://x,"}, "NAME=HTTP_URL[,WS_URL]"},
		{[]string{"-upstream", "a=http://x", "-max-body-bytes", "0"}, "-max-body-bytes"},
		{[]string{"-upstream", "a=http://x", "-max-batch", "-1"}, "-max-batch"},
		{[]string{"-upstream", "a=http://x", "-client-buffer-bytes", "0"}, "-client-buffer-bytes"},
		{[]string{"-upstream", "a=http://x", "-max-logs-range", "0"}, "-max-logs-range"},
		{[]string{"-upstream", "a=http://x", "-rate-limit", "-1"}, "-rate-limit"},
		{[]string{"-upstream", "a=http://x", "-reuse-latest", "-1s"}, "-reuse-latest"},
		{[]string{"-upstream", "a=http://x", "-read-timeout", "0"}, "-read-timeout"},
		{[]string{"-upstream", "a=http://x", "-auth-token-file", filepath.Join(dir, "none")}, "-auth-token-file"},
		{[]string{"-config", envcfg}, "UNSET_STEADFAST_TOKEN"},
		{[]string{"-upstream", "a=http://x,ws://x", "-check-timeout", "2s", "-check-interval", "1s"}, "must not exceed"},
		{[]string{"-upstream", "a=http://x,ws://x", "-max-lag", "0"}, "-max-lag"},
		{[]string{"-upstream", "a=http://x,ws://x", "-log-level", "loud"}, "-log-level"},
		{[]string{"-upstream", "a=http://x,ws://x", "extra"}, "unexpected argument"},
		{[]string{"-config", filepath.Join(dir, "missing.json")}, "-config"},
		{[]string{"-config", bad}, "needs name and http"},
		{[]string{"-config", unknown}, "unknown field"},
		{[]string{"-demo", "-upstream", "a=http://x,ws://x"}, "-demo starts its own"},
		{[]string{"-check-interval", "soon"}, "invalid value"},
	} {
		var stderr bytes.Buffer
		_, err := parseArgs(tc.args, &stderr)
		if err == nil || !strings.Contains(err.Error()+stderr.String(), tc.want) {
			t.Errorf("parseArgs(%q) = %v (stderr %q), want an error mentioning %q", tc.args, err, stderr.String(), tc.want)
		}
	}
}

func TestConfigFileAndFlagPrecedence(t *testing.T) {
	path := filepath.Join(t.TempDir(), "proxy.json")
	cfg := `{"listen":"127.0.0.1:9999","upstreams":[{"name":"p","http":"http://a:1","ws":"ws://a:2"},{"name":"b","http":"http://b:1","ws":"ws://b:2"}],
	"check_interval":"250ms","check_timeout":"200ms","max_lag":5,"switch_timeout":"3s","queue_size":50,"read_timeout":"7s"}`
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	o, err := parseArgs([]string{"-config", path, "-max-lag", "7"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if o.listen != "127.0.0.1:9999" || len(o.cfg.Upstreams) != 2 || o.cfg.Upstreams[1].WSURL != "ws://b:2" ||
		o.cfg.CheckInterval != 250*time.Millisecond || o.cfg.MaxLag != 7 || o.cfg.QueueSize != 50 ||
		o.cfg.SwitchTimeout != 3*time.Second || o.readTimeout != 7*time.Second {
		t.Fatalf("parsed %+v", o)
	}
	o, err = parseArgs([]string{"-config", path, "-read-timeout", "2s"}, &bytes.Buffer{})
	if err != nil || o.readTimeout != 2*time.Second {
		t.Fatalf("-read-timeout over the file: %v, %v", o.readTimeout, err)
	}
	o, err = parseArgs([]string{"-upstream", "a=http://x"}, &bytes.Buffer{})
	if err != nil || o.readTimeout != defaultReadTimeout {
		t.Fatalf("default read timeout: %v, %v", o.readTimeout, err)
	}
}

func TestUnreachableUpstreamsFailAtStart(t *testing.T) {
	var stderr bytes.Buffer
	err := run(t.Context(), []string{"-listen", "127.0.0.1:0", "-log-level", "error",
		"-upstream", "primary=http://127.0.0.1:1,ws://127.0.0.1:1"}, &bytes.Buffer{}, &stderr)
	if err == nil || !strings.Contains(err.Error(), `upstream "primary"`) || !strings.Contains(err.Error(), "unreachable") {
		t.Fatalf("run = %v", err)
	}
}

// TestRunServesAndShutsDownOnSignal runs the program against a fake node on
// a real port, makes a request, then cancels its context (what SIGINT and
// SIGTERM do) and expects a clean exit.
func TestRunServesAndShutsDownOnSignal(t *testing.T) {
	chain := fakenode.NewChain(1, 50*time.Millisecond)
	defer chain.Close()
	n, err := fakenode.Start("node", "127.0.0.1:0", chain)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // run listens on it itself

	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	var stderr syncBuffer
	go func() {
		done <- run(ctx, []string{"-listen", addr, "-read-timeout", "200ms", "-upstream", "node=" + n.HTTPURL() + "," + n.WSURL()}, &bytes.Buffer{}, &stderr)
	}()
	deadline := time.Now().Add(10 * time.Second)
	var resp *http.Response
	for {
		resp, err = http.Post("http://"+addr, "application/json", strings.NewReader(`{"jsonrpc":"2.0","id":1,"method":"eth_chainId"}`))
		if err == nil || time.Now().After(deadline) {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("run exited early: %v\n%s", err, stderr.String())
		case <-time.After(20 * time.Millisecond): // bounded retry until the listener is up
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	// -read-timeout: a client that stops sending its body half-way gets
	// 408 and its connection closed, instead of holding it open.
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"jsonrpc\""); err != nil {
		t.Fatal(err)
	}
	stalled, err := io.ReadAll(c)
	if err != nil || !strings.HasPrefix(string(stalled), "HTTP/1.1 408 ") || !strings.Contains(string(stalled), "Connection: close") ||
		!strings.Contains(string(stalled), `"code":-32600`) {
		t.Fatalf("stalled body: %q, %v; want 408 with a JSON-RPC error, and the connection closed", stalled, err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Fatalf("run after shutdown: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("run did not return after its context was cancelled")
	}
	if !strings.Contains(stderr.String(), "shutting down") {
		t.Errorf("no shutdown log:\n%s", stderr.String())
	}
	http.DefaultClient.CloseIdleConnections()
}

// TestDemoInterrupted: SIGINT/SIGTERM (a cancelled context) stops the demo
// cleanly, with every node and server it started shut down (goleak checks).
func TestDemoInterrupted(t *testing.T) {
	ctx, cancel := context.WithCancel(t.Context())
	var out syncBuffer
	done := make(chan error, 1)
	go func() { done <- run(ctx, []string{"-demo", "-demo-block-time", "100ms"}, &out, &bytes.Buffer{}) }()
	deadline := time.Now().Add(20 * time.Second)
	for !strings.Contains(out.String(), "client subscribed") {
		if time.Now().After(deadline) {
			t.Fatalf("demo did not start:\n%s", out.String())
		}
		time.Sleep(10 * time.Millisecond) // polling interval of a bounded wait
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("interrupted demo returned %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("demo did not stop after interruption")
	}
	if !strings.Contains(out.String(), "demo interrupted") {
		t.Fatalf("output:\n%s", out.String())
	}
}

// TestConfigLimitsEnvAndHTTPOnly: the operator settings reach the proxy
// config from the file (with ${VAR} expanded from the environment) and
// from flags, and an upstream may be HTTP only.
func TestConfigLimitsEnvAndHTTPOnly(t *testing.T) {
	t.Setenv("STEADFAST_TEST_TOKEN", "s3cret")
	dir := t.TempDir()
	path := filepath.Join(dir, "proxy.json")
	cfg := `{"upstreams":[{"name":"p","http":"http://a:1"}],"auth_tokens":["${STEADFAST_TEST_TOKEN}"],
	"allow_methods":["default","debug_traceTransaction"],"rate_limit":50,"max_batch":10,"max_logs_range":500,"cache_bytes":1024,"coalesce":false,"reuse_latest":"250ms"}`
	if err := os.WriteFile(path, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	o, err := parseArgs([]string{"-config", path, "-max-body-bytes", "1000"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	c := o.cfg
	if len(c.Upstreams) != 1 || c.Upstreams[0].WSURL != "" || len(c.AuthTokens) != 1 || c.AuthTokens[0] != "s3cret" ||
		len(c.AllowMethods) != 2 || c.RateLimit != 50 || c.MaxBatch != 10 || c.MaxLogsRange != 500 ||
		c.CacheBytes != 1024 || !c.NoCoalesce || c.MaxBodyBytes != 1000 || c.ReuseLatest != 250*time.Millisecond {
		t.Fatalf("config %+v", c)
	}
	tokens := filepath.Join(dir, "tokens")
	if err := os.WriteFile(tokens, []byte("# clients\nalpha\n\nbeta\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	o, err = parseArgs([]string{"-upstream", "a=http://x", "-auth-token-file", tokens, "-allow-methods", "*", "-cache-bytes", "0", "-reuse-latest", "0"}, &bytes.Buffer{})
	if err != nil {
		t.Fatal(err)
	}
	if len(o.cfg.AuthTokens) != 2 || o.cfg.AuthTokens[1] != "beta" || len(o.cfg.AllowMethods) != 1 || o.cfg.CacheBytes != -1 ||
		o.cfg.ReuseLatest >= 0 { // the flag's 0 is "never", the Config's negative
		t.Fatalf("flags %+v", o.cfg)
	}
}
