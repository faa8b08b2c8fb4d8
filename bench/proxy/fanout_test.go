package proxy_test

import (
	"context"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/steadfast-go/steadfast/examples/proxy/fakenode"
)

// fanoutClients is how many WebSocket clients BenchmarkWSFanout connects
// (STEADFAST_FANOUT_CLIENTS overrides it; the target is stated at
// 5,000).
func fanoutClients() int {
	if n, err := strconv.Atoi(os.Getenv("STEADFAST_FANOUT_CLIENTS")); err == nil && n > 0 {
		return n
	}
	return 500
}

// BenchmarkWSFanout: many clients with one newHeads subscription each,
// straight to the fake node and through the proxy; one block per
// iteration, which ends when every client has its notification.
// cpu-µs/notification is the process's CPU (clients, proxy, node) per
// delivered notification, heap-KiB/client the heap the connections hold
// (both sides, in this one process), fanout-p50-ms the median time from
// the block to the last client's notification.
func BenchmarkWSFanout(b *testing.B) {
	chain := fakenode.NewManualChain(1)
	e := setup(b, chain)
	b.Run("direct", func(b *testing.B) { benchFanout(b, chain, e.node.WSURL()) })
	b.Run("proxy", func(b *testing.B) { benchFanout(b, chain, "ws://"+e.proxyAddr) })
}

func heapInUse() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapInuse
}

func benchFanout(b *testing.B, chain *fakenode.Chain, url string) {
	n := fanoutClients()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	heap0 := heapInUse()
	got := make(chan struct{}, n)
	var wg sync.WaitGroup
	conns := make([]*websocket.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			_ = c.CloseNow()
		}
		wg.Wait()
	}()
	for range n {
		c, _, err := websocket.Dial(ctx, url, nil)
		if err != nil {
			b.Fatal(err)
		}
		conns = append(conns, c)
		if err := c.Write(ctx, websocket.MessageText, []byte(`{"jsonrpc":"2.0","id":1,"method":"eth_subscribe","params":["newHeads"]}`)); err != nil {
			b.Fatal(err)
		}
		if _, data, err := c.Read(ctx); err != nil || !strings.Contains(string(data), `"result":"0x`) {
			b.Fatalf("subscribe: %s %v", data, err)
		}
		wg.Go(func() {
			for {
				if _, _, err := c.Read(ctx); err != nil {
					return
				}
				got <- struct{}{}
			}
		})
	}
	b.ReportMetric(float64(heapInUse()-heap0)/1024/float64(n), "heap-KiB/client")
	var fan []time.Duration
	cpu0 := processCPU(b)
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		chain.Advance()
		for range n {
			select {
			case <-got:
			case <-time.After(30 * time.Second):
				b.Fatal("a client missed its notification")
			}
		}
		fan = append(fan, time.Since(start))
	}
	b.StopTimer()
	b.ReportMetric(float64(processCPU(b)-cpu0)/1e3/float64(b.N*n), "cpu-µs/notification")
	slices.Sort(fan)
	b.ReportMetric(float64(fan[len(fan)/2].Microseconds())/1e3, "fanout-p50-ms")
}
