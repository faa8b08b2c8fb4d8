package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/steadfast-go/steadfast/examples/proxy/proxy"
)

// options are the parsed command line.
type options struct {
	listen      string
	readTimeout time.Duration // of one HTTP request from a client, headers and body
	demo        bool
	blockTime   time.Duration // -demo only
	logLevel    slog.Level
	cfg         proxy.Config
}

// upstreamFlags collects repeated -upstream NAME=HTTP_URL,WS_URL flags.
type upstreamFlags []proxy.Upstream

func (u *upstreamFlags) String() string {
	parts := make([]string, len(*u))
	for i, x := range *u {
		parts[i] = x.Name + "=" + x.HTTPURL + "," + x.WSURL
	}
	return strings.Join(parts, " ")
}

func (u *upstreamFlags) Set(v string) error {
	x, err := parseUpstream(v)
	if err != nil {
		return err
	}
	*u = append(*u, x)
	return nil
}

func parseUpstream(v string) (proxy.Upstream, error) {
	name, urls, ok := strings.Cut(v, "=")
	if !ok || name == "" {
		return proxy.Upstream{}, fmt.Errorf("%q: want NAME=HTTP_URL[,WS_URL]", v)
	}
	httpURL, wsURL, hasWS := strings.Cut(urls, ",")
	if httpURL == "" || (hasWS && wsURL == "") {
		return proxy.Upstream{}, fmt.Errorf("%q: want NAME=HTTP_URL[,WS_URL]", v)
	}
	return proxy.Upstream{Name: name, HTTPURL: strings.TrimSpace(httpURL), WSURL: strings.TrimSpace(wsURL)}, nil
}

// fileConfig is the -config file's JSON shape. Durations are Go duration
// strings ("500ms"). Flags given on the command line win over the file.
type fileConfig struct {
	Listen      string `json:"listen"`
	ReadTimeout string `json:"read_timeout"`
	Upstreams   []struct {
		Name string `json:"name"`
		HTTP string `json:"http"`
		WS   string `json:"ws"`
	} `json:"upstreams"`
	CheckInterval  string   `json:"check_interval"`
	CheckTimeout   string   `json:"check_timeout"`
	MaxLag         *int64   `json:"max_lag"`
	RequestTimeout string   `json:"request_timeout"`
	SwitchTimeout  string   `json:"switch_timeout"`
	QueueSize      int      `json:"queue_size"`
	ClientBuffer   int      `json:"client_buffer_bytes"`
	MaxInFlight    int      `json:"max_in_flight"`
	MaxSubs        int      `json:"max_subscriptions"`
	AllowMethods   []string `json:"allow_methods"`
	RateLimit      float64  `json:"rate_limit"`
	RateBurst      int      `json:"rate_burst"`
	AuthTokens     []string `json:"auth_tokens"`
	MaxBodyBytes   int64    `json:"max_body_bytes"`
	MaxBatch       int      `json:"max_batch"`
	MaxLogsRange   int64    `json:"max_logs_range"`
	CacheBytes     *int64   `json:"cache_bytes"`
	Coalesce       *bool    `json:"coalesce"`
	ReuseLatest    string   `json:"reuse_latest"`
}

const usageText = `Usage: proxy [flags]

An Ethereum JSON-RPC proxy (HTTP and WebSocket on one address) with failover
and failback between execution nodes, whose WebSocket subscriptions survive
upstream switches with the client's subscription ids unchanged.

Try it without any node:  go run ./examples/proxy -demo

Flags:
`

