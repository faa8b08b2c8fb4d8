// Package proxy is the Ethereum JSON-RPC proxy of the steadfast proxy
// example: HTTP and WebSocket in front of a primary execution node and its
// backups, with health checks and failback (package failover), and
// WebSocket sessions whose subscriptions survive upstream switches with the
// client's subscription ids unchanged (package replayqueue).
//
// It is a package, not just a main, so that the example's tests and the
// benchmarks in bench/proxy can run it in-process on loopback.
package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/steadfast-go/steadfast/examples/proxy/jsonrpc"
	"github.com/steadfast-go/steadfast/failover"
	"github.com/steadfast-go/steadfast/internal/neterr"
)

// Defaults for Config fields left zero.
const (
	DefaultCheckInterval  = 500 * time.Millisecond
	DefaultCheckTimeout   = 400 * time.Millisecond
	DefaultMaxLag         = 10
	DefaultRequestTimeout = 10 * time.Second
	DefaultSwitchTimeout  = 5 * time.Second
	DefaultQueueSize      = 1000
	DefaultQueueBytes     = 8 << 20
	// DefaultClientBufferBytes bounds what waits to be written to one
	// WebSocket client; a client further behind is disconnected.
	DefaultClientBufferBytes = 4 << 20
	DefaultMaxBodyBytes      = 8 << 20
	// DefaultMaxReplyBytes bounds an upstream's HTTP reply (large
	// eth_getLogs or trace results); a larger one is answered with an
	// internal error, never forwarded truncated.
	DefaultMaxReplyBytes = 64 << 20
	DefaultGapFill       = 64
	DefaultMaxInFlight   = 10000
	DefaultMaxSubs       = 1000
	DefaultMaxBatch      = 1000
	DefaultMaxLogsRange  = 10000
	DefaultCacheBytes    = 64 << 20
	DefaultReuseLatest   = time.Second
)

// Upstream names one execution node: HTTP and WebSocket JSON-RPC URLs
// (http:// or https://, ws:// or wss://). WSURL may be empty for an
// HTTP-only node: WebSocket clients are then served by the others. A
// plain value.
type Upstream struct {
	Name    string
	HTTPURL string
	WSURL   string
}

// Config configures a Proxy. Zero fields take the Default values. It is a
// plain value, copied by New.
type Config struct {
	// Upstreams in priority order, primary first. Required.
	Upstreams []Upstream
	// Health checks: eth_blockNumber every CheckInterval, each bounded by
	// CheckTimeout; an upstream more than MaxLag blocks behind the best
	// head is unhealthy (MaxLag < 0 disables lag checking). Rise and Fall
	// are the failover thresholds (0: the failover package defaults).
	CheckInterval time.Duration
	CheckTimeout  time.Duration
	MaxLag        int64
	Rise, Fall    int
	// RequestTimeout bounds one HTTP request to an upstream.
	RequestTimeout time.Duration
	// SwitchTimeout bounds how long a WebSocket session waits for an
	// upstream during a switch; queued requests then get CodeNoUpstream.
	SwitchTimeout time.Duration
	// QueueSize and QueueBytes bound each WebSocket session's switch queue.
	QueueSize  int
	QueueBytes int
	// ClientBufferBytes bounds the replies and notifications waiting to
	// be written to one WebSocket client (0: DefaultClientBufferBytes).
	// A client that falls further behind is disconnected with close code
	// 1013 (try again later) and its messages are counted as dropped
	// (reason slow_client), so one slow reader never holds up the others.
	ClientBufferBytes int
	// MaxInFlight bounds the requests one WebSocket client may have
	// awaiting a reply (sent upstream or queued); more are answered at once
	// with jsonrpc.CodeTooManyInFlight, so a client that never waits cannot
	// grow the proxy's memory without bound.
	MaxInFlight int
	// MaxSubscriptions bounds one WebSocket client's subscriptions; an
	// eth_subscribe over it is answered with
	// jsonrpc.CodeTooManySubscriptions (subscribes still awaiting their
	// reply are not counted, so a burst can exceed it by at most
	// MaxInFlight).
	MaxSubscriptions int
	// GapFill is how many missed newHeads a session fetches from the new
	// upstream after a switch (0: DefaultGapFill; negative: none).
	GapFill int
	// AllowMethods lists the methods clients may call; nil means
	// DefaultAllowMethods, "default" in the list stands for it, and "*"
	// allows everything. Others get CodeMethodNotFound.
	AllowMethods []string
	// RateLimit is requests per second per client (by bearer token when
	// AuthTokens is set, else by remote IP), with bursts of RateBurst
	// (0: RateLimit); 0 means unlimited. A batch counts each element.
	RateLimit float64
	RateBurst int
	// AuthTokens, when not empty, makes every request (HTTP and the
	// WebSocket upgrade) need "Authorization: Bearer <one of them>".
	AuthTokens []string
	// MaxBodyBytes bounds a request body (DefaultMaxBodyBytes), MaxBatch
	// the elements of a batch (DefaultMaxBatch), MaxLogsRange the blocks
	// one eth_getLogs may span (DefaultMaxLogsRange; negative: no limit).
	MaxBodyBytes int64
	MaxBatch     int
	MaxLogsRange int64
	// CacheBytes bounds the cache of immutable answers (DefaultCacheBytes;
	// negative: no cache). NoCoalesce turns off sharing one upstream call
	// among identical in-flight reads.
	CacheBytes int64
	NoCoalesce bool
	// ReuseLatest is how long an answer to eth_blockNumber or the "latest"
	// block may be given again while no new head has arrived
	// (DefaultReuseLatest; negative: never). The proxy learns of new heads
	// from a newHeads subscription of its own on the selected upstream,
	// made at the first such read; an upstream without a WebSocket URL
	// gets no reuse. See follow.go for the rules.
	ReuseLatest time.Duration
	// Logger receives structured logs (slog.Default() when nil).
	Logger *slog.Logger
	// OnSwitch, if set, is called (from one goroutine, in order) whenever
	// the selected upstream changes; from is "" for the first selection.
	OnSwitch func(from, to, reason string, at time.Time)
}

