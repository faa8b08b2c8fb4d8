// Package fakenode is a small fake Ethereum execution node for the proxy
// example, its tests and its benchmarks. It serves JSON-RPC over HTTP and
// WebSocket on one loopback address (eth_blockNumber, eth_chainId,
// eth_getBlockByNumber, eth_subscribe / eth_unsubscribe for newHeads, logs
// and newPendingTransactions) and can be killed, hung and restarted on the
// same port, which is what a failover test needs.
//
// Several nodes may share one Chain: like two real nodes of one network,
// they then report the same block numbers and hashes, so a client that
// switches between them can check that no head was lost or repeated.
package fakenode

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"

	"github.com/steadfast-go/steadfast/examples/proxy/jsonrpc"
)

// DefaultInterval is the block interval of a Chain made with interval 0.
const DefaultInterval = time.Second

// maxCatchUp bounds how many missed heads a subscription sends at once
// (after a hang, for instance); older ones are skipped like a real node does.
const maxCatchUp = 256

// Chain produces one block per interval (or per Advance call for a manual
// chain). It is safe for concurrent use; use NewChain or NewManualChain
// (no usable zero value) and do not copy it. Close stops it and waits for
// its goroutine.
type Chain struct {
	id       uint64
	interval time.Duration

	mu      sync.Mutex
	head    uint64
	changed chan struct{}     // closed and replaced on every new head
	byHash  map[string]uint64 // block hash -> number, for eth_getBlockByHash

	stop chan struct{}
	done chan struct{}
}

// NewChain starts a chain with the given chain id whose head starts at
// block 1 and grows by one every interval (DefaultInterval when 0).
func NewChain(chainID uint64, interval time.Duration) *Chain {
	if interval <= 0 {
		interval = DefaultInterval
	}
	c := &Chain{id: chainID, interval: interval, head: 1, changed: make(chan struct{}),
		stop: make(chan struct{}), done: make(chan struct{})}
	c.indexGenesis()
	go c.run()
	return c
}

// NewManualChain returns a chain that only grows when Advance is called
// (for benchmarks that time one notification at a time).
func NewManualChain(chainID uint64) *Chain {
	c := &Chain{id: chainID, head: 1, changed: make(chan struct{}), stop: make(chan struct{}), done: make(chan struct{})}
	c.indexGenesis()
	close(c.done)
	return c
}

// Advance adds one block now and returns its number.
func (c *Chain) Advance() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.head++
	c.byHash[c.Hash(c.head)] = c.head
	close(c.changed)
	c.changed = make(chan struct{})
	return c.head
}

func (c *Chain) indexGenesis() {
	c.byHash = map[string]uint64{c.Hash(0): 0, c.Hash(1): 1}
}

// ByHash returns the number of the block with hash h, if the chain has it.
func (c *Chain) ByHash(h string) (uint64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n, ok := c.byHash[h]
	return n, ok
}

func (c *Chain) run() {
	defer close(c.done)
	t := time.NewTicker(c.interval)
	defer t.Stop()
	for {
		select {
		case <-c.stop:
			return
		case <-t.C:
			c.Advance()
		}
	}
}

// Close stops block production and waits for the chain's goroutine.
func (c *Chain) Close() {
	select {
	case <-c.stop:
	default:
		close(c.stop)
	}
	<-c.done
}

// ID returns the chain id.
func (c *Chain) ID() uint64 { return c.id }

// Head returns the current head number.
func (c *Chain) Head() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.head
}

func (c *Chain) watch() (uint64, <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.head, c.changed
}

// Hash returns the deterministic hash of block n ("0x" + 64 hex digits).
func (c *Chain) Hash(n uint64) string {
	var b [16]byte
	binary.BigEndian.PutUint64(b[:8], c.id)
	binary.BigEndian.PutUint64(b[8:], n)
	s := sha256.Sum256(b[:])
	return "0x" + hex.EncodeToString(s[:])
}

// Header is the block header a node reports in newHeads notifications and
// eth_getBlockByNumber results (a subset of a real header).
type Header struct {
	Number     string `json:"number"`
	Hash       string `json:"hash"`
	ParentHash string `json:"parentHash"`
	Timestamp  string `json:"timestamp"`
	Miner      string `json:"miner"`
	GasLimit   string `json:"gasLimit"`
	GasUsed    string `json:"gasUsed"`
}

// Header returns block n's header.
func (c *Chain) Header(n uint64) Header {
	parent := "0x" + strings.Repeat("0", 64)
	if n > 0 {
		parent = c.Hash(n - 1)
	}
	return Header{
		Number:     hexU(n),
		Hash:       c.Hash(n),
		ParentHash: parent,
		Timestamp:  hexU(1_700_000_000 + n),
		Miner:      "0x" + strings.Repeat("0", 40),
		GasLimit:   hexU(30_000_000),
		GasUsed:    "0x0",
	}
}

