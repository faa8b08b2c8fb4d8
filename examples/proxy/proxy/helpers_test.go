package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coder/websocket"
	"go.uber.org/goleak"

	"github.com/steadfast-go/steadfast/examples/proxy/fakenode"
	"github.com/steadfast-go/steadfast/examples/proxy/jsonrpc"
	"github.com/steadfast-go/steadfast/examples/proxy/proxy"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// eventually polls cond every few milliseconds until it holds or the
// deadline passes. Real-network end-to-end tests synchronise on observable
// state this way; every wait is bounded.
func eventually(t testing.TB, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			dumpGoroutines(t)
			t.Fatalf("timed out after %v waiting for %s", within, what)
		}
		time.Sleep(5 * time.Millisecond) // polling interval of a bounded wait, not synchronisation by delay
	}
}

// dumpGoroutines logs every goroutine's stack when STEADFAST_PROXY_DUMP is
// set, to diagnose a timed-out wait.
func dumpGoroutines(t testing.TB) {
	if os.Getenv("STEADFAST_PROXY_DUMP") == "" {
		return
	}
	buf := make([]byte, 1<<22)
	t.Logf("goroutines:\n%s", buf[:runtime.Stack(buf, true)])
}

func testLogger() *slog.Logger {
	if os.Getenv("STEADFAST_PROXY_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

type switchEvent struct {
	from, to, reason string
	at               time.Time
}

// cluster is a fake chain, fake nodes, and the proxy on a loopback port.
type cluster struct {
	chain *fakenode.Chain
	nodes []*fakenode.Node
	p     *proxy.Proxy
	addr  string

	mu       sync.Mutex
	switches []switchEvent
}

func newCluster(t testing.TB, names []string, blockTime time.Duration, tune func(*proxy.Config)) *cluster {
	t.Helper()
	return newClusterOn(t, fakenode.NewChain(1337, blockTime), names, tune)
}

// newClusterOn is newCluster on a given chain (NewManualChain, say),
// which it closes at the end of the test.
func newClusterOn(t testing.TB, chain *fakenode.Chain, names []string, tune func(*proxy.Config)) *cluster {
	t.Helper()
	c := &cluster{chain: chain}
	t.Cleanup(c.chain.Close)
	var ups []proxy.Upstream
	for _, name := range names {
		n, err := fakenode.Start(name, "127.0.0.1:0", c.chain)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(n.Close)
		c.nodes = append(c.nodes, n)
		ups = append(ups, proxy.Upstream{Name: name, HTTPURL: n.HTTPURL(), WSURL: n.WSURL()})
	}
	cfg := proxy.Config{
		Upstreams: ups,
		// Fast enough for quick tests (failback in about 0.5 s), slow enough
		// that a loaded CI machine does not time out checks of healthy nodes.
		CheckInterval: 200 * time.Millisecond,
		CheckTimeout:  150 * time.Millisecond,
		Rise:          2,
		Fall:          2,
		SwitchTimeout: 3 * time.Second,
		Logger:        testLogger(),
		OnSwitch: func(from, to, reason string, at time.Time) {
			c.mu.Lock()
			c.switches = append(c.switches, switchEvent{from, to, reason, at})
			c.mu.Unlock()
		},
	}
	if tune != nil {
		tune(&cfg)
	}
	p, err := proxy.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.p = p
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c.addr = ln.Addr().String()
	srv := &proxy.Server{Handler: p.Handler(), ReadHeaderTimeout: 5 * time.Second, Logger: testLogger()}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(ln)
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		<-served
		if err := p.Close(); err != nil {
			t.Errorf("proxy Close: %v", err)
		}
	})
	return c
}

func (c *cluster) current() string {
	name, _ := c.p.Current()
	return name
}

func (c *cluster) waitCurrent(t testing.TB, name string, within time.Duration) {
	t.Helper()
	eventually(t, within, "proxy to select "+name, func() bool {
		n, ok := c.p.Current()
		return ok && n == name
	})
}

func (c *cluster) lastSwitchTo(name string) (switchEvent, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := len(c.switches) - 1; i >= 0; i-- {
		if c.switches[i].to == name {
			return c.switches[i], true
		}
	}
	return switchEvent{}, false
}