func (c *Config) setDefaults() error {
	if len(c.Upstreams) == 0 {
		return errors.New("proxy: no upstreams configured")
	}
	seen := map[string]bool{}
	for i, u := range c.Upstreams {
		if u.Name == "" {
			return fmt.Errorf("proxy: upstream %d has no name", i+1)
		}
		if seen[u.Name] {
			return fmt.Errorf("proxy: upstream name %q used twice", u.Name)
		}
		seen[u.Name] = true
		if err := checkURL(u.HTTPURL, "http", "https"); err != nil {
			return fmt.Errorf("proxy: upstream %q: HTTP URL: %w", u.Name, err)
		}
		if u.WSURL == "" {
			continue // HTTP only
		}
		if err := checkURL(u.WSURL, "ws", "wss"); err != nil {
			return fmt.Errorf("proxy: upstream %q: WebSocket URL: %w", u.Name, err)
		}
	}
	def := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	def(&c.CheckInterval, DefaultCheckInterval)
	def(&c.CheckTimeout, DefaultCheckTimeout)
	def(&c.RequestTimeout, DefaultRequestTimeout)
	def(&c.SwitchTimeout, DefaultSwitchTimeout)
	if c.CheckInterval < 0 || c.CheckTimeout < 0 || c.RequestTimeout < 0 || c.SwitchTimeout < 0 {
		return errors.New("proxy: durations must be positive")
	}
	if c.CheckTimeout > c.CheckInterval {
		return fmt.Errorf("proxy: check timeout %v is longer than the check interval %v", c.CheckTimeout, c.CheckInterval)
	}
	if c.MaxLag == 0 {
		c.MaxLag = DefaultMaxLag
	}
	if c.QueueSize == 0 {
		c.QueueSize = DefaultQueueSize
	}
	if c.QueueBytes == 0 {
		c.QueueBytes = DefaultQueueBytes
	}
	if c.ClientBufferBytes == 0 {
		c.ClientBufferBytes = DefaultClientBufferBytes
	}
	if c.MaxInFlight == 0 {
		c.MaxInFlight = DefaultMaxInFlight
	}
	if c.MaxSubscriptions == 0 {
		c.MaxSubscriptions = DefaultMaxSubs
	}
	if c.QueueSize < 0 || c.QueueBytes < 0 || c.ClientBufferBytes < 0 || c.Rise < 0 || c.Fall < 0 || c.MaxInFlight < 0 || c.MaxSubscriptions < 0 {
		return errors.New("proxy: queue sizes and thresholds must not be negative")
	}
	if c.GapFill == 0 {
		c.GapFill = DefaultGapFill
	}
	return c.setLimitDefaults()
}

