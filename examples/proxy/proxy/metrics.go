package proxy

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/steadfast-go/steadfast/failover"
)

// metrics are the proxy's Prometheus metrics, on a registry of its own so
// several proxies (tests, benchmarks) can live in one process.
type metrics struct {
	reg *prometheus.Registry

	requests      *prometheus.CounterVec // method, upstream, transport
	requestErrors *prometheus.CounterVec // code (errors the proxy made itself)
	retries       *prometheus.CounterVec // method
	switches      *prometheus.CounterVec // reason (failover group)
	wsSwitches    *prometheus.CounterVec // reason (per WebSocket session)
	queued        prometheus.Counter
	dropped       *prometheus.CounterVec // reason
	replayed      prometheus.Counter
	replayReplies *prometheus.CounterVec // outcome: ok, error
	dupHeads      prometheus.Counter
	gapHeads      prometheus.Counter
	denied        *prometheus.CounterVec // reason
	coalesced     prometheus.Counter
	cacheHits     prometheus.Counter
	reused        prometheus.Counter
	duration      *prometheus.HistogramVec // method, upstream (HTTP)
	durCache      []atomic.Pointer[prometheus.Observer]

	// reqCache holds the requests_total children already looked up, by
	// (method index, upstream index, transport), so the hot path does not
	// hash label values on every request. Filled lazily: series appear on
	// first use, as with WithLabelValues.
	reqCache []atomic.Pointer[prometheus.Counter]
	upNames  []string
}

// Transports for requests_total.
const (
	transportHTTP = iota
	transportWS
)

var transportNames = [...]string{transportHTTP: "http", transportWS: "ws"}

// request returns the requests_total counter for method on upstream up.
func (m *metrics) request(method string, up, transport int) prometheus.Counter {
	mi, ok := methodIndex[method]
	if !ok {
		mi = len(methodList) // "other"
	}
	slot := &m.reqCache[(mi*len(m.upNames)+up)*len(transportNames)+transport]
	if c := slot.Load(); c != nil {
		return *c
	}
	c := m.requests.WithLabelValues(methodLabel(method), m.upNames[up], transportNames[transport])
	slot.Store(&c)
	return c
}

// observe records the latency of an HTTP request that started at start.
func (m *metrics) observe(method string, up int, start time.Time) {
	d := time.Since(start).Seconds()
	mi, ok := methodIndex[method]
	if !ok {
		mi = len(methodList)
	}
	slot := &m.durCache[mi*len(m.upNames)+up]
	if o := slot.Load(); o != nil {
		(*o).Observe(d)
		return
	}
	o := m.duration.WithLabelValues(methodLabel(method), m.upNames[up])
	slot.Store(&o)
	o.Observe(d)
}

const ns = "steadfast_proxy"

func newMetrics(g *failover.Group[*upstream], sessions func() (clients, subs, queued int), upNames []string, cacheBytes func() int64, shared func() int, head func() uint64) *metrics {
	m := &metrics{
		reqCache: make([]atomic.Pointer[prometheus.Counter], (len(methodList)+1)*len(upNames)*len(transportNames)),
		durCache: make([]atomic.Pointer[prometheus.Observer], (len(methodList)+1)*len(upNames)),
		upNames:  upNames,
		reg:      prometheus.NewRegistry(),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "requests_total",
			Help: "JSON-RPC requests forwarded, by method, upstream and transport (http, ws)."},
			[]string{"method", "upstream", "transport"}),
		requestErrors: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "request_errors_total",
			Help: "JSON-RPC errors the proxy answered itself (no upstream, queue full, parse errors...), by JSON-RPC code."},
			[]string{"code"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "http_retries_total",
			Help: "HTTP requests retried on the next upstream after a connection error."},
			[]string{"method"}),
		switches: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "upstream_switches_total",
			Help: "Changes of the selected upstream, by reason (initial, current_unhealthy, better_available, manual)."},
			[]string{"reason"}),
		wsSwitches: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "ws_session_switches_total",
			Help: "WebSocket sessions moved to another upstream, by reason (current_unhealthy, better_available, upstream_lost)."},
			[]string{"reason"}),
		queued: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "queued_messages_total",
			Help: "Client messages queued while their session switched upstream."}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "dropped_messages_total",
			Help: "Messages that reached nobody because the client connection had failed, by reason. Refused requests are answered with JSON-RPC errors instead (request_errors_total)."},
			[]string{"reason"}),
		replayed: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "replayed_subscriptions_total",
			Help: "Subscriptions re-created on a new upstream."}),
		replayReplies: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "replay_replies_total",
			Help: "Replies to replayed subscribe requests, consumed by the proxy (never forwarded), by outcome."},
			[]string{"outcome"}),
		dupHeads: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "duplicate_heads_suppressed_total",
			Help: "newHeads notifications suppressed because the client already had that block hash."}),
		gapHeads: prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "gap_heads_filled_total",
			Help: "newHeads notifications the proxy fetched from the new upstream to fill a gap after a switch."}),
	}
	m.denied = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: ns, Name: "denied_requests_total",
		Help: "Requests refused by policy, by reason (method, rate_limit, auth, logs_range, too_large)."},
		[]string{"reason"})
	m.coalesced = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "coalesced_requests_total",
		Help: "HTTP reads answered by an identical upstream call already in flight."})
	m.cacheHits = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "cache_hits_total",
		Help: "HTTP reads answered from the cache of immutable results."})
	m.reused = prometheus.NewCounter(prometheus.CounterOpts{Namespace: ns, Name: "reused_answers_total",
		Help: "HTTP reads of eth_blockNumber or the latest block answered again from the current head's answer."})
	m.duration = prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: ns, Name: "request_duration_seconds",
		Help:    "Time to answer HTTP requests that reached an upstream, by method and upstream.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}, []string{"method", "upstream"})
	m.reg.MustRegister(m.requests, m.requestErrors, m.retries, m.switches, m.wsSwitches,
		m.queued, m.dropped, m.replayed, m.replayReplies, m.dupHeads, m.gapHeads,
		m.denied, m.coalesced, m.cacheHits, m.reused, m.duration, &statusCollector{g: g},
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Name: "cache_bytes",
			Help: "Bytes held by the cache of immutable results."}, func() float64 { return float64(cacheBytes()) }))
	gauge := func(name, help string, f func() float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Name: name, Help: help}, f)
	}
	m.reg.MustRegister(
		gauge("ws_clients", "Connected WebSocket clients.", func() float64 { c, _, _ := sessions(); return float64(c) }),
		gauge("subscriptions", "Active client subscriptions.", func() float64 { _, n, _ := sessions(); return float64(n) }),
		gauge("upstream_subscriptions", "Upstream subscriptions the proxy holds: one per distinct eth_subscribe, shared by every client that asked for it.",
			func() float64 { return float64(shared()) }),
		gauge("head_block", "The highest block number the proxy has seen: from health checks, relayed answers and the newHeads it follows.",
			func() float64 { return float64(head()) }),
		gauge("queued_messages", "Client messages waiting in switch queues now.", func() float64 { _, _, q := sessions(); return float64(q) }),
	)
	// Make the dropped and error series exist at 0 so dashboards and tests
	// see them before the first event.
	m.dropped.WithLabelValues(dropClientGone)
	m.dropped.WithLabelValues(dropSlowClient)
	for _, r := range []string{denyMethod, denyRateLimit, denyAuth, denyLogsRange, denyTooLarge} {
		m.denied.WithLabelValues(r)
	}
	return m
}

