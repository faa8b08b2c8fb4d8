package proxy

import (
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestCacheableOnlyNamesImmutableBlocks(t *testing.T) {
	hash := `"0x` + strings.Repeat("ab", 32) + `"`
	for _, tc := range []struct {
		method, params string
		want           bool
	}{
		{"eth_getBlockByHash", `[` + hash + `,false]`, true},
		{"eth_getBlockByHash", `["0x12",false]`, false},
		{"eth_getBlockByNumber", `["0x64",true]`, true}, // 100 <= finalized 100
		{"eth_getBlockByNumber", `["0x65",true]`, false},
		{"eth_getBlockByNumber", `["latest",false]`, false},
		{"eth_getBlockByNumber", `["finalized",false]`, false},
		{"eth_getBlockByNumber", `["safe",false]`, false},
		{"eth_getBalance", `["0x0000000000000000000000000000000000000001","0x10"]`, true},
		{"eth_getBalance", `["0x0000000000000000000000000000000000000001","pending"]`, false},
		{"eth_call", `[{"to":"0x1"},{"blockHash":` + hash + `}]`, true},
		{"eth_call", `[{"to":"0x1"},{"blockNumber":"0x1000"}]`, false},
		{"eth_call", `[{"to":"0x1"}]`, false}, // no block: latest
		{"eth_getStorageAt", `["0x1","0x0","0x5"]`, true},
		{"eth_blockNumber", `[]`, false},
		{"eth_sendRawTransaction", `["0x02"]`, false},
		{"eth_getTransactionReceipt", `[` + hash + `]`, false}, // a transaction hash: its block can change
	} {
		if got := cacheable(tc.method, json.RawMessage(tc.params), 100); got != tc.want {
			t.Errorf("cacheable(%s %s) = %v, want %v", tc.method, tc.params, got, tc.want)
		}
	}
	if cacheable("eth_getBlockByNumber", json.RawMessage(`["0x0",false]`), 0) {
		t.Error("cacheable with no finalized block known")
	}
}

func TestResultCacheStaysWithinBytes(t *testing.T) {
	c := newResultCache(10 << 10)
	val := []byte(strings.Repeat("x", 500))
	for i := range 1000 {
		c.put("k"+strconv.Itoa(i), val)
		if c.bytes() > 10<<10 {
			t.Fatalf("cache at %d bytes after %d puts", c.bytes(), i+1)
		}
	}
	if _, ok := c.get("k0"); ok {
		t.Error("oldest entry survived")
	}
	if v, ok := c.get("k999"); !ok || string(v) != string(val) {
		t.Error("newest entry lost")
	}
	c.put("huge", make([]byte, 4<<10)) // over a quarter of the bound: not cached
	if _, ok := c.get("huge"); ok {
		t.Error("oversized entry cached")
	}
	var off *resultCache
	off.put("a", val)
	if _, ok := off.get("a"); ok || off.bytes() != 0 {
		t.Error("nil cache stored something")
	}
}

func TestLimiterBucketsPerClient(t *testing.T) {
	l := newLimiter(10, 3)
	now := timeZero()
	for i := range 3 {
		if !l.take("a", 1, now) {
			t.Fatalf("request %d within the burst refused", i)
		}
	}
	if l.take("a", 1, now) {
		t.Fatal("request over the burst allowed")
	}
	if !l.take("b", 3, now) {
		t.Fatal("another client shares the bucket")
	}
	if !l.take("a", 1, now.Add(100e6)) { // 100 ms: one token back at 10/s
		t.Fatal("tokens not refilled")
	}
	if newLimiter(0, 0).take("x", 1000, now) != true {
		t.Fatal("a nil limiter refuses")
	}
}

func timeZero() time.Time { return time.Unix(1_700_000_000, 0) }
