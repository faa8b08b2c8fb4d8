package proxy_test

import (
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"

	"github.com/steadfast-go/steadfast/examples/proxy/jsonrpc"
	"github.com/steadfast-go/steadfast/examples/proxy/proxy"
)

const blockTime = 50 * time.Millisecond

// TestFailoverFailbackFlapClientsNeverNotice is the incident scenario end
// to end: three clients with four subscriptions each; the primary is
// killed, restored and flapped. Subscription ids never change, no head is
// lost or repeated, no replayed subscribe reply reaches a client, requests
// sent during a switch are answered, failback happens within 2 s of the
// primary's recovery, and old upstream connections are closed (no orphan
// subscriptions on either node).
func TestFailoverFailbackFlapClientsNeverNotice(t *testing.T) {
	c := newCluster(t, []string{"primary", "backup"}, blockTime, nil)
	primary, backup := c.nodes[0], c.nodes[1]
	c.waitCurrent(t, "primary", 5*time.Second)

	kinds := []string{"newHeads", "newHeads", "logs", "newPendingTransactions"}
	var clients []*wsClient
	subIDs := map[*wsClient][]string{}
	for _, name := range []string{"alice", "bob", "carol"} {
		w := dialClient(t, c, name)
		clients = append(clients, w)
		for _, k := range kinds {
			subIDs[w] = append(subIDs[w], w.subscribe(k))
		}
	}
	// One upstream subscription per distinct subscription: 12 client
	// subscriptions of 3 kinds are 3 on the node.
	const total = 3
	eventually(t, 5*time.Second, "one subscription per distinct kind on the primary", func() bool {
		return primary.Subscriptions() == total && backup.Subscriptions() == 0
	})
	for _, w := range clients {
		w.waitMoreHeads(3, 5*time.Second)
	}

	// Requests sent right as the upstream dies must all be answered.
	duringSwitch := func() map[*wsClient][]string {
		out := map[*wsClient][]string{}
		for _, w := range clients {
			out[w] = append(out[w], w.send("eth_blockNumber"), w.send("eth_chainId"),
				w.send("eth_getBlockByNumber", "latest", false))
		}
		return out
	}
	checkAnswered := func(ids map[*wsClient][]string) {
		t.Helper()
		for w, list := range ids {
			for _, id := range list {
				if m := w.result(id, 10*time.Second); m.Error != nil {
					t.Errorf("%s: request %s during a switch failed: %v", w.name, id, m.Error)
				}
			}
		}
	}

	for round := range 3 {
		primary.Kill()
		ids := duringSwitch()
		eventually(t, 10*time.Second, "every session on the backup", func() bool {
			return backup.Subscriptions() == total
		})
		if c.current() != "backup" {
			c.waitCurrent(t, "backup", 5*time.Second)
		}
		checkAnswered(ids)
		for _, w := range clients {
			w.waitMoreHeads(3, 5*time.Second)
		}

		if err := primary.Restart(); err != nil {
			t.Fatal(err)
		}
		restarted := time.Now()
		ids = duringSwitch()
		// Failback (make-before-break): every subscription moves to the
		// primary and the backup connections close, within 2 s.
		eventually(t, 2*time.Second, "failback of every session within 2 s of recovery", func() bool {
			return primary.Subscriptions() == total && backup.Subscriptions() == 0
		})
		ev, ok := c.lastSwitchTo("primary")
		if !ok || ev.reason != "better_available" || ev.at.Sub(restarted) > 2*time.Second {
			t.Fatalf("round %d: failback switch %+v (restart at %v)", round, ev, restarted)
		}
		checkAnswered(ids)
		for _, w := range clients {
			w.waitMoreHeads(3, 5*time.Second)
		}
	}

	// Rapid flapping: kill and restart back to back, faster than the
	// health checks can follow. Sessions may move or not; either way they
	// end up on the primary with nothing lost, repeated or orphaned.
	before := sum(c.metrics(t), "steadfast_proxy_replay_replies_total")
	for range 3 {
		primary.Kill()
		ids := duringSwitch()
		if err := primary.Restart(); err != nil {
			t.Fatal(err)
		}
		checkAnswered(ids)
	}
	eventually(t, 10*time.Second, "every session back on the primary after flapping", func() bool {
		return primary.Subscriptions() == total && backup.Subscriptions() == 0
	})
	for _, w := range clients {
		w.waitMoreHeads(3, 5*time.Second)
	}
	flapReplays := sum(c.metrics(t), "steadfast_proxy_replay_replies_total") - before

	for _, w := range clients {
		w.mu.Lock()
		got := map[string]bool{}
		for sub := range w.subs {
			got[sub] = true
		}
		w.mu.Unlock()
		for _, id := range subIDs[w] {
			if !got[id] {
				t.Errorf("%s: subscription %s lost", w.name, id)
			}
		}
		if len(got) != len(kinds) {
			t.Errorf("%s: %d subscription ids seen, want %d (ids must never change)", w.name, len(got), len(kinds))
		}
		w.check()
	}

	m := c.metrics(t)
	if d := sum(m, "steadfast_proxy_dropped_messages_total"); d != 0 {
		t.Errorf("dropped_messages_total = %v, want 0", d)
	}
	if got := m["steadfast_proxy_ws_clients"]; got != 3 {
		t.Errorf("ws_clients = %v, want 3", got)
	}
	if got := m["steadfast_proxy_subscriptions"]; got != float64(len(clients)*len(kinds)) {
		t.Errorf("subscriptions = %v, want %d", got, len(clients)*len(kinds))
	}
	if got := m["steadfast_proxy_upstream_subscriptions"]; got != total {
		t.Errorf("upstream_subscriptions = %v, want %d", got, total)
	}
	if got := m[`steadfast_proxy_replay_replies_total{outcome="ok"}`]; got < float64(6*total) || got > float64(6*total)+flapReplays {
		t.Errorf("replay replies ok = %v, want %d (3 failovers + 3 failbacks x %d subscriptions) + at most %v while flapping", got, 6*total, total, flapReplays)
	}
	if got := m[`steadfast_proxy_ws_session_switches_total{reason="better_available"}`]; got < 9 {
		t.Errorf("failback session switches = %v, want at least 9", got)
	}
	if got := m["steadfast_proxy_queued_messages"]; got != 0 {
		t.Errorf("queued_messages = %v after every request was answered", got)
	}
	if got := sum(m, "steadfast_proxy_requests_total"); got < 3*3*6 {
		t.Errorf("requests_total = %v, want at least the %d requests sent during switches", got, 3*3*6)
	}
	if got := m[`steadfast_proxy_upstream_current{upstream="primary"}`]; got != 1 {
		t.Errorf("upstream_current{primary} = %v", got)
	}
	if got := m[`steadfast_proxy_upstream_switches_total{reason="better_available"}`]; got < 3 {
		t.Errorf("better_available switches = %v, want >= 3", got)
	}
}

