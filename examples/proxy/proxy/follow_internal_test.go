package proxy

import (
	"encoding/json"
	"testing"
)

func TestHeadRead(t *testing.T) {
	for _, tc := range []struct {
		method, params string
		want           bool
	}{
		{"eth_blockNumber", `[]`, true},
		{"eth_blockNumber", ``, true},
		{"eth_getBlockByNumber", `["latest",false]`, true},
		{"eth_getBlockByNumber", ` [ "latest" , true ]`, true},
		{"eth_getHeaderByNumber", `["latest"]`, true},
		{"eth_getBlockByNumber", `["0x10",false]`, false},
		{"eth_getBlockByNumber", `["pending",false]`, false},
		{"eth_getBlockByNumber", `["finalized",false]`, false},
		{"eth_getBlockByNumber", `["latest"`, false}, // not JSON
		{"eth_getBlockByNumber", `{"latest":1}`, false},
		{"eth_getBlockByNumber", `[]`, false},
		{"eth_getBalance", `["0x00","latest"]`, false},
		{"eth_call", `[{},"latest"]`, false},
	} {
		if got := headRead(tc.method, json.RawMessage(tc.params)); got != tc.want {
			t.Errorf("headRead(%s, %s) = %v, want %v", tc.method, tc.params, got, tc.want)
		}
	}
}
