package proxy_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/examples/proxy/jsonrpc"
	"github.com/steadfast-go/steadfast/examples/proxy/proxy"
)

// TestInFlightLimitAnswersExcessRequests: a WebSocket client whose
// requests are not being answered (the node hangs) can have at most
// MaxInFlight of them pending in the proxy; the next one is answered at
// once with CodeTooManyInFlight (never silence, never unbounded memory),
// and the held ones are answered when the node resumes.
func TestInFlightLimitAnswersExcessRequests(t *testing.T) {
	c := newCluster(t, []string{"primary"}, blockTime, func(cfg *proxy.Config) {
		cfg.MaxInFlight = 2
		// Health checks stay out of the way: the hang must not move or
		// fail the session while the test holds requests on it.
		cfg.CheckInterval, cfg.CheckTimeout = 5*time.Second, time.Second
		cfg.Rise, cfg.Fall = 1, 100
	})
	primary := c.nodes[0]
	c.waitCurrent(t, "primary", 5*time.Second)
	w := dialClient(t, c, "client")
	if m := w.result(w.send("eth_chainId"), 5*time.Second); m.Error != nil {
		t.Fatalf("eth_chainId: %v", m.Error)
	}

	primary.Hang()
	t.Cleanup(primary.Resume)
	held := []string{w.send("eth_blockNumber"), w.send("eth_chainId")}
	over := w.send("eth_blockNumber")
	m := w.result(over, 5*time.Second)
	if m.Error == nil || m.Error.Code != jsonrpc.CodeTooManyInFlight {
		t.Fatalf("request over the in-flight limit: %+v, want error %d", m, jsonrpc.CodeTooManyInFlight)
	}
	w.mu.Lock()
	for _, id := range held {
		if w.replies[id] != nil {
			t.Errorf("request %s answered while the node hangs: %+v", id, w.replies[id])
		}
	}
	w.mu.Unlock()

	primary.Resume()
	for _, id := range held {
		if m := w.result(id, 5*time.Second); m.Error != nil {
			t.Fatalf("held request %s: %v", id, m.Error)
		}
	}
	// The limit counts requests awaiting a reply, not requests ever sent.
	if m := w.result(w.send("eth_chainId"), 5*time.Second); m.Error != nil {
		t.Fatalf("request after the held ones were answered: %v", m.Error)
	}
	w.check()
}

// TestHTTPSinglePassThroughKeepsIDsAndAnswersErrorsWithIDs: a single
// request is forwarded byte for byte (an id beyond float64 precision comes
// back unchanged), a notification is forwarded and answered with 204 and
// no body, and an invalid request is answered with an error carrying its
// id.
func TestHTTPSinglePassThroughKeepsIDsAndAnswersErrorsWithIDs(t *testing.T) {
	c := newCluster(t, []string{"node"}, blockTime, nil)
	node := c.nodes[0]
	c.waitCurrent(t, "node", 5*time.Second)

	status, body := c.post(t, `{"jsonrpc":"2.0","id":123456789012345678901234567890,"method":"eth_chainId"}`)
	if want := `{"jsonrpc":"2.0","id":123456789012345678901234567890,"result":"0x539"}`; status != 200 || string(body) != want {
		t.Fatalf("big id: %d %s, want %s", status, body, want)
	}

	before := node.Requests("eth_chainId")
	status, body = c.post(t, `{"jsonrpc":"2.0","method":"eth_chainId","params":[]}`)
	if status != 204 || len(body) != 0 {
		t.Fatalf("notification: %d %q, want 204 and no body", status, body)
	}
	if got := node.Requests("eth_chainId"); got != before+1 {
		t.Fatalf("notification reached the node %d times, want 1", got-before)
	}

	status, body = c.post(t, `{"jsonrpc":"2.0","id":"req-9","params":[]}`)
	if status != 200 || !jsonHas(body, `"id":"req-9"`, `"code":-32600`) {
		t.Fatalf("invalid request: %d %s, want an invalid-request error with id req-9", status, body)
	}
	status, body = c.post(t, `{"jsonrpc":"2.0","id":"req-10","method":"eth_chainId","params":"x"}`)
	if status != 200 || !jsonHas(body, `"id":"req-10"`, `"code":-32600`) {
		t.Fatalf("bad params: %d %s, want an invalid-request error with id req-10", status, body)
	}
}