func (c *Config) setLimitDefaults() error {
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = DefaultMaxBodyBytes
	}
	if c.MaxBatch == 0 {
		c.MaxBatch = DefaultMaxBatch
	}
	if c.MaxLogsRange == 0 {
		c.MaxLogsRange = DefaultMaxLogsRange
	}
	if c.CacheBytes == 0 {
		c.CacheBytes = DefaultCacheBytes
	}
	if c.ReuseLatest == 0 {
		c.ReuseLatest = DefaultReuseLatest
	}
	if c.MaxBodyBytes < 0 || c.MaxBatch < 0 || c.RateLimit < 0 || c.RateBurst < 0 {
		return errors.New("proxy: limits must not be negative")
	}
	for _, t := range c.AuthTokens {
		if t == "" {
			return errors.New("proxy: empty auth token")
		}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

func checkURL(s string, schemes ...string) error {
	if s == "" {
		return errors.New("missing")
	}
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok || rest == "" {
		return fmt.Errorf("%q is not a URL (want %s://host:port)", s, schemes[0])
	}
	for _, want := range schemes {
		if scheme == want {
			return nil
		}
	}
	return fmt.Errorf("%q: scheme must be %s", s, strings.Join(schemes, " or "))
}

// upstream is one target of the failover group.
type upstream struct {
	Upstream
	index int
	epoch atomic.Pointer[epoch] // see forward.go
	h1    *h1Client             // reads over plain http (h1.go); nil: net/http
}

// Proxy is the JSON-RPC proxy. It is safe for concurrent use; there is no
// usable zero value (use New) and it must not be copied. Close stops its
// health checks and closes every WebSocket session.
//
// Ordering: on one WebSocket connection, requests reach the upstream in the
// order the client sent them, including across a switch (queued ones after
// the replayed subscriptions, before newer ones); a request re-sent because
// its upstream died goes after the messages queued meanwhile. Replies and
// notifications reach the client in the order the proxy processed them.
// HTTP requests are independent.
type Proxy struct {
	cfg    Config
	log    *slog.Logger
	group  *failover.Group[*upstream]
	ups    []*upstream
	client *http.Client // health checks and probes
	// transport carries proxied HTTP requests: RoundTrip directly, without
	// http.Client's per-request header copying and redirect handling (a
	// proxy passes a 3xx through rather than following it).
	transport *http.Transport
	// writeTransport carries requests that are not safe to repeat, each on
	// a connection of its own (see transportFor).
	writeTransport *http.Transport
	m              *metrics

	allow  allowList
	tokens [][sha256.Size]byte
	limit  *limiter
	cache  *resultCache
	flight *singleflight.Group // nil with NoCoalesce
	// head is the highest block number the proxy has seen (checks and
	// relayed answers); finalized the highest finalized block an upstream
	// reported. Both only grow.
	head, finalized atomic.Uint64
	follow          headFollower

	ctx    context.Context // cancelled by Close; sessions derive from it
	cancel context.CancelFunc
	wg     sync.WaitGroup // sessions and the change watcher

	hub *hub // the shared upstream subscriptions

	mu       sync.Mutex
	sessions map[*session]struct{}
	closed   bool
}

// New validates cfg, starts the health checks and returns the proxy. It
// does not listen: serve Handler() on a listener of your choice.
func New(cfg Config) (*Proxy, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	p := &Proxy{cfg: cfg, log: cfg.Logger, sessions: make(map[*session]struct{}),
		allow: newAllowList(cfg.AllowMethods), limit: newLimiter(cfg.RateLimit, cfg.RateBurst),
		cache: newResultCache(cfg.CacheBytes)}
	p.hub = newHub(p)
	for _, t := range cfg.AuthTokens {
		p.tokens = append(p.tokens, sha256.Sum256([]byte(t)))
	}
	if !cfg.NoCoalesce {
		p.flight = new(singleflight.Group)
	}
	p.transport = newTransport(cfg.RequestTimeout)
	p.writeTransport = newTransport(cfg.RequestTimeout)
	p.writeTransport.DisableKeepAlives = true
	p.client = &http.Client{Transport: p.transport}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	for i, u := range cfg.Upstreams {
		up := &upstream{Upstream: u, index: i, h1: newH1Client(u.HTTPURL, cfg.RequestTimeout)}
		up.epoch.Store(p.newEpoch())
		p.ups = append(p.ups, up)
	}
	opts := []failover.Option{failover.WithInterval(cfg.CheckInterval), failover.WithTimeout(cfg.CheckTimeout)}
	if cfg.MaxLag > 0 {
		opts = append(opts, failover.WithMaxLag(uint64(cfg.MaxLag)))
	}
	if cfg.Rise > 0 {
		opts = append(opts, failover.WithRise(cfg.Rise))
	}
	if cfg.Fall > 0 {
		opts = append(opts, failover.WithFall(cfg.Fall))
	}
	g, err := failover.New(p.ups, p.check, opts...)
	if err != nil {
		return nil, fmt.Errorf("proxy: %w", err)
	}
	p.group = g
	names := make([]string, len(p.ups))
	for i, u := range p.ups {
		names[i] = u.Name
	}
	p.m = newMetrics(g, p.sessionStats, names, p.cache.bytes, p.hub.count, p.head.Load)
	changes, stop := g.Subscribe()
	p.wg.Go(func() {
		defer stop()
		p.watchChanges(changes)
	})
	if p.cache != nil {
		p.wg.Go(p.watchFinalized)
	}
	return p, nil
}

// newTransport is the upstream HTTP transport: many keep-alive connections
// per host (a proxy is one client standing for many), no compression
// (loopback and LAN: gzip costs more CPU than it saves), HTTP/1.1 only,
// and the request timeout as ResponseHeaderTimeout, so no request needs a
// timer of its own.
func newTransport(timeout time.Duration) *http.Transport {
	return &http.Transport{
		Proxy:                 nil,
		DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:          2048,
		MaxIdleConnsPerHost:   512,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: timeout,
		DisableCompression:    true,
		ForceAttemptHTTP2:     false,
		WriteBufferSize:       16 << 10,
		ReadBufferSize:        16 << 10,
	}
}

// watchFinalized asks the selected upstream for its finalized block every
// few check intervals: answers about blocks up to it can be cached.
func (p *Proxy) watchFinalized() {
	t := time.NewTicker(4 * p.cfg.CheckInterval)
	defer t.Stop()
	for {
		u, _ := p.group.Pick()
		ctx, cancel := context.WithTimeout(p.ctx, p.cfg.CheckTimeout)
		raw, err := p.call(ctx, u, "eth_getBlockByNumber", []any{"finalized", false})
		cancel()
		if err == nil {
			if n, ok := blockNumberOf(raw); ok {
				raiseTo(&p.finalized, n)
			}
		}
		select {
		case <-p.ctx.Done():
			return
		case <-t.C:
		}
	}
}

// check is the failover health check: eth_blockNumber over HTTP.
func (p *Proxy) check(ctx context.Context, u *upstream) (failover.Health, error) {
	head, err := p.blockNumber(ctx, u)
	if err == nil {
		raiseTo(&p.head, head)
	}
	return failover.Health{Head: head}, err
}

func (p *Proxy) blockNumber(ctx context.Context, u *upstream) (uint64, error) {
	res, err := p.call(ctx, u, "eth_blockNumber", nil)
	if err != nil {
		return 0, err
	}
	return parseHexQuantity(res)
}

// call makes one JSON-RPC call over HTTP and returns its result.
func (p *Proxy) call(ctx context.Context, u *upstream, method string, params []any) (json.RawMessage, error) {
	if params == nil {
		params = []any{}
	}
	body, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "id": 1, "method": method, "params": params})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.HTTPURL, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := p.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, DefaultMaxBodyBytes))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: HTTP %s", method, resp.Status)
	}
	var m jsonrpc.Message
	if err := json.Unmarshal(data, &m); err != nil {
		return nil, fmt.Errorf("%s: bad reply: %w", method, err)
	}
	if m.Error != nil {
		return nil, fmt.Errorf("%s: %w", method, m.Error)
	}
	return m.Result, nil
}

