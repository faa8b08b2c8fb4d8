package proxy_test

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/examples/proxy/jsonrpc"
)

// FuzzHTTPHandler: whatever a client POSTs, the proxy answers with HTTP
// 200 and JSON-RPC (or 204 for notifications only), never a panic, a 5xx or
// a dropped request. Upstream is a fake node on loopback.
func FuzzHTTPHandler(f *testing.F) {
	for _, s := range []string{
		`{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"}`,
		`[{"jsonrpc":"2.0","id":1,"method":"eth_chainId"},{"jsonrpc":"2.0","method":"eth_chainId"},5]`,
		`{"jsonrpc":"2.0","method":"eth_chainId"}`,
		`[{"jsonrpc":"2.0","method":"x"}]`,
		`{"jsonrpc":"2.0","id":{"a":1},"method":"x"}`,
		`{"id":"steadfast-replay:1:1","method":"eth_getBlockByNumber","params":["latest",false]}`,
		`[]`, `{`, ``, `null`, `[[]]`,
	} {
		f.Add([]byte(s))
	}
	c := newCluster(f, []string{"node"}, time.Hour, nil)
	c.waitCurrent(f, "node", 5*time.Second)
	h := c.p.Handler()
	f.Fuzz(func(t *testing.T, body []byte) {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/", bytes.NewReader(body)))
		switch rec.Code {
		case http.StatusNoContent:
			return
		case http.StatusOK:
		default:
			t.Fatalf("status %d for %q: %s", rec.Code, body, rec.Body.Bytes())
		}
		out := bytes.TrimSpace(rec.Body.Bytes())
		var msgs []jsonrpc.Message
		if len(out) > 0 && out[0] == '[' {
			if err := json.Unmarshal(out, &msgs); err != nil {
				t.Fatalf("reply %s: %v", out, err)
			}
		} else {
			var m jsonrpc.Message
			if err := json.Unmarshal(out, &m); err != nil {
				t.Fatalf("reply %s: %v", out, err)
			}
			msgs = append(msgs, m)
		}
		for _, m := range msgs {
			if !m.IsResponse() {
				t.Fatalf("reply element %+v is not a response (input %q)", m, body)
			}
		}
	})
}