// metrics scrapes /metrics over HTTP and returns "name{labels}" -> value.
func (c *cluster) metrics(t testing.TB) map[string]float64 {
	t.Helper()
	resp, err := http.Get("http://" + c.addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			t.Fatalf("bad metrics line %q", line)
		}
		out[line[:i]] = v
	}
	return out
}

// sum adds every series of a metric family.
func sum(m map[string]float64, name string) float64 {
	var s float64
	for k, v := range m {
		if k == name || strings.HasPrefix(k, name+"{") {
			s += v
		}
	}
	return s
}

func (c *cluster) post(t testing.TB, body string) (int, []byte) {
	t.Helper()
	resp, err := http.Post("http://"+c.addr, "application/json", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

// wsClient is a JSON-RPC WebSocket client that records everything and
// flags anything a well-behaved proxy must never send: replies to ids it
// did not send (such as replayed subscribes), second replies, and
// notifications for subscription ids it was never given.
type wsClient struct {
	t    testing.TB
	name string
	c    *websocket.Conn
	done chan struct{}

	mu         sync.Mutex
	changed    chan struct{}
	nextID     int
	sent       map[string]string // id -> method
	kindOf     map[string]string // eth_subscribe id -> kind
	replies    map[string]*jsonrpc.Message
	batches    [][]jsonrpc.Message
	subs       map[string]string   // client-visible sub id -> kind
	heads      map[string][]uint64 // newHeads sub id -> block numbers received
	hashes     map[string][]string
	others     map[string]int // other subs -> notifications
	unexpected []string
	err        error // why the read loop ended
}

func (w *wsClient) readErr() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

func dialClient(t testing.TB, c *cluster, name string) *wsClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, _, err := websocket.Dial(ctx, "ws://"+c.addr, nil)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetReadLimit(1 << 24)
	w := &wsClient{t: t, name: name, c: conn, done: make(chan struct{}), changed: make(chan struct{}),
		sent: map[string]string{}, kindOf: map[string]string{}, replies: map[string]*jsonrpc.Message{}, subs: map[string]string{},
		heads: map[string][]uint64{}, hashes: map[string][]string{}, others: map[string]int{}}
	go w.read()
	t.Cleanup(w.close)
	return w
}

func (w *wsClient) close() {
	_ = w.c.Close(websocket.StatusNormalClosure, "")
	<-w.done
}

func (w *wsClient) read() {
	defer close(w.done)
	for {
		_, data, err := w.c.Read(context.Background())
		if err != nil {
			w.mu.Lock()
			w.err = err
			w.mu.Unlock()
			return
		}
		w.mu.Lock()
		w.handle(data)
		close(w.changed)
		w.changed = make(chan struct{})
		w.mu.Unlock()
	}
}

func (w *wsClient) handle(data []byte) {
	if bytes.HasPrefix(data, []byte("[")) {
		var ms []jsonrpc.Message
		if err := json.Unmarshal(data, &ms); err != nil {
			w.unexpected = append(w.unexpected, "bad batch: "+string(data))
			return
		}
		for i := range ms {
			w.reply(&ms[i], data)
		}
		w.batches = append(w.batches, ms)
		return
	}
	var m jsonrpc.Message
	if err := json.Unmarshal(data, &m); err != nil {
		w.unexpected = append(w.unexpected, "bad message: "+string(data))
		return
	}
	if m.Method == "eth_subscription" {
		var p struct {
			Subscription string `json:"subscription"`
			Result       struct {
				Number string `json:"number"`
				Hash   string `json:"hash"`
			} `json:"result"`
		}
		_ = json.Unmarshal(m.Params, &p)
		kind, ok := w.subs[p.Subscription]
		switch {
		case !ok:
			w.unexpected = append(w.unexpected, "notification for unknown subscription: "+string(data))
		case kind == "newHeads":
			n, err := strconv.ParseUint(strings.TrimPrefix(p.Result.Number, "0x"), 16, 64)
			if err != nil {
				w.unexpected = append(w.unexpected, "bad head: "+string(data))
				return
			}
			w.heads[p.Subscription] = append(w.heads[p.Subscription], n)
			w.hashes[p.Subscription] = append(w.hashes[p.Subscription], p.Result.Hash)
		default:
			w.others[p.Subscription]++
		}
		return
	}
	w.reply(&m, data)
}

func (w *wsClient) reply(m *jsonrpc.Message, data []byte) {
	id := string(m.ID)
	method, ok := w.sent[id]
	if !ok && id == "null" && m.Error != nil {
		w.replies["null"] = m // parse errors are answered with id null
		return
	}
	if !ok {
		w.unexpected = append(w.unexpected, "reply to an id never sent: "+string(data))
		return
	}
	if _, dup := w.replies[id]; dup {
		w.unexpected = append(w.unexpected, "second reply: "+string(data))
		return
	}
	w.replies[id] = m
	if method == "eth_subscribe" && m.Error == nil {
		var sub string
		_ = json.Unmarshal(m.Result, &sub)
		w.subs[sub] = w.kindOf[id]
	}
}

// send writes a request and returns its id.
func (w *wsClient) send(method string, params ...any) string {
	w.t.Helper()
	if params == nil {
		params = []any{}
	}
	w.mu.Lock()
	w.nextID++
	id := strconv.Itoa(w.nextID)
	w.sent[id] = method
	if method == "eth_subscribe" {
		w.kindOf[id], _ = params[0].(string)
	}
	w.mu.Unlock()
	b, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": w.nextIDRaw(id), "method": method, "params": params})
	w.write(b)
	return id
}

func (w *wsClient) nextIDRaw(id string) json.RawMessage { return json.RawMessage(id) }

func (w *wsClient) write(b []byte) {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := w.c.Write(ctx, websocket.MessageText, b); err != nil {
		w.t.Fatalf("%s: write: %v", w.name, err)
	}
}

// wait blocks until cond (called with w.mu held) holds.
func (w *wsClient) wait(within time.Duration, what string, cond func() bool) {
	w.t.Helper()
	t := time.NewTimer(within)
	defer t.Stop()
	for {
		w.mu.Lock()
		ok, ch := cond(), w.changed
		w.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-t.C:
			dumpGoroutines(w.t)
			w.t.Fatalf("%s: timed out after %v waiting for %s", w.name, within, what)
		}
	}
}

