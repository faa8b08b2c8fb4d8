// Package proxy_test measures the overhead of the steadfast proxy example
// against talking to the (fake) execution node directly, on loopback:
// HTTP eth_blockNumber throughput, and WebSocket newHeads notification
// latency (p50/p99). Targets: at least 70% of direct throughput, at most
// 1 ms added p99 latency.
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
	srv := &http.Server{Handler: p.Handler()}
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
	b.ResetTimer()
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

// BenchmarkHTTPBlockNumber: eth_blockNumber over HTTP, in parallel, straight
// to the fake node and through the proxy.
func BenchmarkHTTPBlockNumber(b *testing.B) {
	chain := fakenode.NewManualChain(1)
	e := setup(b, chain)
	b.Run("direct", func(b *testing.B) { benchHTTP(b, e.node.HTTPURL()) })
	b.Run("proxy", func(b *testing.B) { benchHTTP(b, "http://"+e.proxyAddr) })
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