func hexU(n uint64) string { return "0x" + strconv.FormatUint(n, 16) }

// Node is a fake execution node. Its methods are safe for concurrent use.
// The zero value is not usable (call Start) and a Node must not be copied.
// On one WebSocket connection, replies go out in request order and
// newHeads notifications in block order.
type Node struct {
	name  string
	chain *Chain
	addr  string // fixed by the first Start, reused by Restart

	subSeq   atomic.Uint64
	lag      atomic.Uint64
	finality atomic.Uint64
	active   atomic.Int64 // live subscriptions over all connections

	statsMu sync.Mutex
	stats   map[string]int64
	wsCalls []string // "method params" of WebSocket calls, in arrival order (last maxWSCalls)

	mu   sync.Mutex
	cur  *incarnation  // nil when killed
	hang chan struct{} // non-nil while hung; closed by Resume
}

// incarnation is one run of the server between Start/Restart and Kill.
type incarnation struct {
	srv   *http.Server
	ln    net.Listener
	stop  chan struct{}
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[*websocket.Conn]struct{}
	// closing holds the connections CloseWebSockets is closing.
	closing map[*websocket.Conn]struct{}
}

// Start starts a node named name that follows chain, listening on addr
// ("127.0.0.1:0" picks a free port). It returns the listen error, if any.
func Start(name, addr string, chain *Chain) (*Node, error) {
	n := &Node{name: name, chain: chain, stats: make(map[string]int64)}
	if err := n.listen(addr); err != nil {
		return nil, err
	}
	return n, nil
}

func (n *Node) listen(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("fakenode %s: %w", n.name, err)
	}
	inc := &incarnation{ln: ln, stop: make(chan struct{}), conns: make(map[*websocket.Conn]struct{})}
	inc.srv = &http.Server{Handler: n.handler(inc), ReadHeaderTimeout: 10 * time.Second}
	n.mu.Lock()
	n.addr = ln.Addr().String()
	n.cur = inc
	n.mu.Unlock()
	inc.wg.Go(func() { _ = inc.srv.Serve(ln) })
	return nil
}

// Name returns the node's name.
func (n *Node) Name() string { return n.name }

// Addr returns host:port.
func (n *Node) Addr() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.addr
}

// HTTPURL returns the node's HTTP JSON-RPC URL.
func (n *Node) HTTPURL() string { return "http://" + n.Addr() }

// WSURL returns the node's WebSocket URL.
func (n *Node) WSURL() string { return "ws://" + n.Addr() }

// Running reports whether the node is listening (not killed).
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.cur != nil
}

// Kill stops the node abruptly, like SIGKILL: the listener and every
// connection are closed without a WebSocket close frame. It waits for the
// node's goroutines. Killing a killed node does nothing.
func (n *Node) Kill() {
	n.mu.Lock()
	inc := n.cur
	n.cur = nil
	n.mu.Unlock()
	if inc == nil {
		return
	}
	inc.mu.Lock()
	close(inc.stop) // under inc.mu: serveWS checks stop before wg.Add
	inc.mu.Unlock()
	_ = inc.srv.Close() // listener and plain HTTP connections
	inc.mu.Lock()
	for c := range inc.conns {
		_ = c.CloseNow() // hijacked WebSocket connections, no close frame
	}
	for c := range inc.closing {
		_ = c.CloseNow()
	}
	inc.mu.Unlock()
	inc.wg.Wait()
}

// CloseWebSockets closes every WebSocket connection with a Close frame
// (status 1001, going away), as a node does on a graceful restart or when
// it sheds load, but keeps serving. It returns how many it closed.
func (n *Node) CloseWebSockets() int {
	inc := n.lockCurrent()
	if inc == nil {
		return 0
	}
	defer inc.mu.Unlock()
	select {
	case <-inc.stop:
		return 0
	default:
	}
	n0 := len(inc.conns)
	for c := range inc.conns {
		// Closing ones no longer count as open (WebSockets), so a caller
		// waiting for new connections is not fooled by these. Close waits
		// for the peer's close frame; Kill waits for these.
		delete(inc.conns, c)
		if inc.closing == nil {
			inc.closing = make(map[*websocket.Conn]struct{})
		}
		inc.closing[c] = struct{}{}
		inc.wg.Go(func() { _ = c.Close(websocket.StatusGoingAway, "node going away") })
	}
	return n0
}