// dropClientGone is the reason for dropped_messages_total: a reply or
// notification for a client whose connection had already failed. Requests
// the proxy cannot serve (queue full, no upstream, upstream lost) are
// answered with JSON-RPC errors, counted in request_errors_total, and are
// not dropped.
// dropSlowClient: messages for a client that fell more than
// Config.ClientBufferBytes behind and was disconnected (close code 1013).
const (
	dropClientGone = "client_gone"
	dropSlowClient = "slow_client"
)

// statusCollector reports the failover group's view at scrape time.
type statusCollector struct{ g *failover.Group[*upstream] }

var (
	descHealthy = prometheus.NewDesc(ns+"_upstream_healthy", "1 if the upstream passes health checks.", []string{"upstream"}, nil)
	descLag     = prometheus.NewDesc(ns+"_upstream_lag_blocks", "Blocks the upstream is behind the reference head at its last check.", []string{"upstream"}, nil)
	descHead    = prometheus.NewDesc(ns+"_upstream_head", "Head block the upstream reported at its last successful check.", []string{"upstream"}, nil)
	descCurrent = prometheus.NewDesc(ns+"_upstream_current", "1 for the upstream new requests go to.", []string{"upstream"}, nil)
)

func (c *statusCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descHealthy
	ch <- descLag
	ch <- descHead
	ch <- descCurrent
}

func (c *statusCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.g.Status() {
		name := s.Target.Name
		ch <- prometheus.MustNewConstMetric(descHealthy, prometheus.GaugeValue, b2f(s.State == failover.Healthy), name)
		ch <- prometheus.MustNewConstMetric(descLag, prometheus.GaugeValue, float64(s.Lag), name)
		ch <- prometheus.MustNewConstMetric(descHead, prometheus.GaugeValue, float64(s.Head), name)
		ch <- prometheus.MustNewConstMetric(descCurrent, prometheus.GaugeValue, b2f(s.Selected), name)
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// methodList bounds the method label's cardinality: anything else is
// counted as "other".
var methodList = []string{
	"eth_blockNumber", "eth_chainId", "eth_call", "eth_estimateGas", "eth_gasPrice", "eth_feeHistory",
	"eth_maxPriorityFeePerGas", "eth_getBalance", "eth_getCode", "eth_getStorageAt", "eth_getTransactionCount",
	"eth_getBlockByNumber", "eth_getBlockByHash", "eth_getTransactionByHash", "eth_getTransactionReceipt",
	"eth_getLogs", "eth_getBlockReceipts", "eth_getProof", "eth_syncing", "eth_sendRawTransaction",
	"eth_subscribe", "eth_unsubscribe", "eth_getBlockTransactionCountByNumber", "eth_getUncleCountByBlockNumber",
	"eth_createAccessList", "eth_blobBaseFee", "net_version", "net_listening", "net_peerCount",
	"web3_clientVersion", "debug_traceTransaction", "debug_traceCall", "txpool_status",
}

var methodIndex = func() map[string]int {
	m := make(map[string]int, len(methodList))
	for i, name := range methodList {
		m[name] = i
	}
	return m
}()

func methodLabel(m string) string {
	if _, ok := methodIndex[m]; ok {
		return m
	}
	return "other"
}