func jsonHas(body []byte, parts ...string) bool {
	for _, p := range parts {
		if !strings.Contains(string(body), p) {
			return false
		}
	}
	return true
}

// TestFailbackWithin2sWithDefaultChecks: with the default health-check
// settings (what an operator runs), the proxy fails back to the recovered
// primary, and moves a WebSocket session there, within 2 s of the primary
// accepting connections again. The other end-to-end tests use faster
// checks; this one proves the documented default.
func TestFailbackWithin2sWithDefaultChecks(t *testing.T) {
	c := newCluster(t, []string{"primary", "backup"}, blockTime, func(cfg *proxy.Config) {
		cfg.CheckInterval, cfg.CheckTimeout = 0, 0 // defaults
		cfg.Rise, cfg.Fall = 0, 0
		cfg.SwitchTimeout = 0
	})
	primary, backup := c.nodes[0], c.nodes[1]
	c.waitCurrent(t, "primary", 5*time.Second)
	w := dialClient(t, c, "client")
	w.subscribe("newHeads")
	eventually(t, 5*time.Second, "subscription on the primary", func() bool { return primary.Subscriptions() == 1 })

	primary.Kill()
	eventually(t, 10*time.Second, "session on the backup", func() bool { return backup.Subscriptions() == 1 })
	// Restart only once the health checks, not just the session, have
	// given up on the primary: the failback measured is the group's.
	c.waitCurrent(t, "backup", 10*time.Second)
	w.waitMoreHeads(2, 5*time.Second)

	if err := primary.Restart(); err != nil {
		t.Fatal(err)
	}
	restarted := time.Now()
	eventually(t, 2*time.Second, "session back on the primary within 2 s of its recovery", func() bool {
		return primary.Subscriptions() == 1 && backup.Subscriptions() == 0
	})
	ev, ok := c.lastSwitchTo("primary")
	if !ok || ev.reason != "better_available" || ev.at.Before(restarted) || ev.at.Sub(restarted) > 2*time.Second {
		t.Fatalf("failback switch %+v, primary restarted at %v", ev, restarted)
	}
	w.waitMoreHeads(2, 5*time.Second)
	w.check()
}

// TestQueuedRequestsKeepClientOrderAcrossSwitch: requests a client sends
// while its session has no upstream are queued and reach the next
// upstream in the order the client sent them, including requests sent
// while the session reconnects; each is answered once, and the hub replays
// the subscription once.
func TestQueuedRequestsKeepClientOrderAcrossSwitch(t *testing.T) {
	c := newCluster(t, []string{"primary", "backup"}, blockTime, func(cfg *proxy.Config) {
		cfg.SwitchTimeout = 30 * time.Second // keep everything queued until the backup returns
	})
	primary, backup := c.nodes[0], c.nodes[1]
	c.waitCurrent(t, "primary", 5*time.Second)
	w := dialClient(t, c, "client")
	w.subscribe("newHeads")
	w.waitMoreHeads(2, 5*time.Second)

	backup.Kill()
	primary.Kill()
	eventually(t, 5*time.Second, "session detached from the dead primary", func() bool {
		return sum(c.metrics(t), "steadfast_proxy_ws_session_switches_total") >= 1
	})
	var ids, want []string
	req := func(n int) {
		p := fmt.Sprintf(`["0x%x",false]`, n)
		want = append(want, p)
		ids = append(ids, w.send("eth_getBlockByNumber", fmt.Sprintf("0x%x", n), false))
	}
	for n := 1; n <= 20; n++ {
		req(n)
	}
	eventually(t, 5*time.Second, "20 requests queued", func() bool {
		return c.metrics(t)["steadfast_proxy_queued_messages"] == 20
	})
	if err := backup.Restart(); err != nil {
		t.Fatal(err)
	}
	for n := 21; n <= 30; n++ { // racing the reconnect
		req(n)
	}
	for _, id := range ids {
		if m := w.result(id, 10*time.Second); m.Error != nil {
			t.Fatalf("queued request %s: %v", id, m.Error)
		}
	}
	got := backup.WSCalls("eth_getBlockByNumber")
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("backup received\n%v\nwant the client's order\n%v", got, want)
	}
	// The subscription lives on the hub's connection, replayed on its own
	// schedule: once, not once per session.
	eventually(t, 10*time.Second, "the subscription replayed on the backup", func() bool {
		return len(backup.WSCalls("eth_subscribe")) >= 1
	})
	if subs := backup.WSCalls("eth_subscribe"); len(subs) != 1 {
		t.Fatalf("backup got %d eth_subscribe calls, want the one replay", len(subs))
	}
	w.check()
}