// TestUnsubscribeAfterSwitchUsesCurrentUpstreamID: eth_unsubscribe with the
// client's original id, after a failover, removes the subscription on the
// upstream now serving it (it was the last of its kind), and notifications
// for it stop; a second client's subscription of the other kind, and the
// first client's, carry on.
func TestUnsubscribeAfterSwitchUsesCurrentUpstreamID(t *testing.T) {
	c := newCluster(t, []string{"primary", "backup"}, blockTime, nil)
	primary, backup := c.nodes[0], c.nodes[1]
	c.waitCurrent(t, "primary", 5*time.Second)
	w := dialClient(t, c, "client")
	keep := w.subscribe("newHeads")
	// Other params make it a subscription of its own on the node.
	drop := w.subscribe("newHeads", map[string]bool{"distinct": true})
	other := dialClient(t, c, "other")
	otherKeep := other.subscribe("newHeads")
	w.waitMoreHeads(2, 5*time.Second)

	primary.Kill()
	eventually(t, 10*time.Second, "session on the backup", func() bool { return backup.Subscriptions() == 2 })
	w.waitMoreHeads(2, 5*time.Second)
	otherBefore := other.headCount(otherKeep)

	id := w.send("eth_unsubscribe", drop)
	if m := w.result(id, 5*time.Second); m.Error != nil || string(m.Result) != "true" {
		t.Fatalf("unsubscribe reply %+v", m)
	}
	eventually(t, 5*time.Second, "upstream subscription removed", func() bool { return backup.Subscriptions() == 1 })
	before := w.headCount(drop)
	keepBefore := w.headCount(keep)
	w.wait(5*time.Second, "3 more heads on the kept subscription", func() bool { return len(w.heads[keep]) >= keepBefore+3 })
	if after := w.headCount(drop); after != before {
		t.Fatalf("unsubscribed subscription got %d more heads", after-before)
	}
	// Unknown ids are an error, as on a node.
	id = w.send("eth_unsubscribe", drop)
	if m := w.result(id, 5*time.Second); m.Error == nil {
		t.Fatalf("second unsubscribe succeeded: %s", m.Result)
	}
	// The kept newHeads is shared with the other client: unsubscribing keep
	// leaves the upstream subscription to the other client.
	if m := w.result(w.send("eth_unsubscribe", keep), 5*time.Second); m.Error != nil {
		t.Fatalf("unsubscribe keep: %v", m.Error)
	}
	other.wait(5*time.Second, "3 more heads for the other client", func() bool { return len(other.heads[otherKeep]) >= otherBefore+3 })
	if n := backup.Subscriptions(); n != 1 {
		t.Fatalf("node has %d subscriptions, want the other client's newHeads only", n)
	}
	w.check()
	other.check()
}

