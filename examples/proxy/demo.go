package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/steadfast-go/steadfast/examples/proxy/fakenode"
	"github.com/steadfast-go/steadfast/examples/proxy/proxy"
)

// runDemo starts two fake nodes on one chain, the proxy in front of them
// and a WebSocket client; kills the primary, restarts it, and prints a
// timeline and whether the client lost or saw twice any head.
func runDemo(ctx context.Context, o options, stdout, stderr io.Writer) error {
	start := time.Now()
	var outMu sync.Mutex
	say := func(format string, args ...any) {
		outMu.Lock()
		defer outMu.Unlock()
		fmt.Fprintf(stdout, "  %6.2fs  %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}
	fmt.Fprintln(stdout, "steadfast proxy demo: two fake execution nodes on loopback, the proxy in front, one WebSocket client.")

	chain := fakenode.NewChain(1337, o.blockTime)
	defer chain.Close()
	primary, err := fakenode.Start("primary", "127.0.0.1:0", chain)
	if err != nil {
		return err
	}
	defer primary.Close()
	backup, err := fakenode.Start("backup", "127.0.0.1:0", chain)
	if err != nil {
		return err
	}
	defer backup.Close()

	level := slog.LevelError // keep the timeline readable; -log-level overrides
	if o.logLevel != slog.LevelInfo {
		level = o.logLevel
	}
	switched := make(chan string, 16)
	cfg := o.cfg
	cfg.Upstreams = []proxy.Upstream{
		{Name: "primary", HTTPURL: primary.HTTPURL(), WSURL: primary.WSURL()},
		{Name: "backup", HTTPURL: backup.HTTPURL(), WSURL: backup.WSURL()},
	}
	cfg.Logger = slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))
	cfg.OnSwitch = func(from, to, reason string, _ time.Time) {
		if from == "" {
			return
		}
		say("proxy switched %s -> %s (%s)", from, to, reason)
		select {
		case switched <- to:
		default:
		}
	}
	p, err := proxy.New(cfg)
	if err != nil {
		return err
	}
	defer p.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	sctx, stopServe := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- serve(sctx, p, ln, o.readTimeout, cfg.Logger) }()
	defer func() { stopServe(); <-served }()
	say("proxy on %s; primary %s, backup %s; one block every %v", ln.Addr(), primary.Addr(), backup.Addr(), o.blockTime)

	wait := func(what string, ch <-chan string, want string) error {
		t := time.NewTimer(10*time.Second + 5*o.blockTime)
		defer t.Stop()
		for {
			select {
			case got := <-ch:
				if got == want {
					return nil
				}
			case <-t.C:
				return fmt.Errorf("demo: timed out waiting for %s", what)
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
	// Wait until the proxy has selected the primary.
	for name, ok := p.Current(); !ok || name != "primary"; name, ok = p.Current() {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}

	cl, err := newDemoClient(ctx, "ws://"+ln.Addr().String(), func(sub string, block uint64) {
		say("client: newHeads block %d  (subscription %s)", block, short(sub))
	})
	if err != nil {
		return err
	}
	defer cl.close()
	say("client subscribed to newHeads: subscription id %s", cl.subID)

	heads := func(n int) error { return cl.waitHeads(ctx, n, 10*time.Second+time.Duration(n+2)*o.blockTime) }
	if err := heads(3); err != nil {
		return err
	}
	primary.Kill()
	say("primary killed (SIGKILL-like: connections dropped, port closed)")
	if err := wait("failover", switched, "backup"); err != nil {
		return err
	}
	if err := heads(3); err != nil {
		return err
	}
	if err := primary.Restart(); err != nil {
		return err
	}
	restarted := time.Now()
	say("primary restarted on the same port")
	if err := wait("failback", switched, "primary"); err != nil {
		return err
	}
	failback := time.Since(restarted)
	if err := heads(3); err != nil {
		return err
	}

	r := cl.result()
	fmt.Fprintln(stdout)
	fmt.Fprintf(stdout, "failback %.2fs after the primary came back (goal: within 2 s)\n", failback.Seconds())
	fmt.Fprintf(stdout, "newHeads received: %d, blocks %d..%d\n", r.count, r.first, r.last)
	fmt.Fprintf(stdout, "subscription ids seen by the client: %s (unchanged: %v)\n", strings.Join(r.ids, ", "), len(r.ids) == 1 && r.ids[0] == cl.subID)
	fmt.Fprintf(stdout, "notifications lost: %d, duplicated: %d\n", r.lost, r.dups)
	if r.lost != 0 || r.dups != 0 || len(r.ids) != 1 || r.ids[0] != cl.subID {
		return errors.New("demo: the client noticed the failover")
	}
	return nil
}

type demoClient struct {
	c     *websocket.Conn
	subID string
	done  chan struct{}

	onHead func(sub string, block uint64)

	mu    sync.Mutex
	cond  chan struct{} // closed and replaced on every head
	nums  []uint64
	ids   map[string]bool
	order []string
	err   error
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12] + "…"
	}
	return id
}