// Restart listens again on the node's address after Kill. It returns the
// listen error (the port may have been taken meanwhile).
func (n *Node) Restart() error {
	if n.Running() {
		return errors.New("fakenode: " + n.name + " is running")
	}
	return n.listen(n.Addr())
}

// Hang makes the node accept connections and read requests but never
// answer, and stop sending notifications, like a process under SIGSTOP,
// until Resume or Kill.
func (n *Node) Hang() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.hang == nil {
		n.hang = make(chan struct{})
	}
}

// Resume ends a Hang; held requests are then answered.
func (n *Node) Resume() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.hang != nil {
		close(n.hang)
		n.hang = nil
	}
}

// SetLag makes the node report a head lag blocks behind the chain, like a
// node that fell out of sync.
func (n *Node) SetLag(lag uint64) { n.lag.Store(lag) }

// SetFinalityDepth makes the node report "finalized" and "safe" blocks
// depth blocks below its head (0, the default: the head itself).
func (n *Node) SetFinalityDepth(depth uint64) { n.finality.Store(depth) }

// Close kills the node for good.
func (n *Node) Close() { n.Kill() }

// WebSockets returns the number of open WebSocket connections (those
// CloseWebSockets is closing no longer count).
func (n *Node) WebSockets() int {
	inc := n.lockCurrent()
	if inc == nil {
		return 0
	}
	defer inc.mu.Unlock()
	return len(inc.conns)
}

// lockCurrent returns the running incarnation with its mu held, or nil
// when the node is down.
func (n *Node) lockCurrent() *incarnation {
	n.mu.Lock()
	inc := n.cur
	n.mu.Unlock()
	if inc != nil {
		inc.mu.Lock()
	}
	return inc
}

// Subscriptions returns how many subscriptions are live on the node, over
// all its WebSocket connections.
func (n *Node) Subscriptions() int64 { return n.active.Load() }

// Requests returns how many calls of method the node has received.
func (n *Node) Requests(method string) int64 {
	n.statsMu.Lock()
	defer n.statsMu.Unlock()
	return n.stats[method]
}

// maxWSCalls bounds the WebSocket call log; older entries are discarded.
const maxWSCalls = 4096

// WSCalls returns the params of the last WebSocket calls of method (up to
// 4096 calls of any method are kept), in the order the node received them.
func (n *Node) WSCalls(method string) []string {
	n.statsMu.Lock()
	defer n.statsMu.Unlock()
	var out []string
	for _, c := range n.wsCalls {
		if m, params, _ := strings.Cut(c, " "); m == method {
			out = append(out, params)
		}
	}
	return out
}

func (n *Node) logWSCall(m *jsonrpc.Message) {
	n.statsMu.Lock()
	if len(n.wsCalls) == maxWSCalls {
		n.wsCalls = append(n.wsCalls[:0], n.wsCalls[1:]...)
	}
	n.wsCalls = append(n.wsCalls, m.Method+" "+string(m.Params))
	n.statsMu.Unlock()
}

func (n *Node) count(method string) {
	n.statsMu.Lock()
	n.stats[method]++
	n.statsMu.Unlock()
}

// waitHang blocks while the node is hung. It returns false when the
// incarnation stopped or ctx ended meanwhile.
func (n *Node) waitHang(ctx context.Context, inc *incarnation) bool {
	n.mu.Lock()
	h := n.hang
	n.mu.Unlock()
	if h == nil {
		return true
	}
	select {
	case <-h:
		return true
	case <-inc.stop:
	case <-ctx.Done():
	}
	return false
}

func (n *Node) head() uint64 {
	h, lag := n.chain.Head(), n.lag.Load()
	if lag >= h {
		return 0
	}
	return h - lag
}

func (n *Node) handler(inc *incarnation) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.EqualFold(r.Header.Get("Upgrade"), "websocket") {
			n.serveWS(inc, w, r)
			return
		}
		if r.Method != http.MethodPost {
			http.Error(w, "POST JSON-RPC here", http.StatusMethodNotAllowed)
			return
		}
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<20))
		if err != nil {
			http.Error(w, err.Error(), http.StatusRequestEntityTooLarge)
			return
		}
		if !n.waitHang(r.Context(), inc) {
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(n.handleFrame(body, nil))
	})
}

// wsState is one WebSocket connection's subscriptions.
type wsState struct {
	mu   sync.Mutex
	subs map[string]*sub
	kick chan struct{} // wakes the notifier when a newHeads sub is added
}

type sub struct {
	kind string
	last uint64 // last head sent (newHeads)
}