// parseArgs parses the command line. Errors name the offending flag.
func parseArgs(args []string, stderr io.Writer) (options, error) {
	var o options
	var ups upstreamFlags
	var configPath, level string
	fs := flag.NewFlagSet("proxy", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, usageText)
		fs.PrintDefaults()
	}
	fs.StringVar(&o.listen, "listen", "127.0.0.1:8545", "address for JSON-RPC over HTTP and WebSocket, and GET /metrics")
	fs.Var(&ups, "upstream", "upstream `NAME=HTTP_URL[,WS_URL]`; repeat it, primary first (no WS_URL: HTTP only)")
	fs.StringVar(&configPath, "config", "", "JSON config `file` (upstreams and settings; flags override it)")
	fs.DurationVar(&o.readTimeout, "read-timeout", defaultReadTimeout, "longest a client may take to send one HTTP request, headers and body (a slower one is cut off)")
	fs.DurationVar(&o.cfg.CheckInterval, "check-interval", proxy.DefaultCheckInterval, "time between health checks (eth_blockNumber)")
	fs.DurationVar(&o.cfg.CheckTimeout, "check-timeout", proxy.DefaultCheckTimeout, "timeout of one health check")
	fs.Int64Var(&o.cfg.MaxLag, "max-lag", proxy.DefaultMaxLag, "blocks behind the best head before an upstream counts as unhealthy (-1: off)")
	fs.DurationVar(&o.cfg.RequestTimeout, "request-timeout", proxy.DefaultRequestTimeout, "timeout of one HTTP request to an upstream")
	fs.DurationVar(&o.cfg.SwitchTimeout, "switch-timeout", proxy.DefaultSwitchTimeout, "how long WebSocket requests wait for an upstream during a switch")
	fs.IntVar(&o.cfg.QueueSize, "queue-size", proxy.DefaultQueueSize, "messages each WebSocket session may queue during a switch")
	fs.IntVar(&o.cfg.ClientBufferBytes, "client-buffer-bytes", proxy.DefaultClientBufferBytes, "bytes of replies and notifications that may wait for one WebSocket client; a client further behind is disconnected")
	fs.IntVar(&o.cfg.MaxInFlight, "max-in-flight", proxy.DefaultMaxInFlight, "requests each WebSocket client may have awaiting a reply; more get a JSON-RPC error")
	fs.IntVar(&o.cfg.MaxSubscriptions, "max-subscriptions", proxy.DefaultMaxSubs, "subscriptions each WebSocket client may hold; more get a JSON-RPC error")
	var allow, tokenFile string
	var noCoalesce bool
	fs.StringVar(&allow, "allow-methods", "default", "comma-separated methods clients may call; \"default\" is the read methods, eth_sendRawTransaction and eth_(un)subscribe; \"*\" allows all")
	fs.Float64Var(&o.cfg.RateLimit, "rate-limit", 0, "requests per second per client (bearer token, else IP); 0: unlimited")
	fs.IntVar(&o.cfg.RateBurst, "rate-burst", 0, "burst above -rate-limit (0: one second's worth)")
	fs.StringVar(&tokenFile, "auth-token-file", "", "`file` of bearer tokens, one per line; when set, every request needs Authorization: Bearer TOKEN")
	fs.Int64Var(&o.cfg.MaxBodyBytes, "max-body-bytes", proxy.DefaultMaxBodyBytes, "largest request body (HTTP 413 above)")
	fs.IntVar(&o.cfg.MaxBatch, "max-batch", proxy.DefaultMaxBatch, "most requests in one batch (HTTP 413 above)")
	fs.Int64Var(&o.cfg.MaxLogsRange, "max-logs-range", proxy.DefaultMaxLogsRange, "most blocks one eth_getLogs may span (-1: no limit)")
	fs.Int64Var(&o.cfg.CacheBytes, "cache-bytes", proxy.DefaultCacheBytes, "bytes of immutable answers (by block hash or finalized number) to cache; 0: no cache")
	fs.BoolVar(&noCoalesce, "no-coalesce", false, "send every read upstream, even when an identical one is in flight")
	fs.DurationVar(&o.cfg.ReuseLatest, "reuse-latest", proxy.DefaultReuseLatest, "longest an eth_blockNumber or latest-block answer is reused while no new head has arrived (followed over WebSocket); 0: never")
	fs.StringVar(&level, "log-level", "info", "log level: debug, info, warn or error")
	fs.BoolVar(&o.demo, "demo", false, "run a self-contained demo: two fake nodes, the proxy, a client; kill and restore the primary")
	fs.DurationVar(&o.blockTime, "demo-block-time", time.Second, "block interval of the demo's fake chain")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected argument %q (flags start with -)", fs.Arg(0))
	}
	if err := o.logLevel.UnmarshalText([]byte(level)); err != nil {
		return o, fmt.Errorf("-log-level: %w", err)
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if set["allow-methods"] || allow != "default" {
		o.cfg.AllowMethods = strings.Split(allow, ",")
	}
	o.cfg.NoCoalesce = noCoalesce
	if tokenFile != "" {
		toks, err := readTokens(tokenFile)
		if err != nil {
			return o, err
		}
		o.cfg.AuthTokens = toks
	}
	if configPath != "" {
		if err := applyFile(&o, configPath, set); err != nil {
			return o, err
		}
	}
	if len(ups) > 0 {
		o.cfg.Upstreams = ups
	}
	if o.demo {
		if len(ups) > 0 || configPath != "" {
			return o, errors.New("-demo starts its own fake nodes: drop -upstream and -config")
		}
		if o.blockTime <= 0 {
			return o, errors.New("-demo-block-time must be positive")
		}
		return o, nil
	}
	if len(o.cfg.Upstreams) == 0 {
		return o, errors.New("no upstreams: give -upstream NAME=HTTP_URL,WS_URL (primary first) or -config FILE, or try -demo")
	}
	if o.readTimeout <= 0 {
		return o, errors.New("-read-timeout must be positive")
	}
	if o.cfg.CheckInterval <= 0 || o.cfg.CheckTimeout <= 0 {
		return o, errors.New("-check-interval and -check-timeout must be positive")
	}
	if o.cfg.CheckTimeout > o.cfg.CheckInterval {
		return o, fmt.Errorf("-check-timeout %v must not exceed -check-interval %v", o.cfg.CheckTimeout, o.cfg.CheckInterval)
	}
	if o.cfg.MaxLag == 0 || o.cfg.MaxLag < -1 {
		return o, errors.New("-max-lag must be a positive number of blocks, or -1 to disable lag checks")
	}
	if o.cfg.QueueSize <= 0 {
		return o, errors.New("-queue-size must be positive")
	}
	if o.cfg.ClientBufferBytes <= 0 {
		return o, errors.New("-client-buffer-bytes must be positive")
	}
	if o.cfg.MaxInFlight <= 0 {
		return o, errors.New("-max-in-flight must be positive")
	}
	if o.cfg.MaxSubscriptions <= 0 {
		return o, errors.New("-max-subscriptions must be positive")
	}
	return o, checkLimits(&o.cfg)
}