// TestHangFailsOverAndNeverRepeatsSendRawTransaction: a primary that
// accepts but never answers (SIGSTOP) is left by health checks; a safe
// request stuck on it is answered by the backup, eth_sendRawTransaction is
// answered with an error and is never sent to the backup.
func TestHangFailsOverAndNeverRepeatsSendRawTransaction(t *testing.T) {
	c := newCluster(t, []string{"primary", "backup"}, blockTime, nil)
	primary, backup := c.nodes[0], c.nodes[1]
	c.waitCurrent(t, "primary", 5*time.Second)
	w := dialClient(t, c, "client")
	sub := w.subscribe("newHeads")
	w.waitMoreHeads(2, 5*time.Second)

	primary.Hang()
	t.Cleanup(primary.Resume)
	safe := w.send("eth_blockNumber")
	unsafe := w.send("eth_sendRawTransaction", "0x02f8")
	eventually(t, 15*time.Second, "session on the backup", func() bool { return backup.Subscriptions() == 1 })
	if m := w.result(safe, 10*time.Second); m.Error != nil {
		t.Fatalf("safe request stuck on the hung primary: %v", m.Error)
	}
	m := w.result(unsafe, 10*time.Second)
	if m.Error == nil || m.Error.Code != jsonrpc.CodeUpstreamLost {
		t.Fatalf("eth_sendRawTransaction reply %+v, want error %d", m, jsonrpc.CodeUpstreamLost)
	}
	if n := backup.Requests("eth_sendRawTransaction"); n != 0 {
		t.Fatalf("eth_sendRawTransaction was repeated on the backup (%d times)", n)
	}
	w.waitMoreHeads(3, 5*time.Second)
	// After the hang ends the primary is healthy again: failback.
	primary.Resume()
	eventually(t, 5*time.Second, "failback after the hang", func() bool {
		return primary.Subscriptions() == 1 && backup.Subscriptions() == 0
	})
	w.waitMoreHeads(3, 5*time.Second)
	if w.headCount(sub) == 0 {
		t.Fatal("no heads")
	}
	w.check()
}