func (n *Node) serveWS(inc *incarnation, w http.ResponseWriter, r *http.Request) {
	c, err := websocket.Accept(w, r, nil)
	if err != nil {
		return
	}
	c.SetReadLimit(1 << 20)
	inc.mu.Lock()
	select {
	case <-inc.stop:
		inc.mu.Unlock()
		_ = c.CloseNow()
		return
	default:
	}
	inc.conns[c] = struct{}{}
	inc.wg.Add(1)
	inc.mu.Unlock()
	defer inc.wg.Done()
	defer func() {
		inc.mu.Lock()
		delete(inc.conns, c)
		delete(inc.closing, c)
		inc.mu.Unlock()
		_ = c.CloseNow()
	}()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st := &wsState{subs: make(map[string]*sub), kick: make(chan struct{}, 1)}
	defer func() {
		st.mu.Lock()
		n.active.Add(-int64(len(st.subs)))
		st.subs = map[string]*sub{}
		st.mu.Unlock()
	}()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() { n.notify(ctx, inc, c, st) })
	for {
		_, data, err := c.Read(ctx)
		if err != nil {
			return
		}
		if !n.waitHang(ctx, inc) {
			return
		}
		reply := n.handleFrame(data, st)
		if reply == nil {
			continue
		}
		if err := c.Write(ctx, websocket.MessageText, reply); err != nil {
			return
		}
	}
}

