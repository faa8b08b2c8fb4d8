package jsonrpc_test

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/steadfast-go/steadfast/examples/proxy/jsonrpc"
)

func TestScanRequestAgreesWithParse(t *testing.T) {
	for _, in := range []string{
		`{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}`,
		` { "jsonrpc" : "2.0" , "id" : "a\"b" , "method" : "eth_call" , "params" : [{"data":"0x}]{["},"latest"] } `,
		`{"id":null,"method":"m","jsonrpc":"2.0"}`,
		`{"jsonrpc":"2.0","method":"notify"}`,
		`{"jsonrpc":"2.0","id":123456789012345678901234567890,"method":"eth_chainId"}`,
		`{"jsonrpc":"2.0","id":-1.5e3,"method":"x","params":{"a":[1,2,{"b":null}]}}`,
	} {
		m, ok := jsonrpc.ScanRequest([]byte(in))
		if !ok {
			t.Errorf("ScanRequest(%s) refused", in)
			continue
		}
		f, err := jsonrpc.Parse([]byte(in))
		if err != nil {
			t.Fatal(err)
		}
		p := f.Msgs[0]
		if m.JSONRPC != p.JSONRPC || m.Method != p.Method || !bytes.Equal(m.ID, p.ID) || !bytes.Equal(m.Params, p.Params) {
			t.Errorf("ScanRequest(%s) = %+v, Parse = %+v", in, m, p)
		}
	}
}

func TestScanRequestLeavesUnusualFormsToParse(t *testing.T) {
	for _, in := range []string{
		``, `[]`, `[{"jsonrpc":"2.0","id":1,"method":"a"}]`, `{`, `{"jsonrpc":"2.0","id":1,"method":"a"`,
		`{"jsonrpc":"1.0","id":1,"method":"a"}`, `{"id":1,"method":"a"}`,
		`{"jsonrpc":"2.0","id":1,"method":5}`, `{"jsonrpc":"2.0","id":1,"method":"a\u0062"}`,
		`{"jsonrpc":"2.0","id":1,"Method":"a"}`, `{"jsonrpc":"2.0","id":1,"method":"a","method":"b"}`,
		`{"jsonrpc":"2.0","id":1,"method":"a","result":1}`, `"x"`, `null`,
	} {
		if m, ok := jsonrpc.ScanRequest([]byte(in)); ok && in != `{"id":1,"method":"a"}` {
			t.Errorf("ScanRequest(%s) accepted: %+v", in, m)
		}
	}
}

func TestScanResult(t *testing.T) {
	res, e, ok := jsonrpc.ScanResult([]byte(`{"jsonrpc":"2.0","id":1,"result":{"number":"0x1","a":"}"}}`))
	if !ok || string(res) != `{"number":"0x1","a":"}"}` || e != nil {
		t.Errorf("result: %s %s %v", res, e, ok)
	}
	res, e, ok = jsonrpc.ScanResult([]byte(`{"jsonrpc":"2.0","id":1,"error":{"code":-32000,"message":"x"}}`))
	if !ok || res != nil || string(e) != `{"code":-32000,"message":"x"}` {
		t.Errorf("error: %s %s %v", res, e, ok)
	}
	for _, in := range []string{`[]`, `{"jsonrpc":"2.0","id":1}`, `<html>`, `{"result":1`} {
		if _, _, ok := jsonrpc.ScanResult([]byte(in)); ok {
			t.Errorf("ScanResult(%s) accepted", in)
		}
	}
}

// FuzzScanRequest: whatever ScanRequest accepts, Parse decodes to the same
// method, id and params.
func FuzzScanRequest(f *testing.F) {
	f.Add([]byte(`{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}`))
	f.Add([]byte(`{"jsonrpc":"2.0","id":"x","method":"a","params":{"k":"}"}}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		m, ok := jsonrpc.ScanRequest(in)
		if !ok {
			return
		}
		fr, err := jsonrpc.Parse(in)
		if err != nil || fr.Batch || fr.Errs[0] != nil {
			t.Fatalf("ScanRequest accepted %q, Parse: %v", in, err)
		}
		p := fr.Msgs[0]
		if m.Method != p.Method || m.JSONRPC != p.JSONRPC || !bytes.Equal(bytes.TrimSpace(m.ID), bytes.TrimSpace(p.ID)) ||
			!bytes.Equal(bytes.TrimSpace(m.Params), bytes.TrimSpace(p.Params)) {
			t.Fatalf("%q: scan %+v, parse %+v", in, m, p)
		}
		var v any
		if json.Unmarshal(in, &v) != nil {
			t.Fatalf("accepted invalid JSON %q", in)
		}
	})
}

func TestScanNotification(t *testing.T) {
	sub, res, ok := jsonrpc.ScanNotification([]byte(`{"jsonrpc":"2.0","method":"eth_subscription","params":{"subscription":"0xab","result":{"number":"0x1","hash":"0x2"}}}`))
	if !ok || string(sub) != "0xab" || string(res) != `{"number":"0x1","hash":"0x2"}` {
		t.Fatalf("%s %s %v", sub, res, ok)
	}
	for _, in := range []string{
		`{"jsonrpc":"2.0","id":1,"result":"0x1"}`,
		`{"jsonrpc":"2.0","method":"eth_subscription","params":{"subscription":"0x\u0061b","result":1}}`,
		`{"jsonrpc":"2.0","method":"eth_subscription","params":{"result":1}}`,
		`{"jsonrpc":"2.0","method":"other","params":{"subscription":"0xab","result":1}}`,
	} {
		if _, _, ok := jsonrpc.ScanNotification([]byte(in)); ok {
			t.Errorf("accepted %s", in)
		}
	}
	var keys []string
	jsonrpc.Members([]byte(`{"number":"0x1","nested":{"number":"0x9"},"hash":"0x2"}`), func(k, v []byte) bool {
		keys = append(keys, string(k)+"="+string(v))
		return true
	})
	if strings.Join(keys, " ") != `number="0x1" nested={"number":"0x9"} hash="0x2"` {
		t.Fatalf("members %v", keys)
	}
}