// TestQueueFullAndNoUpstreamAreAnswered: with every upstream down, a
// session queues up to its limit, answers the overflow with a queue-full
// error at once, and the queued requests with a no-upstream error after the
// switch timeout; when an upstream returns, the subscription resumes under
// its original id.
func TestQueueFullAndNoUpstreamAreAnswered(t *testing.T) {
	c := newCluster(t, []string{"primary", "backup"}, blockTime, func(cfg *proxy.Config) {
		cfg.QueueSize = 2
		cfg.SwitchTimeout = 700 * time.Millisecond
	})
	primary, backup := c.nodes[0], c.nodes[1]
	c.waitCurrent(t, "primary", 5*time.Second)
	w := dialClient(t, c, "client")
	sub := w.subscribe("newHeads")
	w.waitMoreHeads(2, 5*time.Second)

	backup.Kill()
	primary.Kill()
	// Wait until the session has noticed (its upstream connection is gone).
	eventually(t, 5*time.Second, "session disconnected", func() bool {
		return sum(c.metrics(t), "steadfast_proxy_ws_session_switches_total") >= 1
	})
	var ids []string
	for range 5 {
		ids = append(ids, w.send("eth_blockNumber"))
	}
	codes := map[int]int{}
	for _, id := range ids {
		m := w.result(id, 10*time.Second)
		if m.Error == nil {
			t.Fatalf("request %s answered with a result while every upstream is down", id)
		}
		codes[m.Error.Code]++
	}
	if codes[jsonrpc.CodeQueueFull]+codes[jsonrpc.CodeNoUpstream] != 5 || codes[jsonrpc.CodeQueueFull] < 3 {
		t.Fatalf("error codes %v, want >= 3 queue-full and the rest no-upstream", codes)
	}
	// Fail fast while the outage lasts.
	id := w.send("eth_chainId")
	if m := w.result(id, 5*time.Second); m.Error == nil || m.Error.Code != jsonrpc.CodeNoUpstream {
		t.Fatalf("request during outage: %+v", m)
	}

	if err := backup.Restart(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "subscription replayed on the backup", func() bool { return backup.Subscriptions() == 1 })
	w.waitMoreHeads(3, 10*time.Second)
	// The session's own upstream connection (requests) comes back on its
	// own schedule, apart from the hub's (subscriptions): until then each
	// request is answered at once with no-upstream, never left waiting.
	recovered := false
	for range 200 {
		m := w.result(w.send("eth_chainId"), 5*time.Second)
		if m.Error == nil {
			if string(m.Result) != `"0x539"` {
				t.Fatalf("eth_chainId after recovery: %s", m.Result)
			}
			recovered = true
			break
		}
		if m.Error.Code != jsonrpc.CodeNoUpstream {
			t.Fatalf("eth_chainId while the session reconnects: %+v", m)
		}
		time.Sleep(50 * time.Millisecond) // pacing of a bounded retry loop, not synchronisation
	}
	if !recovered {
		t.Fatal("requests still fail 10 s after the backup came back")
	}
	w.mu.Lock()
	n := len(w.subs)
	w.mu.Unlock()
	if n != 1 || w.headCount(sub) == 0 {
		t.Fatalf("subscription ids %d, heads %d", n, w.headCount(sub))
	}
	w.mu.Lock()
	w.unexpected = nil // the outage legitimately skipped heads; ids and replies are checked below
	w.heads = map[string][]uint64{}
	w.mu.Unlock()
	w.check()
	if d := sum(c.metrics(t), "steadfast_proxy_dropped_messages_total"); d != 0 {
		t.Fatalf("dropped = %v: every refused request was answered", d)
	}
}

