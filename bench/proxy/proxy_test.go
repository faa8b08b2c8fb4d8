// Package proxy_test measures the overhead of the steadfast proxy example
// against talking to the (fake) execution node directly, on loopback:
// HTTP eth_blockNumber throughput, and WebSocket newHeads notification
// latency (p50/p99). Targets: at least 70% of direct throughput, at most
// 1 ms added p99 latency.
//
// Everything shares the machine's cores, so a proxied request costs two
// HTTP exchanges of CPU where a direct one costs one: the bare-forwarder
// case (no proxy logic at all) shows that floor, and cpu-ns/op reports the
// process CPU per request, which other load on the machine disturbs less
// than ns/op.
package proxy_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/goleak"

	"github.com/steadfast-go/steadfast/examples/proxy/fakenode"
	"github.com/steadfast-go/steadfast/examples/proxy/proxy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type env struct {
	chain     *fakenode.Chain
	node      *fakenode.Node
	p         *proxy.Proxy
	proxyAddr string
}

func setup(b *testing.B, chain *fakenode.Chain) *env {
	b.Helper()
	n, err := fakenode.Start("node", "127.0.0.1:0", chain)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(n.Close)
	p, err := proxy.New(proxy.Config{
		Upstreams: []proxy.Upstream{{Name: "node", HTTPURL: n.HTTPURL(), WSURL: n.WSURL()}},
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		b.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &proxy.Server{Handler: p.Handler(), ReadTimeout: 30 * time.Second, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))} // as the binary
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	b.Cleanup(func() {
		_ = srv.Close()
		<-done
		_ = p.Close()
	})
	deadline := time.Now().Add(10 * time.Second)
	for name, ok := p.Current(); !ok || name != "node"; name, ok = p.Current() {
		if time.Now().After(deadline) {
			b.Fatal("proxy never saw the node healthy")
		}
		time.Sleep(10 * time.Millisecond) // bounded wait for the first health check
	}
	return &env{chain: chain, node: n, p: p, proxyAddr: ln.Addr().String()}
}

const blockNumberReq = `{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}`

func benchHTTP(b *testing.B, url string) {
	tr := &http.Transport{MaxIdleConns: 256, MaxIdleConnsPerHost: 256}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	body := []byte(blockNumberReq)
	b.ReportAllocs()
	b.SetParallelism(4)
	cpu0 := processCPU(b)
	b.ResetTimer()
	defer func() {
		// CPU time of the whole process (bench client, proxy, node, GC)
		// per request: what bounds throughput on a saturated machine, and
		// far less sensitive than ns/op to other processes' load.
		b.StopTimer()
		b.ReportMetric(float64(processCPU(b)-cpu0)/float64(b.N), "cpu-ns/op")
	}()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			resp, err := client.Post(url, "application/json", bytes.NewReader(body))
			if err != nil {
				b.Error(err)
				return
			}
			data, err := io.ReadAll(resp.Body)
			resp.Body.Close()
			if err != nil || !strings.Contains(string(data), `"result":"0x`) {
				b.Errorf("reply %s, %v", data, err)
				return
			}
		}
	})
}

// processCPU returns the user+system CPU time this process has used.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkHTTPBlockNumber: eth_blockNumber over HTTP, in parallel, straight
// to the fake node and through the proxy.
func BenchmarkHTTPBlockNumber(b *testing.B) {
	chain := fakenode.NewManualChain(1)
	e := setup(b, chain)
	b.Run("direct", func(b *testing.B) { benchHTTP(b, e.node.HTTPURL()) })
	b.Run("proxy", func(b *testing.B) { benchHTTP(b, "http://"+e.proxyAddr) })
	b.Run("bare-forwarder", func(b *testing.B) { benchHTTP(b, "http://"+bareForwarder(b, e.node.HTTPURL())) })
}

// bareForwarder serves a forwarder with no logic at all (no parsing,
// failover, retries or metrics): read the body, send it upstream over a
// keep-alive transport, copy the reply back. It is the floor of any
// net/http proxy on this machine: the gap between it and direct is the
// cost of a second HTTP exchange, which no proxy logic can remove.
func bareForwarder(b *testing.B, upstream string) string {
	tr := &http.Transport{MaxIdleConns: 1024, MaxIdleConnsPerHost: 256, DisableCompression: true}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		req, err := http.NewRequestWithContext(r.Context(), http.MethodPost, upstream, bytes.NewReader(body))
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := tr.RoundTrip(req)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer resp.Body.Close()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(resp.StatusCode)
		_, _ = io.Copy(w, resp.Body)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ln) }()
	b.Cleanup(func() {
		_ = srv.Close()
		<-done
		tr.CloseIdleConnections()
	})
	return ln.Addr().String()
}

// BenchmarkWSNotificationLatency: time from a new block on the chain to
// its newHeads notification arriving at a subscribed client, straight from
// the fake node and through the proxy. One block per iteration.
func BenchmarkWSNotificationLatency(b *testing.B) {
	chain := fakenode.NewManualChain(1)
	e := setup(b, chain)
	b.Run("direct", func(b *testing.B) { benchLatency(b, chain, e.node.WSURL()) })
	b.Run("proxy", func(b *testing.B) { benchLatency(b, chain, "ws://"+e.proxyAddr) })
}

func benchLatency(b *testing.B, chain *fakenode.Chain, url string) {
	ctx := context.Background()
	c, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer c.CloseNow()
	if err := c.Write(ctx, websocket.MessageText, []byte(`{"jsonrpc":"2.0","id":1,"method":"eth_subscribe","params":["newHeads"]}`)); err != nil {
		b.Fatal(err)
	}
	if _, data, err := c.Read(ctx); err != nil || !strings.Contains(string(data), `"result":"0x`) {
		b.Fatalf("subscribe: %s %v", data, err)
	}
	lat := make([]time.Duration, 0, 1024)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		chain.Advance()
		_, data, err := c.Read(ctx)
		if err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(start))
		if !strings.Contains(string(data), "eth_subscription") {
			b.Fatalf("unexpected %s", data)
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	if len(lat) > 0 {
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(lat[(len(lat)*99)/100].Microseconds()), "p99-µs")
	}
}
