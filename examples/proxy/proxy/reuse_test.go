package proxy_test

import (
	"encoding/json"
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

// TestSwitchEndsReuse: once the selection has moved to another upstream,
// no answer the old one gave is reused, and after failback none of the
// backup's. The two nodes serve chains with different block hashes, so an
// answer from the wrong node is visible in every reply.
func TestSwitchEndsReuse(t *testing.T) {
	backupChain := fakenode.NewManualChain(1338) // same head, other hashes
	t.Cleanup(backupChain.Close)
	backup, err := fakenode.Start("backup", "127.0.0.1:0", backupChain)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(backup.Close)
	c := newClusterOn(t, fakenode.NewManualChain(1337), []string{"primary"}, func(cfg *proxy.Config) {
		cfg.Upstreams = append(cfg.Upstreams, proxy.Upstream{Name: "backup", HTTPURL: backup.HTTPURL(), WSURL: backup.WSURL()})
		cfg.ReuseLatest = time.Hour // only a head or a switch may end a reuse
	})
	primary := c.nodes[0]
	hashOf := func(b []byte) string {
		t.Helper()
		var m struct {
			Result struct {
				Hash string `json:"hash"`
			} `json:"result"`
		}
		if err := json.Unmarshal(b, &m); err != nil || m.Result.Hash == "" {
			t.Fatalf("latest block reply %s: %v", b, err)
		}
		return m.Result.Hash
	}
	// reusedFrom waits until the answers are reused again, and checks that
	// every answer, reused or forwarded, is the selected node's.
	reusedFrom := func(name, want string) {
		t.Helper()
		before := c.metrics(t)["steadfast_proxy_reused_answers_total"]
		eventually(t, 5*time.Second, "answers reused from "+name, func() bool {
			if _, b := c.post(t, latestBlockReq); hashOf(b) != want {
				t.Fatalf("latest block with hash %s while %s (hash %s) is selected", hashOf(b), name, want)
			}
			return c.metrics(t)["steadfast_proxy_reused_answers_total"] > before
		})
		for range 20 {
			if _, b := c.post(t, latestBlockReq); hashOf(b) != want {
				t.Fatalf("latest block with hash %s while %s (hash %s) is selected", hashOf(b), name, want)
			}
		}
	}

	c.waitCurrent(t, "primary", 5*time.Second)
	reusedFrom("primary", c.chain.Hash(1))

	primary.Hang() // checks time out: the selection moves to the backup
	c.waitCurrent(t, "backup", 10*time.Second)
	reusedFrom("backup", backupChain.Hash(1))

	primary.Resume() // failback once it passes its checks again
	c.waitCurrent(t, "primary", 10*time.Second)
	reusedFrom("primary", c.chain.Hash(1))
	if _, ok := c.lastSwitchTo("backup"); !ok {
		t.Error("no switch to the backup was reported")
	}
}
