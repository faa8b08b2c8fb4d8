package proxy_test

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/examples/proxy/fakenode"
	"github.com/steadfast-go/steadfast/examples/proxy/proxy"
)

// readsChainLength is how many blocks the benchmark chain has: the
// "varying" reads pick one at random, so they rarely repeat.
const readsChainLength = 10_000

// serveProxy runs a proxy with cfg in front of node and returns its URL.
func serveProxy(b *testing.B, node *fakenode.Node, tune func(*proxy.Config)) string {
	b.Helper()
	cfg := proxy.Config{
		Upstreams: []proxy.Upstream{{Name: "node", HTTPURL: node.HTTPURL(), WSURL: node.WSURL()}},
		Logger:    slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	if tune != nil {
		tune(&cfg)
	}
	p, err := proxy.New(cfg)
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
	for _, ok := p.Current(); !ok; _, ok = p.Current() {
		if time.Now().After(deadline) {
			b.Fatal("proxy never saw the node healthy")
		}
		time.Sleep(10 * time.Millisecond) // bounded wait for the first health check
	}
	return "http://" + ln.Addr().String()
}

// readKinds are the request bodies of BenchmarkHTTPReads: the same
// request over and over (coalescable), or a different block each time.
var readKinds = []struct {
	name string
	body func(rng *rand.Rand) []byte
}{
	{"blockNumber", func(*rand.Rand) []byte { return []byte(blockNumberReq) }},
	{"latestBlock", func(*rand.Rand) []byte {
		return []byte(`{"jsonrpc":"2.0","id":1,"method":"eth_getBlockByNumber","params":["latest",false]}`)
	}},
	{"varyingBlocks", func(rng *rand.Rand) []byte {
		return fmt.Appendf(nil, `{"jsonrpc":"2.0","id":1,"method":"eth_getBlockByNumber","params":["0x%x",false]}`, 1+rng.IntN(readsChainLength-1))
	}},
}

// BenchmarkHTTPReads: HTTP reads at 1, 16 and 64 concurrent clients,
// straight to the fake node, through the proxy, and through the proxy with
// coalescing off. The node reports no finalized block, so nothing is
// cached: varying blocks are uncacheable reads. With one client,
// p50-µs is the median latency; added latency is proxy minus direct.
// upstream-calls/op is how many requests reached the node per client
// request.
func BenchmarkHTTPReads(b *testing.B) {
	chain := fakenode.NewManualChain(1)
	for chain.Head() < readsChainLength {
		chain.Advance()
	}
	node, err := fakenode.Start("node", "127.0.0.1:0", chain)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(node.Close)
	node.SetFinalityDepth(readsChainLength) // finalized: block 0, nothing worth caching
	targets := []struct{ name, url string }{
		{"direct", node.HTTPURL()},
		{"proxy", serveProxy(b, node, nil)},
		{"proxy-nocoalesce", serveProxy(b, node, func(c *proxy.Config) { c.NoCoalesce = true })},
	}
	for _, k := range readKinds {
		for _, conc := range []int{1, 16, 64} {
			for _, tg := range targets {
				b.Run(k.name+"/c="+strconv.Itoa(conc)+"/"+tg.name, func(b *testing.B) {
					benchReads(b, node, tg.url, conc, k.body)
				})
			}
		}
	}
}

func upstreamCalls(n *fakenode.Node) int64 {
	return n.Requests("eth_blockNumber") + n.Requests("eth_getBlockByNumber")
}

func benchReads(b *testing.B, node *fakenode.Node, url string, conc int, body func(*rand.Rand) []byte) {
	tr := &http.Transport{MaxIdleConns: 256, MaxIdleConnsPerHost: 256}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	do := func(req []byte) bool {
		resp, err := client.Post(url, "application/json", bytes.NewReader(req))
		if err != nil {
			b.Error(err)
			return false
		}
		data, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || !strings.Contains(string(data), `"result":`) || strings.Contains(string(data), `"result":null`) {
			b.Errorf("reply %s, %v", data, err)
			return false
		}
		return true
	}
	b.ReportAllocs()
	calls0, cpu0 := upstreamCalls(node), processCPU(b)
	defer func() {
		b.StopTimer()
		b.ReportMetric(float64(processCPU(b)-cpu0)/float64(b.N), "cpu-ns/op")
		b.ReportMetric(float64(upstreamCalls(node)-calls0)/float64(b.N), "upstream-calls/op")
	}()
	if conc == 1 {
		rng := rand.New(rand.NewPCG(1, 2))
		lat := make([]time.Duration, 0, 4096)
		for b.Loop() {
			start := time.Now()
			if !do(body(rng)) {
				return
			}
			lat = append(lat, time.Since(start))
		}
		b.StopTimer()
		slices.Sort(lat)
		b.ReportMetric(float64(lat[len(lat)/2].Nanoseconds())/1e3, "p50-µs")
		return
	}
	b.SetParallelism(max(1, conc/runtime.GOMAXPROCS(0)))
	var seed atomic.Uint64
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		rng := rand.New(rand.NewPCG(seed.Add(1), 3))
		for pb.Next() {
			if !do(body(rng)) {
				return
			}
		}
	})
}
