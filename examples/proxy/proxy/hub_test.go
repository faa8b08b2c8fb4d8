package proxy_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/steadfast-go/steadfast/examples/proxy/proxy"
)

// TestSlowClientIsCutWithoutHoldingUpTheOthers: two clients share one
// upstream newHeads subscription. One stops reading (a tiny receive
// buffer, and it never calls Read) and holds 1,000 subscriptions of it, so
// the proxy owes it half a megabyte per block. The proxy must disconnect
// it once it is ClientBufferBytes behind, count what it dropped, and
// meanwhile keep the other client's heads flowing, contiguous and on time.
func TestSlowClientIsCutWithoutHoldingUpTheOthers(t *testing.T) {
	c := newCluster(t, []string{"primary"}, 20*time.Millisecond, func(cfg *proxy.Config) {
		cfg.ClientBufferBytes = 64 << 10
	})
	c.waitCurrent(t, "primary", 5*time.Second)
	fast := dialClient(t, c, "fast")
	sub := fast.subscribe("newHeads")
	fast.waitMoreHeads(2, 5*time.Second)

	dialer := &net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var serr error
		err := rc.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		})
		if err != nil {
			return err
		}
		return serr
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	slow, _, err := websocket.Dial(ctx, "ws://"+c.addr, &websocket.DialOptions{
		HTTPClient: &http.Client{Transport: &http.Transport{DialContext: dialer.DialContext}},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer slow.CloseNow()
	for i := range 1000 {
		msg := fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"eth_subscribe","params":["newHeads"]}`, i)
		if err := slow.Write(ctx, websocket.MessageText, []byte(msg)); err != nil {
			t.Fatal(err)
		}
	}

	// The fast client is served all along: whenever we look, its last head
	// is at most 50 blocks (one second) behind the chain. A fan-out that
	// waited on the slow client would leave it a write timeout (10 s,
	// 500 blocks) behind.
	maxLag := uint64(0)
	eventually(t, 20*time.Second, "the slow client disconnected", func() bool {
		fast.mu.Lock()
		hs := fast.heads[sub]
		last := hs[len(hs)-1]
		fast.mu.Unlock()
		if h := c.chain.Head(); h > last {
			maxLag = max(maxLag, h-last)
		}
		m := c.metrics(t)
		return m["steadfast_proxy_ws_clients"] == 1 && m[`steadfast_proxy_dropped_messages_total{reason="slow_client"}`] > 0
	})
	if maxLag > 50 {
		t.Fatalf("the fast client fell %d blocks behind while the slow one was being cut", maxLag)
	}
	fast.waitMoreHeads(3, 5*time.Second)
	if n := c.nodes[0].Subscriptions(); n != 1 {
		t.Fatalf("node has %d subscriptions, want 1 shared", n)
	}
	fast.check()
}

// TestSubscribeRefusedUpstreamIsAnsweredToEveryWaiter: clients that ask at
// once for a subscription the node refuses all get the node's error, and
// nothing stays behind; a valid subscription afterwards works.
func TestSubscribeRefusedUpstreamIsAnsweredToEveryWaiter(t *testing.T) {
	c := newCluster(t, []string{"primary"}, blockTime, nil)
	c.waitCurrent(t, "primary", 5*time.Second)
	var clients []*wsClient
	var ids []string
	for i := range 4 {
		w := dialClient(t, c, fmt.Sprintf("client%d", i))
		clients = append(clients, w)
		ids = append(ids, w.send("eth_subscribe", "bogus"))
	}
	for i, w := range clients {
		m := w.result(ids[i], 5*time.Second)
		if m.Error == nil || m.Error.Code != -32602 {
			t.Fatalf("%s: subscribe to bogus: %+v, want the node's -32602", w.name, m)
		}
	}
	m := c.metrics(t)
	if m["steadfast_proxy_upstream_subscriptions"] != 0 || m["steadfast_proxy_subscriptions"] != 0 || c.nodes[0].Subscriptions() != 0 {
		t.Fatalf("refused subscriptions left state: %v upstream, %v client, %d on the node",
			m["steadfast_proxy_upstream_subscriptions"], m["steadfast_proxy_subscriptions"], c.nodes[0].Subscriptions())
	}
	clients[0].subscribe("newHeads")
	clients[0].waitMoreHeads(2, 5*time.Second)
	for _, w := range clients {
		w.check()
	}
}

// TestJoinersAndLeaversNeverDisturbTheOthers: while one client watches
// newHeads, others keep subscribing to the same, unsubscribing and
// disconnecting (with and without a close handshake). The watcher's heads
// stay contiguous, each joiner's too, the node never holds more than one
// newHeads subscription, and when the last client leaves, none is left.
func TestJoinersAndLeaversNeverDisturbTheOthers(t *testing.T) {
	c := newCluster(t, []string{"primary"}, 10*time.Millisecond, nil)
	primary := c.nodes[0]
	c.waitCurrent(t, "primary", 5*time.Second)
	watcher := dialClient(t, c, "watcher")
	watcher.subscribe("newHeads")
	watcher.waitMoreHeads(2, 5*time.Second)

	var mu sync.Mutex
	maxSubs := int64(0)
	t.Run("joiners", func(t *testing.T) {
		for g := range 4 {
			t.Run(fmt.Sprint(g), func(t *testing.T) {
				t.Parallel()
				for round := range 8 {
					w := dialClient(t, c, fmt.Sprintf("joiner%d.%d", g, round))
					a := w.subscribe("newHeads")
					b := w.subscribe("newHeads")
					w.waitMoreHeads(2, 5*time.Second)
					n := primary.Subscriptions()
					mu.Lock()
					maxSubs = max(maxSubs, n)
					mu.Unlock()
					if m := w.result(w.send("eth_unsubscribe", a), 5*time.Second); m.Error != nil {
						t.Fatalf("%s: unsubscribe: %v", w.name, m.Error)
					}
					got := w.headCount(b)
					w.wait(5*time.Second, "heads on the other subscription", func() bool { return len(w.heads[b]) >= got+2 })
					w.check()
					if round%2 == 0 {
						w.close()
					} else {
						_ = w.c.CloseNow()
						<-w.done
					}
				}
			})
		}
	})
	if maxSubs != 1 {
		t.Fatalf("node held up to %d subscriptions, want 1 shared by everyone", maxSubs)
	}
	watcher.waitMoreHeads(3, 5*time.Second)
	watcher.check()
	watcher.close()
	eventually(t, 5*time.Second, "nothing left upstream", func() bool {
		m := c.metrics(t)
		return primary.Subscriptions() == 0 && m["steadfast_proxy_upstream_subscriptions"] == 0 && m["steadfast_proxy_ws_clients"] == 0
	})
}
