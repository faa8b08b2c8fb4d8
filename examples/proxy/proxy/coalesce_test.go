package proxy_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/examples/proxy/fakenode"
	"github.com/steadfast-go/steadfast/examples/proxy/proxy"
)

func postTo(t testing.TB, client *http.Client, url, body string) []byte {
	resp, err := client.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		t.Error(err)
		return nil
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Errorf("%s: %d %s %v", body, resp.StatusCode, b, err)
	}
	return b
}

func resultHead(t testing.TB, reply []byte, block bool) uint64 {
	var m struct {
		Result json.RawMessage `json:"result"`
	}
	if err := json.Unmarshal(reply, &m); err != nil {
		t.Errorf("reply %s: %v", reply, err)
		return 0
	}
	var s string
	if block {
		var h struct {
			Number string `json:"number"`
		}
		_ = json.Unmarshal(m.Result, &h)
		s = h.Number
	} else {
		_ = json.Unmarshal(m.Result, &s)
	}
	n, err := strconv.ParseUint(strings.TrimPrefix(s, "0x"), 16, 64)
	if err != nil {
		t.Errorf("reply %s has no block number", reply)
	}
	return n
}

// TestCoalescedAndCachedAnswersMatchTheNode: under load (16 clients while
// the chain grows every 20 ms), every answer the proxy gives from a shared
// call or its cache is byte for byte what a node of the same chain answers
// to the same request, and no latest-relative answer is older than a head
// some client had already received from the proxy before asking. Both
// mechanisms must have served requests, and the node must have received
// fewer calls than the clients made.
func TestCoalescedAndCachedAnswersMatchTheNode(t *testing.T) {
	c := newCluster(t, []string{"node"}, 20*time.Millisecond, nil)
	c.nodes[0].SetFinalityDepth(5)
	ref, err := fakenode.Start("ref", "127.0.0.1:0", c.chain) // the same chain, not behind the proxy
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ref.Close)
	c.waitCurrent(t, "node", 5*time.Second)
	eventually(t, 5*time.Second, "a finalized block", func() bool { return c.chain.Head() > 12 })
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	t.Cleanup(client.CloseIdleConnections)
	proxyURL := "http://" + c.addr

	var seen atomic.Uint64 // highest head any client has received from the proxy
	raise := func(n uint64) {
		for cur := seen.Load(); n > cur && !seen.CompareAndSwap(cur, n); cur = seen.Load() {
		}
	}
	var blockNumbers atomic.Int64
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), 17))
			for i := range 150 {
				before := seen.Load()
				id := strconv.Itoa(g*1000 + i)
				switch k := rng.IntN(4); k {
				case 0, 1: // latest-relative
					method, params, block := "eth_blockNumber", `[]`, false
					if k == 1 {
						method, params, block = "eth_getBlockByNumber", `["latest",false]`, true
					}
					got := postTo(t, client, proxyURL, `{"jsonrpc":"2.0","id":`+id+`,"method":"`+method+`","params":`+params+`}`)
					n := resultHead(t, got, block)
					if n < before {
						t.Errorf("%s answered block %d after a client had received %d", method, n, before)
					}
					raise(n)
					if block { // the block itself is the node's block of that number
						want := postTo(t, client, ref.HTTPURL(), fmt.Sprintf(`{"jsonrpc":"2.0","id":%s,"method":"eth_getBlockByNumber","params":["0x%x",false]}`, id, n))
						if !bytes.Equal(got, want) {
							t.Errorf("latest block %s, node says %s", got, want)
						}
					} else {
						blockNumbers.Add(1)
					}
				case 2, 3: // immutable: a finalized number, or a hash
					n := uint64(1 + rng.IntN(8))
					param := fmt.Sprintf(`"0x%x"`, n)
					method := "eth_getBlockByNumber"
					if k == 3 {
						method, param = "eth_getBlockByHash", `"`+c.chain.Hash(n)+`"`
					}
					body := `{"jsonrpc":"2.0","id":` + id + `,"method":"` + method + `","params":[` + param + `,false]}`
					got, want := postTo(t, client, proxyURL, body), postTo(t, client, ref.HTTPURL(), body)
					if !bytes.Equal(got, want) {
						t.Errorf("%s: proxy %s, node %s", body, got, want)
					}
				}
			}
		})
	}
	wg.Wait()
	m := c.metrics(t)
	if m["steadfast_proxy_coalesced_requests_total"] == 0 || m["steadfast_proxy_cache_hits_total"] == 0 || m["steadfast_proxy_reused_answers_total"] == 0 {
		t.Errorf("coalesced %v, cache hits %v, reused %v: all should have served requests", m["steadfast_proxy_coalesced_requests_total"],
			m["steadfast_proxy_cache_hits_total"], m["steadfast_proxy_reused_answers_total"])
	}
	if got, sent := c.nodes[0].Requests("eth_getBlockByHash"), int64(16*150/4); got >= sent/2 {
		t.Errorf("node got %d eth_getBlockByHash for about %d requests: the cache did not serve them", got, sent)
	}
	t.Logf("eth_blockNumber: %d through the proxy, %d reached the node (health checks included); coalesced %v, cache hits %v, reused %v",
		blockNumbers.Load(), c.nodes[0].Requests("eth_blockNumber"), m["steadfast_proxy_coalesced_requests_total"],
		m["steadfast_proxy_cache_hits_total"], m["steadfast_proxy_reused_answers_total"])
}

// TestWritesAreNeverShared: identical eth_sendRawTransaction requests sent
// at once each reach the node, and a read with NoCoalesce is never
// shared either.
func TestWritesAreNeverShared(t *testing.T) {
	c := newCluster(t, []string{"node"}, blockTime, func(cfg *proxy.Config) { cfg.NoCoalesce = true })
	c.waitCurrent(t, "node", 5*time.Second)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			c.post(t, `{"jsonrpc":"2.0","id":1,"method":"eth_sendRawTransaction","params":["0x02f8"]}`)
			c.post(t, `{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}`)
		})
	}
	wg.Wait()
	if n := c.nodes[0].Requests("eth_sendRawTransaction"); n != 8 {
		t.Fatalf("node got %d of 8 transactions", n)
	}
	if n := c.nodes[0].Requests("eth_chainId"); n < 8 {
		t.Fatalf("node got %d of 8 reads with coalescing off", n)
	}
	if m := c.metrics(t); m["steadfast_proxy_coalesced_requests_total"] != 0 {
		t.Fatalf("coalesced %v with NoCoalesce", m["steadfast_proxy_coalesced_requests_total"])
	}
}