func (w *wsClient) result(id string, within time.Duration) *jsonrpc.Message {
	w.t.Helper()
	w.wait(within, "reply "+id, func() bool { return w.replies[id] != nil })
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.replies[id]
}

func (w *wsClient) subscribe(kind string, extra ...any) string {
	w.t.Helper()
	id := w.send("eth_subscribe", append([]any{kind}, extra...)...)
	m := w.result(id, 5*time.Second)
	if m.Error != nil {
		w.t.Fatalf("%s: subscribe %s: %v", w.name, kind, m.Error)
	}
	var sub string
	if err := json.Unmarshal(m.Result, &sub); err != nil || sub == "" {
		w.t.Fatalf("%s: subscribe result %s", w.name, m.Result)
	}
	return sub
}

// headCount returns how many heads sub has received.
func (w *wsClient) headCount(sub string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.heads[sub])
}

// waitMoreHeads waits until every newHeads sub got n more heads.
func (w *wsClient) waitMoreHeads(n int, within time.Duration) {
	w.t.Helper()
	w.mu.Lock()
	target := map[string]int{}
	for sub, kind := range w.subs {
		if kind == "newHeads" {
			target[sub] = len(w.heads[sub]) + n
		}
	}
	w.mu.Unlock()
	w.wait(within, fmt.Sprintf("%d more heads", n), func() bool {
		for sub, k := range target {
			if len(w.heads[sub]) < k {
				return false
			}
		}
		return true
	})
}

// check asserts what every client must see at the end: nothing unexpected,
// every request answered, and on every newHeads subscription consecutive
// block numbers with no gap and no repeat.
func (w *wsClient) check() {
	w.t.Helper()
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, u := range w.unexpected {
		w.t.Errorf("%s: %s", w.name, u)
	}
	for id, method := range w.sent {
		if w.replies[id] == nil {
			w.t.Errorf("%s: request %s (%s) never answered", w.name, id, method)
		}
	}
	for sub, nums := range w.heads {
		for i := 1; i < len(nums); i++ {
			if nums[i] != nums[i-1]+1 {
				w.t.Errorf("%s: sub %s: block %d followed by %d (lost or duplicated heads) in %v", w.name, sub, nums[i-1], nums[i], nums)
				break
			}
		}
	}
}
