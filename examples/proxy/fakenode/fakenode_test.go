package fakenode_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/goleak"

	"github.com/steadfast-go/steadfast/examples/proxy/fakenode"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func post(t *testing.T, url, body string) (string, error) {
	return postWithin(t, url, body, 2*time.Second)
}

func postWithin(t *testing.T, url, body string, d time.Duration) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), d)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

func TestSharedChainSameBlocks(t *testing.T) {
	c := fakenode.NewManualChain(5)
	a, b := fakenode.NewManualChain(5), fakenode.NewManualChain(6)
	defer c.Close()
	defer a.Close()
	defer b.Close()
	if a.Hash(3) != c.Hash(3) || a.Hash(3) == b.Hash(3) {
		t.Fatal("hashes must depend on chain id and number only")
	}
	h := c.Header(4)
	if h.ParentHash != c.Hash(3) || h.Number != "0x4" {
		t.Fatalf("header %+v", h)
	}
	if c.Advance() != 2 || c.Head() != 2 {
		t.Fatal("Advance")
	}
}

// TestKillRestartHang: the controls a failover test relies on.
func TestKillRestartHang(t *testing.T) {
	chain := fakenode.NewManualChain(1337)
	defer chain.Close()
	n, err := fakenode.Start("n", "127.0.0.1:0", chain)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	addr := n.Addr()
	got, err := post(t, n.HTTPURL(), `{"jsonrpc":"2.0","id":1,"method":"eth_chainId"}`)
	if err != nil || got != `{"jsonrpc":"2.0","id":1,"result":"0x539"}` {
		t.Fatalf("eth_chainId = %s, %v", got, err)
	}
	got, _ = post(t, n.HTTPURL(), `{"jsonrpc":"2.0","id":1,`)
	if !strings.Contains(got, "-32700") {
		t.Fatalf("parse error reply %s", got)
	}

	n.Kill()
	if _, err := post(t, n.HTTPURL(), `{"jsonrpc":"2.0","id":1,"method":"eth_chainId"}`); err == nil {
		t.Fatal("killed node answered")
	}
	if err := n.Restart(); err != nil {
		t.Fatal(err)
	}
	if n.Addr() != addr {
		t.Fatalf("restarted on %s, want %s", n.Addr(), addr)
	}
	if _, err := post(t, n.HTTPURL(), `{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"}`); err != nil {
		t.Fatal(err)
	}

	n.Hang()
	if _, err := postWithin(t, n.HTTPURL(), `{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"}`, 200*time.Millisecond); err == nil {
		t.Fatal("hung node answered")
	}
	n.Resume()
	if _, err := post(t, n.HTTPURL(), `{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"}`); err != nil {
		t.Fatal(err)
	}
	http.DefaultClient.CloseIdleConnections()
}

// TestNewHeadsSubscription: one notification per new block, in order, and
// eth_unsubscribe stops them.
func TestNewHeadsSubscription(t *testing.T) {
	chain := fakenode.NewManualChain(1)
	defer chain.Close()
	n, err := fakenode.Start("n", "127.0.0.1:0", chain)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	c, _, err := websocket.Dial(ctx, n.WSURL(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.CloseNow()
	read := func() map[string]any {
		_, data, err := c.Read(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal(data, &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	_ = c.Write(ctx, websocket.MessageText, []byte(`{"jsonrpc":"2.0","id":1,"method":"eth_subscribe","params":["newHeads"]}`))
	sub, _ := read()["result"].(string)
	if sub == "" || n.Subscriptions() != 1 {
		t.Fatalf("subscribe: %q, %d live", sub, n.Subscriptions())
	}
	for want := 2; want <= 4; want++ {
		chain.Advance()
		m := read()
		p := m["params"].(map[string]any)
		if p["subscription"] != sub || p["result"].(map[string]any)["number"] != "0x"+string(rune('0'+want)) {
			t.Fatalf("notification %v, want block %d", m, want)
		}
	}
	_ = c.Write(ctx, websocket.MessageText, []byte(`{"jsonrpc":"2.0","id":2,"method":"eth_unsubscribe","params":["`+sub+`"]}`))
	if r := read(); r["result"] != true || n.Subscriptions() != 0 {
		t.Fatalf("unsubscribe %v", r)
	}
	_ = c.Write(ctx, websocket.MessageText, []byte(`{"jsonrpc":"2.0","id":3,"method":"eth_subscribe","params":["bogus"]}`))
	if r := read(); r["error"] == nil {
		t.Fatalf("bogus subscription accepted: %v", r)
	}
}
