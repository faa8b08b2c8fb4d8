// Command rpcload drives JSON-RPC over HTTP at a URL with -c concurrent
// clients for -d and prints one line: requests per second, median and p99
// latency, errors. It is the load generator of bench/proxy/compare.sh.
//
//	rpcload -url http://127.0.0.1:8545 -c 64 -d 5s -kind blockNumber
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"
)

func main() {
	url := flag.String("url", "", "JSON-RPC HTTP URL")
	conc := flag.Int("c", 16, "concurrent clients")
	dur := flag.Duration("d", 5*time.Second, "duration")
	kind := flag.String("kind", "blockNumber", "blockNumber, latestBlock or varyingBlocks")
	maxBlock := flag.Int("max-block", 10000, "varyingBlocks: highest block to ask for")
	flag.Parse()
	if *url == "" || flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	body, ok := bodies[*kind]
	if !ok {
		fmt.Fprintln(os.Stderr, "rpcload: unknown -kind", *kind)
		os.Exit(2)
	}
	tr := &http.Transport{MaxIdleConns: 1024, MaxIdleConnsPerHost: 1024, DisableCompression: true}
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	deadline := time.Now().Add(*dur)
	var mu sync.Mutex
	var lat []time.Duration
	errs := 0
	var wg sync.WaitGroup
	for g := range *conc {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			var mine []time.Duration
			bad := 0
			for time.Now().Before(deadline) {
				start := time.Now()
				if !call(client, *url, body(rng, *maxBlock)) {
					bad++
					continue
				}
				mine = append(mine, time.Since(start))
			}
			mu.Lock()
			lat = append(lat, mine...)
			errs += bad
			mu.Unlock()
		})
	}
	wg.Wait()
	slices.Sort(lat)
	if len(lat) == 0 {
		fmt.Printf("rps=0 errors=%d\n", errs)
		os.Exit(1)
	}
	fmt.Printf("rps=%.0f p50_us=%d p99_us=%d errors=%d\n", float64(len(lat))/dur.Seconds(),
		lat[len(lat)/2].Microseconds(), lat[len(lat)*99/100].Microseconds(), errs)
}

var bodies = map[string]func(*rand.Rand, int) []byte{
	"blockNumber": func(*rand.Rand, int) []byte {
		return []byte(`{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}`)
	},
	"latestBlock": func(*rand.Rand, int) []byte {
		return []byte(`{"jsonrpc":"2.0","id":1,"method":"eth_getBlockByNumber","params":["latest",false]}`)
	},
	"varyingBlocks": func(rng *rand.Rand, n int) []byte {
		return fmt.Appendf(nil, `{"jsonrpc":"2.0","id":1,"method":"eth_getBlockByNumber","params":["0x%x",false]}`, 1+rng.IntN(max(1, n-1)))
	},
}

func call(c *http.Client, url string, body []byte) bool {
	resp, err := c.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		return false
	}
	data, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return err == nil && resp.StatusCode == 200 && strings.Contains(string(data), `"result":`) && !strings.Contains(string(data), `"result":null`)
}