func parseHexQuantity(raw json.RawMessage) (uint64, error) {
	var s string
	if err := json.Unmarshal(raw, &s); err != nil {
		return 0, fmt.Errorf("quantity %s: %w", raw, err)
	}
	if !strings.HasPrefix(s, "0x") {
		return 0, fmt.Errorf("quantity %q has no 0x prefix", s)
	}
	return strconv.ParseUint(s[2:], 16, 64)
}

// Probe asks every upstream for its chain id once, so a misconfigured
// proxy fails at start with a clear error instead of later. It returns an
// error listing every unreachable upstream when none answered, or when the
// upstreams that answered disagree on the chain id; unreachable backups
// are only logged.
func (p *Proxy) Probe(ctx context.Context) error {
	type res struct {
		id  uint64
		err error
	}
	out := make([]res, len(p.ups))
	var wg sync.WaitGroup
	for i, u := range p.ups {
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, max(p.cfg.CheckTimeout, 2*time.Second))
			defer cancel()
			raw, err := p.call(cctx, u, "eth_chainId", nil)
			if err == nil {
				out[i].id, err = parseHexQuantity(raw)
			}
			out[i].err = err
		})
	}
	wg.Wait()
	var errs []error
	chain := map[uint64][]string{}
	for i, r := range out {
		if r.err != nil {
			errs = append(errs, fmt.Errorf("upstream %q (%s) unreachable: %w", p.ups[i].Name, p.ups[i].HTTPURL, r.err))
			p.log.Warn("upstream unreachable at start", "upstream", p.ups[i].Name, "url", p.ups[i].HTTPURL, "err", r.err)
			continue
		}
		chain[r.id] = append(chain[r.id], p.ups[i].Name)
	}
	if len(errs) == len(p.ups) {
		return fmt.Errorf("proxy: no upstream reachable: %w", errors.Join(errs...))
	}
	if len(chain) > 1 {
		return fmt.Errorf("proxy: upstreams disagree on the chain id: %v", chain)
	}
	return nil
}