// TestClientDisconnectReleasesEverything: clients that go away, cleanly or
// not, leave nothing behind: their sessions end (ws_clients back to 0),
// their upstream connections and subscriptions are closed on the node,
// and no request, queue entry or goroutine is left (goleak checks the
// goroutines at the end of the package).
func TestClientDisconnectReleasesEverything(t *testing.T) {
	c := newCluster(t, []string{"primary"}, blockTime, nil)
	primary := c.nodes[0]
	c.waitCurrent(t, "primary", 5*time.Second)
	const n = 10
	var clients []*wsClient
	for i := range n {
		w := dialClient(t, c, fmt.Sprintf("client%d", i))
		w.subscribe("newHeads")
		w.subscribe("logs")
		w.send("eth_blockNumber") // possibly still in flight when the client leaves
		clients = append(clients, w)
	}
	// One upstream subscription per distinct subscription, not per client.
	eventually(t, 5*time.Second, "both kinds on the node", func() bool { return primary.Subscriptions() == 2 })
	if got := c.metrics(t)["steadfast_proxy_subscriptions"]; got != 2*n {
		t.Fatalf("subscriptions gauge = %v, want %d", got, 2*n)
	}
	if got := c.metrics(t)["steadfast_proxy_ws_clients"]; got != n {
		t.Fatalf("ws_clients = %v, want %d", got, n)
	}
	for i, w := range clients {
		if i%2 == 0 {
			w.close() // close handshake
		} else {
			_ = w.c.CloseNow() // abrupt: TCP close without a close frame
			<-w.done
		}
	}
	eventually(t, 5*time.Second, "sessions and upstream subscriptions released", func() bool {
		m := c.metrics(t)
		return m["steadfast_proxy_ws_clients"] == 0 && m["steadfast_proxy_subscriptions"] == 0 &&
			m["steadfast_proxy_queued_messages"] == 0 && m["steadfast_proxy_upstream_subscriptions"] == 0 &&
			primary.Subscriptions() == 0
	})
}

// TestSubscriptionLimitPerClient: a client holding MaxSubscriptions
// subscriptions gets CodeTooManySubscriptions for the next eth_subscribe
// (nothing is created upstream), and may subscribe again after an
// unsubscribe.
func TestSubscriptionLimitPerClient(t *testing.T) {
	c := newCluster(t, []string{"primary"}, blockTime, func(cfg *proxy.Config) { cfg.MaxSubscriptions = 2 })
	primary := c.nodes[0]
	c.waitCurrent(t, "primary", 5*time.Second)
	w := dialClient(t, c, "client")
	first := w.subscribe("newHeads")
	w.subscribe("logs")
	m := w.result(w.send("eth_subscribe", "newPendingTransactions"), 5*time.Second)
	if m.Error == nil || m.Error.Code != jsonrpc.CodeTooManySubscriptions {
		t.Fatalf("third subscribe: %+v, want error %d", m, jsonrpc.CodeTooManySubscriptions)
	}
	if got := primary.Subscriptions(); got != 2 {
		t.Fatalf("node has %d subscriptions, want 2", got)
	}
	if m := w.result(w.send("eth_unsubscribe", first), 5*time.Second); m.Error != nil {
		t.Fatalf("unsubscribe: %v", m.Error)
	}
	w.subscribe("newPendingTransactions")
	eventually(t, 5*time.Second, "two subscriptions on the node", func() bool { return primary.Subscriptions() == 2 })
	w.check()
}
