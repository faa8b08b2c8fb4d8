package proxy

import (
	"container/list"
	"encoding/json"
	"sync"
)

// resultCache holds results that can never change: answers about a block
// named by its hash, or by a number at or below the finalized block. It is
// an LRU bounded by the bytes of its keys and values. A nil *resultCache
// caches nothing.
type resultCache struct {
	max int64

	mu    sync.Mutex
	size  int64
	order *list.List // front: most recently used; values are *cacheEntry
	byKey map[string]*list.Element
}

type cacheEntry struct {
	key    string
	result []byte
}

// entryOverhead approximates the bookkeeping bytes of one entry (list
// element, map slot, headers), so many tiny entries cannot exceed the
// bound.
const entryOverhead = 128

func newResultCache(maxBytes int64) *resultCache {
	if maxBytes <= 0 {
		return nil
	}
	return &resultCache{max: maxBytes, order: list.New(), byKey: map[string]*list.Element{}}
}

func (c *resultCache) get(key string) ([]byte, bool) {
	if c == nil {
		return nil, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.byKey[key]
	if e == nil {
		return nil, false
	}
	c.order.MoveToFront(e)
	return e.Value.(*cacheEntry).result, true
}

// put stores result (which must not be modified afterwards) under key,
// evicting the least recently used entries to stay within the bound. A
// result larger than a quarter of the bound is not cached.
func (c *resultCache) put(key string, result []byte) {
	if c == nil {
		return
	}
	n := int64(len(key) + len(result) + entryOverhead)
	if n > c.max/4 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.byKey[key]; ok {
		return // the same immutable answer
	}
	c.byKey[key] = c.order.PushFront(&cacheEntry{key: key, result: result})
	c.size += n
	for c.size > c.max {
		last := c.order.Back()
		ce := last.Value.(*cacheEntry)
		c.order.Remove(last)
		delete(c.byKey, ce.key)
		c.size -= int64(len(ce.key) + len(ce.result) + entryOverhead)
	}
}

func (c *resultCache) bytes() int64 {
	if c == nil {
		return 0
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.size
}

// Where the block argument is, for methods whose answer is fixed once the
// block is: by hash for the first group, by hash or number for the
// second (index of the block parameter).
var (
	byHashMethods = map[string]bool{
		"eth_getBlockByHash": true, "eth_getHeaderByHash": true, "eth_getTransactionByBlockHashAndIndex": true,
		"eth_getBlockTransactionCountByHash": true, "eth_getUncleCountByBlockHash": true,
		"eth_getUncleByBlockHashAndIndex": true,
	}
	blockParam = map[string]int{
		"eth_getBlockByNumber": 0, "eth_getHeaderByNumber": 0, "eth_getTransactionByBlockNumberAndIndex": 0,
		"eth_getBlockTransactionCountByNumber": 0, "eth_getUncleCountByBlockNumber": 0,
		"eth_getUncleByBlockNumberAndIndex": 0, "eth_getBlockReceipts": 0,
		"eth_getBalance": 1, "eth_getCode": 1, "eth_getTransactionCount": 1, "eth_call": 1,
		"eth_getStorageAt": 2, "eth_getProof": 2,
	}
)

// cacheable reports whether the answer to method with params can never
// change: the block it names is given by hash, or by a number at or below
// finalized. Tags (latest, safe, finalized, pending) are never cacheable:
// what they name moves.
func cacheable(method string, params json.RawMessage, finalized uint64) bool {
	idx, ok := blockParam[method]
	if byHashMethods[method] {
		idx, ok = 0, true
	}
	if !ok || len(params) == 0 || params[0] != '[' {
		return false
	}
	var ps []json.RawMessage
	if json.Unmarshal(params, &ps) != nil || idx >= len(ps) {
		return false
	}
	if byHashMethods[method] {
		var h string
		return json.Unmarshal(ps[0], &h) == nil && isHash(h)
	}
	return immutableBlock(ps[idx], finalized)
}

// immutableBlock reports whether a block parameter names a block whose
// contents are fixed: a 32-byte hash, {"blockHash": hash}, or a number
// (bare or {"blockNumber": n}) at or below finalized.
func immutableBlock(raw json.RawMessage, finalized uint64) bool {
	if len(raw) > 0 && raw[0] == '{' {
		var o struct {
			BlockHash   *string `json:"blockHash"`
			BlockNumber *string `json:"blockNumber"`
		}
		if json.Unmarshal(raw, &o) != nil {
			return false
		}
		switch {
		case o.BlockHash != nil:
			return isHash(*o.BlockHash)
		case o.BlockNumber != nil:
			n, ok := parseHex(*o.BlockNumber)
			return ok && finalized > 0 && n <= finalized
		}
		return false
	}
	var s string
	if json.Unmarshal(raw, &s) != nil {
		return false
	}
	if isHash(s) {
		return true
	}
	n, ok := parseHex(s)
	return ok && finalized > 0 && n <= finalized
}

func isHash(s string) bool {
	if len(s) != 66 || s[0] != '0' || s[1] != 'x' {
		return false
	}
	for _, c := range s[2:] {
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F') {
			return false
		}
	}
	return true
}