// notify sends newHeads notifications for the connection's subscriptions.
func (n *Node) notify(ctx context.Context, inc *incarnation, c *websocket.Conn, st *wsState) {
	for {
		_, changed := n.chain.watch()
		if !n.waitHang(ctx, inc) {
			return
		}
		head := n.head()
		var out [][]byte
		st.mu.Lock()
		for id, s := range st.subs {
			if s.kind != "newHeads" {
				continue
			}
			from := s.last + 1
			if head >= maxCatchUp && from < head-maxCatchUp {
				from = head - maxCatchUp
			}
			for b := from; b <= head; b++ {
				out = append(out, n.notification(id, b))
			}
			if head > s.last {
				s.last = head
			}
		}
		st.mu.Unlock()
		for _, m := range out {
			if err := c.Write(ctx, websocket.MessageText, m); err != nil {
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-inc.stop:
			return
		case <-changed:
		case <-st.kick:
		}
	}
}

func (n *Node) notification(subID string, block uint64) []byte {
	type params struct {
		Subscription string `json:"subscription"`
		Result       Header `json:"result"`
	}
	b, _ := json.Marshal(struct {
		JSONRPC string `json:"jsonrpc"`
		Method  string `json:"method"`
		Params  params `json:"params"`
	}{jsonrpc.Version, "eth_subscription", params{subID, n.chain.Header(block)}})
	return b
}

// handleFrame answers one frame; st is nil over HTTP (no subscriptions).
func (n *Node) handleFrame(data []byte, st *wsState) []byte {
	f, err := jsonrpc.Parse(data)
	if err != nil {
		var je *jsonrpc.Error
		errors.As(err, &je)
		return jsonrpc.ErrorResponse(nil, je)
	}
	var parts [][]byte
	for i := range f.Msgs {
		var r []byte
		if f.Errs[i] != nil {
			r = jsonrpc.ErrorResponse(nil, f.Errs[i])
		} else {
			r = n.call(&f.Msgs[i], st)
		}
		if r != nil {
			parts = append(parts, r)
		}
	}
	if !f.Batch {
		if len(parts) == 0 {
			return nil
		}
		return parts[0]
	}
	if len(parts) == 0 {
		return nil
	}
	return jsonrpc.JoinBatch(parts)
}

func (n *Node) call(m *jsonrpc.Message, st *wsState) []byte {
	if e := jsonrpc.Validate(m); e != nil {
		return jsonrpc.ErrorResponse(m.ID, e)
	}
	n.count(m.Method)
	if st != nil {
		n.logWSCall(m)
	}
	var result any
	var rerr *jsonrpc.Error
	switch m.Method {
	case "eth_blockNumber":
		result = hexU(n.head())
	case "eth_chainId":
		result = hexU(n.chain.ID())
	case "net_version":
		result = strconv.FormatUint(n.chain.ID(), 10)
	case "web3_clientVersion":
		result = "fakenode/" + n.name
	case "eth_getBlockByNumber":
		result, rerr = n.getBlock(m.Params)
	case "eth_getBlockByHash":
		result, rerr = n.getBlockByHash(m.Params)
	case "eth_sendRawTransaction":
		// A fake: accept anything and return a hash derived from the payload.
		s := sha256.Sum256(m.Params)
		result = "0x" + hex.EncodeToString(s[:])
	case "eth_subscribe":
		result, rerr = n.subscribe(m.Params, st)
	case "eth_unsubscribe":
		result, rerr = n.unsubscribe(m.Params, st)
	default:
		rerr = &jsonrpc.Error{Code: jsonrpc.CodeMethodNotFound, Message: "the method " + m.Method + " does not exist/is not available"}
	}
	if !m.HasID() {
		return nil
	}
	if rerr != nil {
		return jsonrpc.ErrorResponse(m.ID, rerr)
	}
	b, err := json.Marshal(result)
	if err != nil {
		return jsonrpc.ErrorResponse(m.ID, &jsonrpc.Error{Code: jsonrpc.CodeInternalError, Message: err.Error()})
	}
	return jsonrpc.Response(m.ID, b)
}

func (n *Node) getBlock(params json.RawMessage) (any, *jsonrpc.Error) {
	var p []json.RawMessage
	if err := json.Unmarshal(params, &p); err != nil || len(p) == 0 {
		return nil, &jsonrpc.Error{Code: jsonrpc.CodeInvalidParams, Message: "expected [blockNumber, fullTx]"}
	}
	var tag string
	if err := json.Unmarshal(p[0], &tag); err != nil {
		return nil, &jsonrpc.Error{Code: jsonrpc.CodeInvalidParams, Message: "block number must be a string"}
	}
	head := n.head()
	var num uint64
	switch tag {
	case "latest", "pending":
		num = head
	case "safe", "finalized":
		num = head - min(head, n.finality.Load())
	case "earliest":
		num = 0
	default:
		v, err := strconv.ParseUint(strings.TrimPrefix(tag, "0x"), 16, 64)
		if err != nil || !strings.HasPrefix(tag, "0x") {
			return nil, &jsonrpc.Error{Code: jsonrpc.CodeInvalidParams, Message: "invalid block number " + strconv.Quote(tag)}
		}
		num = v
	}
	if num > head {
		return nil, nil // JSON null, like a real node
	}
	h := n.chain.Header(num)
	return &h, nil
}

func (n *Node) getBlockByHash(params json.RawMessage) (any, *jsonrpc.Error) {
	var p []json.RawMessage
	var h string
	if err := json.Unmarshal(params, &p); err != nil || len(p) == 0 || json.Unmarshal(p[0], &h) != nil {
		return nil, &jsonrpc.Error{Code: jsonrpc.CodeInvalidParams, Message: "expected [blockHash, fullTx]"}
	}
	num, ok := n.chain.ByHash(h)
	if !ok || num > n.head() {
		return nil, nil
	}
	hdr := n.chain.Header(num)
	return &hdr, nil
}

func (n *Node) subscribe(params json.RawMessage, st *wsState) (any, *jsonrpc.Error) {
	if st == nil {
		return nil, &jsonrpc.Error{Code: -32001, Message: "notifications not supported"}
	}
	var p []json.RawMessage
	var kind string
	if err := json.Unmarshal(params, &p); err != nil || len(p) == 0 || json.Unmarshal(p[0], &kind) != nil {
		return nil, &jsonrpc.Error{Code: jsonrpc.CodeInvalidParams, Message: "expected [kind, ...]"}
	}
	switch kind {
	case "newHeads", "logs", "newPendingTransactions":
	default:
		return nil, &jsonrpc.Error{Code: jsonrpc.CodeInvalidParams, Message: "no \"" + kind + "\" subscription in eth namespace"}
	}
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], n.subSeq.Add(1)^(uint64(len(n.name))<<56))
	h := sha256.Sum256(append([]byte(n.name), b[:]...))
	id := "0x" + hex.EncodeToString(h[:16])
	st.mu.Lock()
	st.subs[id] = &sub{kind: kind, last: n.head()}
	n.active.Add(1)
	st.mu.Unlock()
	if kind == "newHeads" {
		select {
		case st.kick <- struct{}{}:
		default:
		}
	}
	return id, nil
}

func (n *Node) unsubscribe(params json.RawMessage, st *wsState) (any, *jsonrpc.Error) {
	if st == nil {
		return nil, &jsonrpc.Error{Code: -32001, Message: "notifications not supported"}
	}
	var p []string
	if err := json.Unmarshal(params, &p); err != nil || len(p) != 1 {
		return nil, &jsonrpc.Error{Code: jsonrpc.CodeInvalidParams, Message: "expected [subscriptionId]"}
	}
	st.mu.Lock()
	_, ok := st.subs[p[0]]
	if ok {
		delete(st.subs, p[0])
		n.active.Add(-1)
	}
	st.mu.Unlock()
	return ok, nil
}
