// Command wsfan measures WebSocket fan-out with the proxy in a process of
// its own: it serves a fake node on a manual chain in this process, starts
// the proxy binary against it, connects -clients WebSocket clients with one
// newHeads subscription each (to the proxy, or straight to the node with
// -direct), then makes -blocks blocks, one at a time, each once every
// client has the previous one. It prints the proxy's CPU per delivered
// notification and memory per client (from /proc, so only the proxy's
// process counts), and the fan-out delay: the median over every delivered
// notification of the time from the block to that client's receipt
// (delay-p50), and the median and p90 over blocks of the time to the last
// client's (last-p50, last-p90).
//
//	wsfan -proxy /path/to/proxy -clients 5000 -blocks 40
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/steadfast-go/steadfast/examples/proxy/fakenode"
)

func main() {
	proxyBin := flag.String("proxy", "", "proxy binary (examples/proxy)")
	direct := flag.Bool("direct", false, "connect the clients to the node, not through the proxy")
	clients := flag.Int("clients", 5000, "WebSocket clients, one newHeads subscription each")
	blocks := flag.Int("blocks", 40, "blocks to fan out")
	flag.Parse()
	if err := run(*proxyBin, *direct, *clients, *blocks); err != nil {
		fmt.Fprintln(os.Stderr, "wsfan:", err)
		os.Exit(1)
	}
}

func run(proxyBin string, direct bool, n, blocks int) error {
	chain := fakenode.NewManualChain(1337)
	node, err := fakenode.Start("node", "127.0.0.1:0", chain)
	if err != nil {
		return err
	}
	defer node.Close()
	url := node.WSURL()
	pid := 0
	if !direct {
		if proxyBin == "" {
			return errors.New("-proxy is required unless -direct")
		}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		addr := ln.Addr().String()
		ln.Close()
		cmd := exec.Command(proxyBin, "-listen", addr, "-log-level", "error",
			"-upstream", "node="+node.HTTPURL()+","+node.WSURL())
		cmd.Stderr = os.Stderr
		if err := cmd.Start(); err != nil {
			return err
		}
		defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
		pid = cmd.Process.Pid
		if err := waitHealthy("http://" + addr + "/healthz"); err != nil {
			return err
		}
		url = "ws://" + addr
	}
	rss0 := rssKiB(pid)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// Each reader counts its notifications; the one that completes a
	// block's count signals it (a channel send per notification would make
	// the clients, not the proxy, the bottleneck).
	var mu sync.Mutex
	count := 0
	var start time.Time        // of the current block; guarded by mu
	var delays []time.Duration // every notification's, block to client; guarded by mu
	all := make(chan struct{}, 1)
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
			return fmt.Errorf("client %d: %w", len(conns), err)
		}
		conns = append(conns, c)
		if err := c.Write(ctx, websocket.MessageText, []byte(`{"jsonrpc":"2.0","id":1,"method":"eth_subscribe","params":["newHeads"]}`)); err != nil {
			return err
		}
		if _, data, err := c.Read(ctx); err != nil || !strings.Contains(string(data), `"result":"0x`) {
			return fmt.Errorf("subscribe: %s %v", data, err)
		}
		wg.Go(func() {
			for {
				_, r, err := c.Reader(ctx)
				if err != nil {
					return
				}
				if _, err := io.Copy(io.Discard, r); err != nil {
					return
				}
				mu.Lock()
				delays = append(delays, time.Since(start))
				count++
				if count == n {
					count = 0
					all <- struct{}{}
				}
				mu.Unlock()
			}
		})
	}
	rss1 := rssKiB(pid)
	cpu0 := cpuTicks(pid)
	var fan []time.Duration
	for range blocks {
		mu.Lock()
		start = time.Now()
		mu.Unlock()
		chain.Advance()
		select {
		case <-all:
		case <-time.After(30 * time.Second):
			return errors.New("a client missed its notification")
		}
		mu.Lock()
		fan = append(fan, time.Since(start))
		mu.Unlock()
	}
	cpu1 := cpuTicks(pid)
	slices.Sort(fan)
	mu.Lock()
	slices.Sort(delays)
	delayP50 := delays[len(delays)/2]
	mu.Unlock()
	mode := "proxy"
	if direct {
		mode = "direct"
	}
	fmt.Printf("%s clients=%d blocks=%d delay-p50-ms=%.2f last-p50-ms=%.2f last-p90-ms=%.2f", mode, n, blocks,
		ms(delayP50), ms(fan[len(fan)/2]), ms(fan[len(fan)*9/10]))
	if pid != 0 {
		// clock ticks are 10 ms (USER_HZ 100 on Linux)
		fmt.Printf(" proxy-cpu-µs/notification=%.1f proxy-KiB/client=%.1f",
			float64(cpu1-cpu0)*1e4/float64(blocks*n), float64(rss1-rss0)/float64(n))
	}
	fmt.Println()
	return nil
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1e3 }

func waitHealthy(url string) error {
	for range 200 {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond) // pacing of a bounded wait for the child to start
	}
	return errors.New("proxy never became healthy")
}

// cpuTicks is the process's user+system CPU in clock ticks.
func cpuTicks(pid int) int64 {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	u, _ := strconv.ParseInt(f[11], 10, 64)
	k, _ := strconv.ParseInt(f[12], 10, 64)
	return u + k
}

// rssKiB is the process's resident set size.
func rssKiB(pid int) int64 {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb
		}
	}
	return 0
}