// TestMalformedFramesGetErrorsNotClosedConnections: parse errors and
// invalid requests over WebSocket get JSON-RPC errors and the connection
// keeps working; a batch is answered as a batch; a client id that looks
// like the proxy's reserved replay namespace is answered normally.
func TestMalformedFramesGetErrorsNotClosedConnections(t *testing.T) {
	c := newCluster(t, []string{"primary"}, blockTime, nil)
	c.waitCurrent(t, "primary", 5*time.Second)
	w := dialClient(t, c, "client")

	w.write([]byte(`{"jsonrpc":"2.0","id":1,`))
	w.wait(5*time.Second, "parse error", func() bool { return w.replies["null"] != nil })
	w.mu.Lock()
	if e := w.replies["null"].Error; e.Code != jsonrpc.CodeParseError {
		t.Errorf("parse error code %d", e.Code)
	}
	w.sent[`"steadfast-replay:1:1"`] = "eth_chainId"
	w.sent["41"], w.sent["42"], w.sent["43"] = "eth_blockNumber", "eth_chainId", "x"
	w.mu.Unlock()
	w.write([]byte(`{"jsonrpc":"2.0","id":"steadfast-replay:1:1","method":"eth_chainId"}`))
	w.write([]byte(`[{"jsonrpc":"2.0","id":41,"method":"eth_blockNumber"},{"jsonrpc":"2.0","id":42,"method":"eth_chainId"},{"jsonrpc":"2.0","id":43,"params":5}]`))
	m := w.result(`"steadfast-replay:1:1"`, 5*time.Second)
	if m.Error != nil || string(m.Result) != `"0x539"` {
		t.Fatalf("reserved-looking client id: %+v", m)
	}
	w.wait(5*time.Second, "batch reply", func() bool { return len(w.batches) == 1 })
	w.mu.Lock()
	if len(w.batches[0]) != 3 || w.replies["43"].Error == nil || w.replies["41"].Error != nil {
		t.Errorf("batch reply %+v", w.batches[0])
	}
	w.mu.Unlock()
	id := w.send("eth_blockNumber")
	if m := w.result(id, 5*time.Second); m.Error != nil {
		t.Fatalf("connection unusable after malformed input: %v", m.Error)
	}
	w.check()
}

// TestHTTP covers forwarding, batches, parse errors, the retry of safe
// methods on a connection error, and no retry for eth_sendRawTransaction.
func TestHTTP(t *testing.T) {
	// Slow health checks: the proxy learns of the dead primary from the
	// failed request itself.
	c := newCluster(t, []string{"primary", "backup"}, blockTime, func(cfg *proxy.Config) {
		cfg.CheckInterval = 5 * time.Second
		cfg.CheckTimeout = time.Second
		cfg.Rise, cfg.Fall = 1, 1
	})
	primary, backup := c.nodes[0], c.nodes[1]
	eventually(t, 5*time.Second, "both upstreams healthy", func() bool {
		m := c.metrics(t)
		return m[`steadfast_proxy_upstream_healthy{upstream="primary"}`] == 1 && m[`steadfast_proxy_upstream_healthy{upstream="backup"}`] == 1
	})

	status, body := c.post(t, `{"jsonrpc":"2.0","id":1,"method":"eth_chainId"}`)
	if status != 200 || string(body) != `{"jsonrpc":"2.0","id":1,"result":"0x539"}` {
		t.Fatalf("eth_chainId: %d %s", status, body)
	}
	status, body = c.post(t, `{"jsonrpc":"2.0","id":1,"method"`)
	if status != 200 || !strings.Contains(string(body), `"code":-32700`) {
		t.Fatalf("parse error: %d %s", status, body)
	}
	_, body = c.post(t, `[{"jsonrpc":"2.0","id":1,"method":"eth_chainId"},17,{"jsonrpc":"2.0","id":2,"method":"eth_blockNumber"}]`)
	var batch []jsonrpc.Message
	if err := json.Unmarshal(body, &batch); err != nil || len(batch) != 3 {
		t.Fatalf("batch reply %s: %v", body, err)
	}
	errs := 0
	for _, m := range batch {
		if m.Error != nil {
			errs++
		}
	}
	if errs != 1 {
		t.Fatalf("batch reply %s: want exactly one error", body)
	}

	primary.Kill()
	// The dial is refused: the transaction provably never left the proxy,
	// so it goes to the backup (a refused dial proves nothing was sent).
	status, body = c.post(t, `{"jsonrpc":"2.0","id":7,"method":"eth_sendRawTransaction","params":["0x02f8"]}`)
	if status != 200 || !strings.Contains(string(body), `"result":"0x`) {
		t.Fatalf("eth_sendRawTransaction on a dead primary: %d %s", status, body)
	}
	if n := backup.Requests("eth_sendRawTransaction"); n != 1 {
		t.Fatalf("eth_sendRawTransaction reached the backup %d times, want 1", n)
	}
	if err := primary.Restart(); err != nil {
		t.Fatal(err)
	}
	eventually(t, 15*time.Second, "primary selected again", func() bool {
		n, ok := c.p.Current()
		return ok && n == "primary"
	})
	primary.Kill()
	_, body = c.post(t, `{"jsonrpc":"2.0","id":8,"method":"eth_blockNumber"}`)
	if strings.Contains(string(body), "error") {
		t.Fatalf("eth_blockNumber was not retried on the backup: %s", body)
	}
	m := c.metrics(t)
	if m[`steadfast_proxy_http_retries_total{method="eth_blockNumber"}`] != 1 {
		t.Fatalf("retries metric: %v", m[`steadfast_proxy_http_retries_total{method="eth_blockNumber"}`])
	}
	if m[`steadfast_proxy_requests_total{method="eth_blockNumber",transport="http",upstream="backup"}`] < 1 {
		t.Fatalf("requests metric missing")
	}
}