func newDemoClient(ctx context.Context, url string, onHead func(sub string, block uint64)) (*demoClient, error) {
	c, _, err := websocket.Dial(ctx, url, nil)
	if err != nil {
		return nil, fmt.Errorf("demo client: %w", err)
	}
	if err := c.Write(ctx, websocket.MessageText, []byte(`{"jsonrpc":"2.0","id":1,"method":"eth_subscribe","params":["newHeads"]}`)); err != nil {
		return nil, err
	}
	_, data, err := c.Read(ctx)
	if err != nil {
		return nil, err
	}
	var reply struct {
		Result string `json:"result"`
	}
	if err := json.Unmarshal(data, &reply); err != nil || reply.Result == "" {
		return nil, fmt.Errorf("demo client: subscribe failed: %s", data)
	}
	d := &demoClient{c: c, subID: reply.Result, done: make(chan struct{}), cond: make(chan struct{}), ids: map[string]bool{}, onHead: onHead}
	go d.read()
	return d, nil
}

func (d *demoClient) read() {
	defer close(d.done)
	for {
		_, data, err := d.c.Read(context.Background())
		if err != nil {
			return
		}
		var n struct {
			Params struct {
				Subscription string `json:"subscription"`
				Result       struct {
					Number string `json:"number"`
				} `json:"result"`
			} `json:"params"`
		}
		if json.Unmarshal(data, &n) != nil {
			continue
		}
		num, err := strconv.ParseUint(strings.TrimPrefix(n.Params.Result.Number, "0x"), 16, 64)
		if err == nil {
			d.onHead(n.Params.Subscription, num)
		}
		d.mu.Lock()
		if err != nil {
			d.err = fmt.Errorf("unexpected message %s", data)
		} else {
			d.nums = append(d.nums, num)
		}
		if id := n.Params.Subscription; !d.ids[id] {
			d.ids[id] = true
			d.order = append(d.order, id)
		}
		close(d.cond)
		d.cond = make(chan struct{})
		d.mu.Unlock()
	}
}

// waitHeads waits for n more heads.
func (d *demoClient) waitHeads(ctx context.Context, n int, timeout time.Duration) error {
	d.mu.Lock()
	target := len(d.nums) + n
	d.mu.Unlock()
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		d.mu.Lock()
		got, ch := len(d.nums), d.cond
		d.mu.Unlock()
		if got >= target {
			return nil
		}
		select {
		case <-ch:
		case <-t.C:
			return fmt.Errorf("demo: only %d of %d heads arrived", got-(target-n), n)
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

type demoResult struct {
	count, lost, dups int
	first, last       uint64
	ids               []string
}

func (d *demoClient) result() demoResult {
	d.mu.Lock()
	defer d.mu.Unlock()
	r := demoResult{count: len(d.nums), ids: d.order}
	seen := map[uint64]bool{}
	for i, n := range d.nums {
		if i == 0 || n < r.first {
			r.first = n
		}
		r.last = max(r.last, n)
		if seen[n] {
			r.dups++
		}
		seen[n] = true
	}
	if r.count > 0 {
		r.lost = int(r.last-r.first+1) - len(seen)
	}
	return r
}

func (d *demoClient) close() {
	_ = d.c.Close(websocket.StatusNormalClosure, "demo done")
	<-d.done
}