func (p *Proxy) watchChanges(changes <-chan failover.Change[*upstream]) {
	for c := range changes {
		p.m.switches.WithLabelValues(c.Reason.String()).Inc()
		p.follow.moved()
		from := "none"
		if c.FromIndex >= 0 {
			from = c.From.Name
			p.leave(c.From)
		}
		p.log.Info("upstream selection changed", "from", from, "to", c.To.Name, "reason", c.Reason.String())
		if p.cfg.OnSwitch != nil {
			if c.FromIndex < 0 {
				from = ""
			}
			p.cfg.OnSwitch(from, c.To.Name, c.Reason.String(), c.At)
		}
		p.mu.Lock()
		for s := range p.sessions {
			s.notifyChange()
		}
		p.mu.Unlock()
		if s := p.hub.running(); s != nil {
			s.notifyChange()
		}
	}
}

func (p *Proxy) sessionStats() (clients, subs, queued int) {
	p.mu.Lock()
	ss := make([]*session, 0, len(p.sessions))
	for s := range p.sessions {
		ss = append(ss, s)
	}
	p.mu.Unlock()
	for _, s := range ss {
		n, q := s.stats()
		subs += n
		queued += q
	}
	return len(ss), subs, queued
}

// hasWS reports whether any upstream takes WebSocket connections.
func (p *Proxy) hasWS() bool {
	for _, u := range p.ups {
		if u.WSURL != "" {
			return true
		}
	}
	return false
}

// Registry returns the proxy's own Prometheus registry (served at
// /metrics), to add collectors or to gather in tests.
func (p *Proxy) Registry() *prometheus.Registry { return p.m.reg }

// Current returns the name of the selected upstream and whether it is
// healthy.
func (p *Proxy) Current() (string, bool) {
	u, ok := p.group.Pick()
	return u.Name, ok
}

// Handler returns the proxy's HTTP handler: JSON-RPC over POST, WebSocket
// upgrades, GET /metrics and GET /healthz, all on one address.
func (p *Proxy) Handler() http.Handler {
	metricsH := promhttp.HandlerFor(p.m.reg, promhttp.HandlerOpts{})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case strings.EqualFold(r.Header.Get("Upgrade"), "websocket"):
			p.serveWS(w, r)
		case r.Method == http.MethodPost:
			p.serveHTTP(w, r)
		case r.Method == http.MethodGet && r.URL.Path == "/metrics":
			metricsH.ServeHTTP(w, r)
		case r.Method == http.MethodGet && r.URL.Path == "/healthz":
			name, ok := p.Current()
			if !ok {
				http.Error(w, "no healthy upstream", http.StatusServiceUnavailable)
				return
			}
			_, _ = io.WriteString(w, "ok: "+name+"\n")
		default:
			http.Error(w, "JSON-RPC: POST or WebSocket; GET /metrics, /healthz", http.StatusMethodNotAllowed)
		}
	})
}

// Close stops the health checks and closes every WebSocket session, then
// waits for the proxy's goroutines. It returns the failover group's Close
// error, if any.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	p.mu.Unlock()
	p.cancel()
	err := p.group.Close() // closes the change channel: watchChanges returns
	p.wg.Wait()
	p.client.CloseIdleConnections()
	for _, u := range p.ups {
		if u.h1 != nil {
			u.h1.closeIdle()
		}
	}
	return err
}

// reportFailure counts a failed request against upstream i. A refused dial
// proves that nothing listens there, so the upstream is demoted at once
// rather than after -fall failures.
func (p *Proxy) reportFailure(i int, err error) {
	if neterr.IsRefused(err) {
		err = failover.Down(err)
	}
	_ = p.group.ReportFailure(i, err)
}

// isConnError reports whether err means the upstream could not be reached
// or dropped the connection (as opposed to answering with an error): the
// library's one transport-failure rule, internal/neterr.
func isConnError(err error) bool { return neterr.IsTransport(err) }
