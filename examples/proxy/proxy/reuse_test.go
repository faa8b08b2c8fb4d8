package proxy_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/examples/proxy/fakenode"
	"github.com/steadfast-go/steadfast/examples/proxy/proxy"
)

const (
	blockNumberReq = `{"jsonrpc":"2.0","id":7,"method":"eth_blockNumber","params":[]}`
	latestBlockReq = `{"jsonrpc":"2.0","id":8,"method":"eth_getBlockByNumber","params":["latest",false]}`
)

// TestReusedHeadAnswersEndWithTheHead: while the chain stands still, the
// proxy answers eth_blockNumber and the latest block again without asking
// the node; the moment it has seen a new head (from the newHeads it
// follows: health checks are an hour apart here, so nothing else can tell
// it), every answer is about that head, however young the reused one was.
func TestReusedHeadAnswersEndWithTheHead(t *testing.T) {
	c := newClusterOn(t, fakenode.NewManualChain(1337), []string{"node"}, func(cfg *proxy.Config) {
		cfg.CheckInterval = time.Hour
		cfg.ReuseLatest = time.Hour // only the head may end a reuse
	})
	c.waitCurrent(t, "node", 5*time.Second)
	// The first reusable read starts the follower; answers are reused once
	// it is subscribed.
	eventually(t, 5*time.Second, "a reused answer", func() bool {
		c.post(t, blockNumberReq)
		return c.metrics(t)["steadfast_proxy_reused_answers_total"] > 0
	})
	before := c.metrics(t)["steadfast_proxy_reused_answers_total"]
	asked := c.nodes[0].Requests("eth_blockNumber")
	for range 50 {
		if _, b := c.post(t, blockNumberReq); resultHead(t, b, false) != 1 {
			t.Fatalf("eth_blockNumber: %s, want block 1", b)
		}
	}
	if got := c.metrics(t)["steadfast_proxy_reused_answers_total"] - before; got != 50 {
		t.Errorf("%v of 50 answers reused while the head stood still", got)
	}
	if n := c.nodes[0].Requests("eth_blockNumber"); n != asked {
		t.Errorf("the node got %d eth_blockNumber for answers that should all be reused", n-asked)
	}
	c.post(t, latestBlockReq) // remembered for head 1

	for want := uint64(2); want <= 4; want++ {
		c.chain.Advance()
		eventually(t, 5*time.Second, fmt.Sprintf("the proxy to see head %d", want), func() bool {
			return c.metrics(t)["steadfast_proxy_head_block"] >= float64(want)
		})
		for range 5 {
			_, b := c.post(t, blockNumberReq)
			if n := resultHead(t, b, false); n != want {
				t.Fatalf("eth_blockNumber answered %d after the proxy saw head %d: %s", n, want, b)
			}
			_, b = c.post(t, latestBlockReq)
			if n := resultHead(t, b, true); n != want {
				t.Fatalf("latest block %d after the proxy saw head %d: %s", n, want, b)
			}
		}
	}
}

// TestNoReuseWithoutHeadsToFollow: an upstream without a WebSocket URL
// gives the proxy no way to learn of a new head at once, so nothing is
// reused (identical reads in flight are still shared); with ReuseLatest
// off, neither.
func TestNoReuseWithoutHeadsToFollow(t *testing.T) {
	for _, tc := range []struct {
		name string
		tune func(*proxy.Config)
	}{
		{"http-only", func(cfg *proxy.Config) { cfg.Upstreams[0].WSURL = "" }},
		{"reuse-off", func(cfg *proxy.Config) { cfg.ReuseLatest = -1 }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newClusterOn(t, fakenode.NewManualChain(1337), []string{"node"}, tc.tune)
			c.waitCurrent(t, "node", 5*time.Second)
			asked := c.nodes[0].Requests("eth_blockNumber")
			for range 30 {
				c.post(t, blockNumberReq)
				c.post(t, latestBlockReq)
			}
			if m := c.metrics(t); m["steadfast_proxy_reused_answers_total"] != 0 {
				t.Errorf("%v answers reused", m["steadfast_proxy_reused_answers_total"])
			}
			if n := c.nodes[0].Requests("eth_blockNumber") - asked; n < 30 {
				t.Errorf("the node got %d of 30 sequential eth_blockNumber", n)
			}
			if n := c.nodes[0].Subscriptions(); n != 0 {
				t.Errorf("%d subscriptions on the node", n)
			}
		})
	}
}