// TestProbeReportsUnreachableUpstreams: a proxy whose upstreams are all
// down fails at start with an error naming each of them.
func TestProbeReportsUnreachableUpstreams(t *testing.T) {
	p, err := proxy.New(proxy.Config{Upstreams: []proxy.Upstream{
		{Name: "a", HTTPURL: "http://127.0.0.1:1", WSURL: "ws://127.0.0.1:1"},
		{Name: "b", HTTPURL: "http://127.0.0.1:2", WSURL: "ws://127.0.0.1:2"},
	}, Logger: testLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	err = p.Probe(t.Context())
	if err == nil || !strings.Contains(err.Error(), `"a"`) || !strings.Contains(err.Error(), `"b"`) {
		t.Fatalf("Probe error %v", err)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, cfg := range []proxy.Config{
		{},
		{Upstreams: []proxy.Upstream{{Name: "", HTTPURL: "http://x", WSURL: "ws://x"}}},
		{Upstreams: []proxy.Upstream{{Name: "a", HTTPURL: "ws://x", WSURL: "ws://x"}}},
		{Upstreams: []proxy.Upstream{{Name: "a", HTTPURL: "http://x", WSURL: "http://x"}}},
		{Upstreams: []proxy.Upstream{{Name: "a", HTTPURL: "http://x", WSURL: "ws://x"}, {Name: "a", HTTPURL: "http://y", WSURL: "ws://y"}}},
		{Upstreams: []proxy.Upstream{{Name: "a", HTTPURL: "http://x", WSURL: "ws://x"}}, CheckInterval: time.Second, CheckTimeout: 2 * time.Second},
	} {
		if p, err := proxy.New(cfg); err == nil {
			p.Close()
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}

// TestLaggingPrimaryIsLeft: a primary that falls more than MaxLag blocks
// behind the others (which agree on the head) is left, and chosen again
// once it has caught up; the WebSocket client keeps its subscription id
// and sees no block twice.
func TestLaggingPrimaryIsLeft(t *testing.T) {
	c := newCluster(t, []string{"primary", "backup1", "backup2"}, blockTime, func(cfg *proxy.Config) {
		cfg.MaxLag = 3
	})
	primary, backup1 := c.nodes[0], c.nodes[1]
	c.waitCurrent(t, "primary", 5*time.Second)
	w := dialClient(t, c, "client")
	sub := w.subscribe("newHeads")
	w.waitMoreHeads(2, 5*time.Second)

	primary.SetLag(20)
	c.waitCurrent(t, "backup1", 5*time.Second)
	eventually(t, 5*time.Second, "session on backup1", func() bool { return backup1.Subscriptions() == 1 })
	if ev, _ := c.lastSwitchTo("backup1"); ev.reason != "current_unhealthy" {
		t.Fatalf("switch %+v", ev)
	}
	w.waitMoreHeads(3, 5*time.Second)
	primary.SetLag(0)
	eventually(t, 5*time.Second, "failback after catching up", func() bool {
		return primary.Subscriptions() == 1 && backup1.Subscriptions() == 0
	})
	w.waitMoreHeads(3, 5*time.Second)
	if w.headCount(sub) == 0 {
		t.Fatal("no heads")
	}
	w.check() // consecutive blocks: the gap while the primary lagged was filled
	m := c.metrics(t)
	if m[`steadfast_proxy_upstream_lag_blocks{upstream="primary"}`] != 0 {
		t.Errorf("primary lag metric %v after catching up", m[`steadfast_proxy_upstream_lag_blocks{upstream="primary"}`])
	}
}

// TestCloseAnswersQueuedAndClosesClients: on shutdown a WebSocket client
// gets an error for each request still queued, then a Going Away close
// frame; nothing is left unanswered.
func TestCloseAnswersQueuedAndClosesClients(t *testing.T) {
	c := newCluster(t, []string{"primary"}, blockTime, func(cfg *proxy.Config) {
		cfg.SwitchTimeout = time.Minute // keep the request queued until Close
	})
	primary := c.nodes[0]
	c.waitCurrent(t, "primary", 5*time.Second)
	w := dialClient(t, c, "client")
	w.subscribe("newHeads")
	primary.Kill()
	eventually(t, 5*time.Second, "session disconnected", func() bool {
		return sum(c.metrics(t), "steadfast_proxy_ws_session_switches_total") >= 1
	})
	id := w.send("eth_blockNumber")
	eventually(t, 5*time.Second, "request queued", func() bool {
		return c.metrics(t)["steadfast_proxy_queued_messages"] == 1
	})
	if err := c.p.Close(); err != nil {
		t.Fatal(err)
	}
	m := w.result(id, 5*time.Second)
	if m.Error == nil || m.Error.Code != jsonrpc.CodeNoUpstream {
		t.Fatalf("queued request on shutdown: %+v", m)
	}
	select {
	case <-w.done:
	case <-time.After(5 * time.Second):
		t.Fatal("client not closed by the proxy")
	}
	if got := websocket.CloseStatus(w.readErr()); got != websocket.StatusGoingAway {
		t.Fatalf("close status %v, want going away", got)
	}
}

// TestUpstreamCloseFrameIsAFailoverNotAClosedClient: when the upstream
// closes the WebSocket with a Close frame, the proxy moves the session
// (and comes back when the primary accepts it again); the client's
// connection stays open and its heads continue without gap or repeat.
func TestUpstreamCloseFrameIsAFailoverNotAClosedClient(t *testing.T) {
	c := newCluster(t, []string{"primary", "backup"}, blockTime, nil)
	primary := c.nodes[0]
	c.waitCurrent(t, "primary", 5*time.Second)
	w := dialClient(t, c, "client")
	w.subscribe("newHeads")
	w.subscribe("logs")
	// A request makes the session dial an upstream connection of its own
	// (subscriptions alone live on the hub's).
	if m := w.result(w.send("eth_chainId"), 5*time.Second); m.Error != nil {
		t.Fatal(m.Error)
	}
	eventually(t, 5*time.Second, "subscriptions and both connections on the primary", func() bool {
		return primary.Subscriptions() == 2 && primary.WebSockets() == 2
	})
	w.waitMoreHeads(2, 5*time.Second)
	for range 3 {
		before := sum(c.metrics(t), `steadfast_proxy_ws_session_switches_total`)
		// Two: the session's own (requests) and the hub's (subscriptions).
		if n := primary.CloseWebSockets(); n != 2 {
			t.Fatalf("closed %d upstream connections, want 2", n)
		}
		id := w.send("eth_chainId")
		eventually(t, 5*time.Second, "session moved", func() bool {
			return sum(c.metrics(t), `steadfast_proxy_ws_session_switches_total`) > before
		})
		if m := w.result(id, 5*time.Second); m.Error != nil {
			t.Fatalf("request during the switch: %v", m.Error)
		}
		eventually(t, 5*time.Second, "session and hub back on the primary", func() bool {
			return primary.Subscriptions() == 2 && primary.WebSockets() == 2
		})
		w.waitMoreHeads(2, 5*time.Second)
	}
	if err := w.readErr(); err != nil {
		t.Fatalf("client connection ended: %v", err)
	}
	w.check()
}
