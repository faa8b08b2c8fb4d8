package jsonrpc_test

import (
	"encoding/json"
	"testing"

	"github.com/steadfast-go/steadfast/examples/proxy/jsonrpc"
)

var sink any

// BenchmarkParse: the framing the proxy does per client frame, against a
// plain json.Unmarshal into a map (the naive way to read the method).
func BenchmarkParse(b *testing.B) {
	req := []byte(`{"jsonrpc":"2.0","id":1,"method":"eth_getBlockByNumber","params":["latest",false]}`)
	b.Run("Parse", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			f, err := jsonrpc.Parse(req)
			if err != nil {
				b.Fatal(err)
			}
			sink = f
		}
	})
	b.Run("naive-map", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var m map[string]any
			if err := json.Unmarshal(req, &m); err != nil {
				b.Fatal(err)
			}
			sink = m
		}
	})
}
