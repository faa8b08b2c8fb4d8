// Command rpcload drives JSON-RPC over HTTP at a URL with -c concurrent
// clients for -d and prints one line: requests per second, median and p99
// latency, errors. It is the load generator of bench/proxy/compare.sh.
//
//	rpcload -url http://127.0.0.1:8545 -c 64 -d 5s -kind blockNumber
//
// With -mine N it instead grows a geth --dev chain (started with
// --dev.period 0, which seals a block per transaction) to at least N
// blocks, sending 1 wei from the dev account to itself per block, so that
// varyingBlocks has blocks to ask for.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"slices"
	"strconv"
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
	mineTo := flag.Int("mine", 0, "grow a geth --dev --dev.period 0 chain to this many blocks, then exit")
	flag.Parse()
	if *url == "" || flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	if *mineTo > 0 {
		if err := mine(*url, uint64(*mineTo)); err != nil {
			fmt.Fprintln(os.Stderr, "rpcload: -mine:", err)
			os.Exit(1)
		}
		return
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

// rpc makes one JSON-RPC call and decodes its result into out.
func rpc(url, method string, params []any, out any) error {
	body, err := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
	if err != nil {
		return err
	}
	resp, err := http.Post(url, "application/json", bytes.NewReader(body))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var r struct {
		Result json.RawMessage `json:"result"`
		Error  *struct {
			Message string `json:"message"`
		} `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&r); err != nil {
		return fmt.Errorf("%s: %w", method, err)
	}
	if r.Error != nil {
		return fmt.Errorf("%s: %s", method, r.Error.Message)
	}
	return json.Unmarshal(r.Result, out)
}

func mine(url string, n uint64) error {
	var accounts []string
	if err := rpc(url, "eth_accounts", nil, &accounts); err != nil {
		return err
	}
	if len(accounts) == 0 {
		return fmt.Errorf("no account: is this geth --dev?")
	}
	head := func() (uint64, error) {
		var s string
		if err := rpc(url, "eth_blockNumber", nil, &s); err != nil {
			return 0, err
		}
		return strconv.ParseUint(strings.TrimPrefix(s, "0x"), 16, 64)
	}
	deadline := time.Now().Add(10 * time.Minute)
	for time.Now().Before(deadline) {
		h, err := head()
		if err != nil {
			return err
		}
		if h >= n {
			return nil
		}
		var nonce string
		if err := rpc(url, "eth_getTransactionCount", []any{accounts[0], "pending"}, &nonce); err != nil {
			return err
		}
		next, err := strconv.ParseUint(strings.TrimPrefix(nonce, "0x"), 16, 64)
		if err != nil {
			return err
		}
		for k := range min(n-h, 100) { // one block each with --dev.period 0
			var hash string
			tx := map[string]any{"from": accounts[0], "to": accounts[0], "value": "0x1", "nonce": fmt.Sprintf("0x%x", next+k)}
			if err := rpc(url, "eth_sendTransaction", []any{tx}, &hash); err != nil {
				return err
			}
		}
		time.Sleep(50 * time.Millisecond) // let the last ones seal before counting

	}
	return fmt.Errorf("chain not at %d blocks after 10 minutes", n)
}