func checkLimits(c *proxy.Config) error {
	switch {
	case c.MaxBodyBytes <= 0:
		return errors.New("-max-body-bytes must be positive")
	case c.MaxBatch <= 0:
		return errors.New("-max-batch must be positive")
	case c.MaxLogsRange == 0 || c.MaxLogsRange < -1:
		return errors.New("-max-logs-range must be a positive number of blocks, or -1 for no limit")
	case c.CacheBytes < 0:
		return errors.New("-cache-bytes must not be negative")
	case c.ReuseLatest < 0:
		return errors.New("-reuse-latest must not be negative")
	case c.RateLimit < 0 || c.RateBurst < 0:
		return errors.New("-rate-limit and -rate-burst must not be negative")
	}
	if c.CacheBytes == 0 {
		c.CacheBytes = -1 // the flag's 0 is "off"; the Config's 0 is "default"
	}
	if c.ReuseLatest == 0 {
		c.ReuseLatest = -1 // likewise
	}
	return nil
}

// readTokens reads bearer tokens, one per line (blank lines and lines
// starting with # are skipped).
func readTokens(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("-auth-token-file: %w", err)
	}
	var out []string
	for line := range strings.Lines(string(data)) {
		if line = strings.TrimSpace(line); line != "" && line[0] != '#' {
			out = append(out, line)
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("-auth-token-file %s: no tokens", path)
	}
	return out, nil
}

// expandEnv replaces ${NAME} in a config file with the environment
// variable NAME (an unset one is an error, so a typo cannot become an
// empty token). A lone $ is left alone.
func expandEnv(s string) (string, error) {
	var missing []string
	var b strings.Builder
	for {
		i := strings.Index(s, "${")
		if i < 0 {
			b.WriteString(s)
			break
		}
		j := strings.IndexByte(s[i:], '}')
		if j < 0 {
			b.WriteString(s)
			break
		}
		name := s[i+2 : i+j]
		v, ok := os.LookupEnv(name)
		if !ok {
			missing = append(missing, name)
		}
		b.WriteString(s[:i])
		b.WriteString(v)
		s = s[i+j+1:]
	}
	if len(missing) > 0 {
		return "", fmt.Errorf("environment variables not set: %s", strings.Join(missing, ", "))
	}
	return b.String(), nil
}

