package proxy

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/steadfast-go/steadfast/examples/proxy/jsonrpc"
)

// DefaultAllowMethods is the allow list used when Config.AllowMethods is
// nil: methods that only read chain state, eth_sendRawTransaction (a
// signed transaction: the node holds no key for it), and the subscription
// calls. Everything else (admin_*, debug_*, personal_*, miner_*, txpool_*,
// eth_sendTransaction, eth_sign, filters, which live on one node and break
// across failover) is refused unless listed.
var DefaultAllowMethods = []string{
	"eth_blockNumber", "eth_chainId", "eth_call", "eth_estimateGas", "eth_gasPrice", "eth_feeHistory",
	"eth_maxPriorityFeePerGas", "eth_syncing", "eth_blobBaseFee", "eth_createAccessList", "eth_simulateV1",
	"eth_getBalance", "eth_getCode", "eth_getStorageAt", "eth_getTransactionCount", "eth_getProof",
	"eth_getBlockByNumber", "eth_getBlockByHash", "eth_getBlockReceipts", "eth_getLogs",
	"eth_getHeaderByNumber", "eth_getHeaderByHash",
	"eth_getTransactionByHash", "eth_getTransactionReceipt",
	"eth_getTransactionByBlockHashAndIndex", "eth_getTransactionByBlockNumberAndIndex",
	"eth_getBlockTransactionCountByHash", "eth_getBlockTransactionCountByNumber",
	"eth_getUncleByBlockHashAndIndex", "eth_getUncleByBlockNumberAndIndex",
	"eth_getUncleCountByBlockHash", "eth_getUncleCountByBlockNumber",
	"net_version", "net_listening", "net_peerCount", "web3_clientVersion", "web3_sha3",
	"eth_sendRawTransaction", "eth_subscribe", "eth_unsubscribe",
}

// allowList answers whether a method may be forwarded. A nil *allowList
// allows everything ("*").
type allowList map[string]bool

// newAllowList builds the list from Config.AllowMethods: nil means the
// default, "*" anywhere means everything, and "default" expands to
// DefaultAllowMethods (so "default,debug_traceTransaction" extends it).
func newAllowList(methods []string) allowList {
	if methods == nil {
		methods = []string{"default"}
	}
	a := allowList{}
	for _, m := range methods {
		switch m = strings.TrimSpace(m); m {
		case "*":
			return nil
		case "default":
			for _, d := range DefaultAllowMethods {
				a[d] = true
			}
		case "":
		default:
			a[m] = true
		}
	}
	return a
}

func (a allowList) allows(method string) bool { return a == nil || a[method] }

// Reasons for denied_requests_total.
const (
	denyMethod    = "method"
	denyRateLimit = "rate_limit"
	denyAuth      = "auth"
	denyLogsRange = "logs_range"
	denyTooLarge  = "too_large"
)

// admit checks one well-formed request against the allow list and the
// eth_getLogs range limit. It returns the JSON-RPC error to answer
// instead of forwarding, or nil.
func (p *Proxy) admit(m *jsonrpc.Message) *jsonrpc.Error {
	if !p.allow.allows(m.Method) {
		p.m.denied.WithLabelValues(denyMethod).Inc()
		return &jsonrpc.Error{Code: jsonrpc.CodeMethodNotFound,
			Message: "method " + strconv.Quote(m.Method) + " is not allowed by this proxy"}
	}
	if m.Method == "eth_getLogs" && p.cfg.MaxLogsRange > 0 {
		if n, ok := p.logsRange(m.Params); ok && n > uint64(p.cfg.MaxLogsRange) {
			p.m.denied.WithLabelValues(denyLogsRange).Inc()
			return &jsonrpc.Error{Code: jsonrpc.CodeLimitExceeded, Message: "eth_getLogs block range of " +
				strconv.FormatUint(n, 10) + " blocks is over this proxy's limit of " + strconv.FormatInt(p.cfg.MaxLogsRange, 10)}
		}
	}
	return nil
}

// logsRange returns how many blocks an eth_getLogs filter spans, with
// tags resolved against the highest head the proxy has seen. ok is false
// when it cannot tell (a blockHash filter, or params the node will refuse
// anyway).
func (p *Proxy) logsRange(params json.RawMessage) (uint64, bool) {
	var f []struct {
		From      *string `json:"fromBlock"`
		To        *string `json:"toBlock"`
		BlockHash *string `json:"blockHash"`
	}
	if json.Unmarshal(params, &f) != nil || len(f) != 1 || f[0].BlockHash != nil {
		return 0, false
	}
	from, ok1 := p.resolveBlock(f[0].From)
	to, ok2 := p.resolveBlock(f[0].To)
	if !ok1 || !ok2 || to < from {
		return 0, false
	}
	return to - from + 1, true
}

func (p *Proxy) resolveBlock(tag *string) (uint64, bool) {
	if tag == nil {
		return p.head.Load(), true
	}
	switch *tag {
	case "latest", "pending", "safe", "finalized":
		return p.head.Load(), true
	case "earliest":
		return 0, true
	}
	return parseHex(*tag)
}

// parseHex parses a 0x-prefixed hex quantity.
func parseHex(s string) (uint64, bool) {
	if len(s) < 3 || s[0] != '0' || (s[1] != 'x' && s[1] != 'X') || len(s) > 18 {
		return 0, false
	}
	n, err := strconv.ParseUint(s[2:], 16, 64)
	return n, err == nil
}

// authorize checks the bearer token when the proxy has any. It returns the
// client key for rate limiting (the token's digest, else the remote IP)
// and whether the request may proceed.
func (p *Proxy) authorize(r *http.Request) (string, bool) {
	if len(p.tokens) == 0 {
		host, _, err := net.SplitHostPort(r.RemoteAddr)
		if err != nil {
			host = r.RemoteAddr
		}
		return host, true
	}
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		return "", false
	}
	sum := sha256.Sum256([]byte(strings.TrimSpace(tok)))
	found := 0
	for _, t := range p.tokens { // every token compared: no timing hint of which matched
		found |= subtle.ConstantTimeCompare(sum[:], t[:])
	}
	return string(sum[:8]), found == 1
}

// limiter is a token bucket per client: rate tokens a second, up to burst.
// Buckets of clients idle long enough to be full again are dropped when
// the map grows, so memory is bounded by the clients active in the last
// few seconds.
type limiter struct {
	rate  float64
	burst float64

	mu      sync.Mutex
	buckets map[string]*bucket
	swept   time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
}

func newLimiter(rate float64, burst int) *limiter {
	if rate <= 0 {
		return nil
	}
	if burst <= 0 {
		burst = max(1, int(rate))
	}
	return &limiter{rate: rate, burst: float64(burst), buckets: map[string]*bucket{}}
}

// take removes n tokens from key's bucket if it has them. A nil limiter
// allows everything.
func (l *limiter) take(key string, n int, now time.Time) bool {
	if l == nil {
		return true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[key]
	if b == nil {
		l.sweep(now)
		b = &bucket{tokens: l.burst, last: now}
		l.buckets[key] = b
	}
	b.tokens = min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	b.last = now
	if b.tokens < float64(n) {
		return false
	}
	b.tokens -= float64(n)
	return true
}

// sweep drops the buckets that would be full by now. l.mu must be held.
func (l *limiter) sweep(now time.Time) {
	if len(l.buckets) < 1024 || now.Sub(l.swept) < time.Second {
		return
	}
	l.swept = now
	full := time.Duration(l.burst / l.rate * float64(time.Second))
	for k, b := range l.buckets {
		if now.Sub(b.last) > full {
			delete(l.buckets, k)
		}
	}
}