func applyFile(o *options, path string, set map[string]bool) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("-config: %w", err)
	}
	text, err := expandEnv(string(data))
	if err != nil {
		return fmt.Errorf("-config %s: %w", path, err)
	}
	var fc fileConfig
	dec := json.NewDecoder(strings.NewReader(text))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&fc); err != nil {
		return fmt.Errorf("-config %s: %w", path, err)
	}
	if fc.Listen != "" && !set["listen"] {
		o.listen = fc.Listen
	}
	for i, u := range fc.Upstreams {
		if u.Name == "" || u.HTTP == "" {
			return fmt.Errorf("-config %s: upstream %d needs name and http (ws is optional)", path, i+1)
		}
		o.cfg.Upstreams = append(o.cfg.Upstreams, proxy.Upstream{Name: u.Name, HTTPURL: u.HTTP, WSURL: u.WS})
	}
	dur := func(name, v string, dst *time.Duration) error {
		if v == "" || set[name] {
			return nil
		}
		d, err := time.ParseDuration(v)
		if err != nil {
			return fmt.Errorf("-config %s: %s: %w", path, strings.ReplaceAll(name, "-", "_"), err)
		}
		*dst = d
		return nil
	}
	if err := errors.Join(
		dur("read-timeout", fc.ReadTimeout, &o.readTimeout),
		dur("check-interval", fc.CheckInterval, &o.cfg.CheckInterval),
		dur("check-timeout", fc.CheckTimeout, &o.cfg.CheckTimeout),
		dur("request-timeout", fc.RequestTimeout, &o.cfg.RequestTimeout),
		dur("switch-timeout", fc.SwitchTimeout, &o.cfg.SwitchTimeout),
		dur("reuse-latest", fc.ReuseLatest, &o.cfg.ReuseLatest),
	); err != nil {
		return err
	}
	if fc.MaxLag != nil && !set["max-lag"] {
		o.cfg.MaxLag = *fc.MaxLag
	}
	if fc.QueueSize != 0 && !set["queue-size"] {
		o.cfg.QueueSize = fc.QueueSize
	}
	if fc.ClientBuffer != 0 && !set["client-buffer-bytes"] {
		o.cfg.ClientBufferBytes = fc.ClientBuffer
	}
	if fc.MaxInFlight != 0 && !set["max-in-flight"] {
		o.cfg.MaxInFlight = fc.MaxInFlight
	}
	if fc.MaxSubs != 0 && !set["max-subscriptions"] {
		o.cfg.MaxSubscriptions = fc.MaxSubs
	}
	applyLimits(o, &fc, set)
	return nil
}

func applyLimits(o *options, fc *fileConfig, set map[string]bool) {
	if fc.AllowMethods != nil && !set["allow-methods"] {
		o.cfg.AllowMethods = fc.AllowMethods
	}
	if fc.RateLimit != 0 && !set["rate-limit"] {
		o.cfg.RateLimit = fc.RateLimit
	}
	if fc.RateBurst != 0 && !set["rate-burst"] {
		o.cfg.RateBurst = fc.RateBurst
	}
	if len(fc.AuthTokens) > 0 && !set["auth-token-file"] {
		o.cfg.AuthTokens = fc.AuthTokens
	}
	if fc.MaxBodyBytes != 0 && !set["max-body-bytes"] {
		o.cfg.MaxBodyBytes = fc.MaxBodyBytes
	}
	if fc.MaxBatch != 0 && !set["max-batch"] {
		o.cfg.MaxBatch = fc.MaxBatch
	}
	if fc.MaxLogsRange != 0 && !set["max-logs-range"] {
		o.cfg.MaxLogsRange = fc.MaxLogsRange
	}
	if fc.CacheBytes != nil && !set["cache-bytes"] {
		o.cfg.CacheBytes = *fc.CacheBytes
	}
	if fc.Coalesce != nil && !set["no-coalesce"] {
		o.cfg.NoCoalesce = !*fc.Coalesce
	}
}
