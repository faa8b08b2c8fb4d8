package jsonrpc_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"testing"

	"go.uber.org/goleak"

	"github.com/steadfast-go/steadfast/examples/proxy/jsonrpc"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func code(t *testing.T, err error) int {
	t.Helper()
	var e *jsonrpc.Error
	if !errors.As(err, &e) {
		t.Fatalf("error %v is not a *jsonrpc.Error", err)
	}
	return e.Code
}

func TestParseSingle(t *testing.T) {
	f, err := jsonrpc.Parse([]byte(` {"jsonrpc":"2.0","id":7,"method":"eth_blockNumber","params":[]} `))
	if err != nil {
		t.Fatal(err)
	}
	if f.Batch || len(f.Msgs) != 1 || f.Errs[0] != nil {
		t.Fatalf("frame = %+v", f)
	}
	m := f.Msgs[0]
	if !m.IsRequest() || m.Method != "eth_blockNumber" || string(m.ID) != "7" || string(m.Params) != "[]" {
		t.Fatalf("message = %+v", m)
	}
	if jsonrpc.Validate(&m) != nil {
		t.Fatal("valid request rejected")
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		in   string
		code int
	}{
		{``, jsonrpc.CodeParseError},
		{`{"id":1,`, jsonrpc.CodeParseError},
		{`[{"id":1}`, jsonrpc.CodeParseError},
		{`nul`, jsonrpc.CodeParseError},
		{`[]`, jsonrpc.CodeInvalidRequest},
		{`42`, jsonrpc.CodeInvalidRequest},
		{`"x"`, jsonrpc.CodeInvalidRequest},
		{`{"method":5}`, jsonrpc.CodeInvalidRequest},
	} {
		_, err := jsonrpc.Parse([]byte(tc.in))
		if err == nil {
			t.Errorf("Parse(%q) = nil error", tc.in)
			continue
		}
		if got := code(t, err); got != tc.code {
			t.Errorf("Parse(%q) code = %d, want %d", tc.in, got, tc.code)
		}
		if !errors.Is(err, &jsonrpc.Error{Code: tc.code}) {
			t.Errorf("errors.Is by code failed for %q", tc.in)
		}
	}
}

func TestParseBatchWithInvalidElements(t *testing.T) {
	f, err := jsonrpc.Parse([]byte(`[{"jsonrpc":"2.0","id":1,"method":"a"}, 5, {"id":{"x":1},"method":"b"}, {"jsonrpc":"2.0","method":"notify"}, {"method":7}]`))
	if err != nil {
		t.Fatal(err)
	}
	if !f.Batch || len(f.Msgs) != 5 {
		t.Fatalf("frame = %+v", f)
	}
	if f.Errs[0] != nil || f.Errs[1] == nil || f.Errs[2] != nil || f.Errs[3] != nil || f.Errs[4] == nil {
		t.Fatalf("element errors = %v", f.Errs)
	}
	if e := jsonrpc.Validate(&f.Msgs[2]); e == nil || e.Code != jsonrpc.CodeInvalidRequest {
		t.Fatalf("object id accepted: %v", e)
	}
	if !f.Msgs[3].IsNotification() {
		t.Fatal("notification not recognised")
	}
}

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		m  jsonrpc.Message
		ok bool
	}{
		{jsonrpc.Message{JSONRPC: "2.0", Method: "a", ID: json.RawMessage(`"s"`)}, true},
		{jsonrpc.Message{JSONRPC: "2.0", Method: "a", ID: json.RawMessage(`-1`)}, true},
		{jsonrpc.Message{JSONRPC: "2.0", Method: "a", ID: json.RawMessage(`null`)}, true},
		{jsonrpc.Message{JSONRPC: "2.0", Method: "a"}, true},
		{jsonrpc.Message{JSONRPC: "2.0", Method: "a", ID: json.RawMessage(`[1]`)}, false},
		{jsonrpc.Message{JSONRPC: "2.0", Method: "a", ID: json.RawMessage(`true`)}, false},
		{jsonrpc.Message{JSONRPC: "2.0", Method: "a", Params: json.RawMessage(`"x"`)}, false},
		{jsonrpc.Message{JSONRPC: "2.0", ID: json.RawMessage(`1`)}, false},
		{jsonrpc.Message{JSONRPC: "1.0", Method: "a", ID: json.RawMessage(`1`)}, false},
		{jsonrpc.Message{Method: "a", ID: json.RawMessage(`1`)}, false},
	} {
		if got := jsonrpc.Validate(&tc.m) == nil; got != tc.ok {
			t.Errorf("Validate(%+v) ok = %v, want %v", tc.m, got, tc.ok)
		}
	}
}

func TestResponsesRoundTrip(t *testing.T) {
	b := jsonrpc.ErrorResponse(nil, &jsonrpc.Error{Code: jsonrpc.CodeParseError, Message: "bad"})
	if string(b) != `{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"bad"}}` {
		t.Fatalf("ErrorResponse = %s", b)
	}
	r := jsonrpc.Response(json.RawMessage(`"a"`), nil)
	if string(r) != `{"jsonrpc":"2.0","id":"a","result":null}` {
		t.Fatalf("Response = %s", r)
	}
	batch := jsonrpc.JoinBatch([][]byte{b, r})
	f, err := jsonrpc.Parse(batch)
	if err != nil || len(f.Msgs) != 2 || !f.Msgs[0].IsResponse() || !f.Msgs[1].IsResponse() {
		t.Fatalf("JoinBatch output %s parsed as %+v, %v", batch, f, err)
	}
}

// FuzzParse: whatever a client sends, Parse neither panics nor loses the
// ability to answer: either it returns a JSON-RPC error that encodes to a
// parseable response, or messages that re-encode and parse back equal.
func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber","params":[]}`,
		`[{"jsonrpc":"2.0","id":1,"method":"eth_chainId"},{"jsonrpc":"2.0","id":"x","method":"eth_subscribe","params":["newHeads"]}]`,
		`{"jsonrpc":"2.0","method":"eth_subscription","params":{"subscription":"0x1","result":{"number":"0x1"}}}`,
		`{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"x"}}`,
		`[]`, `[1,2]`, `{`, `"`, `{"id":{},"method":"x"}`, "\x00", `{"method":"\u0000"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fr, err := jsonrpc.Parse(data)
		if err != nil {
			var e *jsonrpc.Error
			if !errors.As(err, &e) {
				t.Fatalf("error %T is not a *jsonrpc.Error", err)
			}
			resp := jsonrpc.ErrorResponse(nil, e)
			back, perr := jsonrpc.Parse(resp)
			if perr != nil || len(back.Msgs) != 1 || back.Msgs[0].Error == nil || back.Msgs[0].Error.Code != e.Code {
				t.Fatalf("error reply %s does not parse back: %v", resp, perr)
			}
			return
		}
		if len(fr.Msgs) == 0 || len(fr.Msgs) != len(fr.Errs) {
			t.Fatalf("frame %+v", fr)
		}
		for i := range fr.Msgs {
			if fr.Errs[i] != nil {
				continue
			}
			_ = jsonrpc.Validate(&fr.Msgs[i])
			b, err := jsonrpc.Marshal(&fr.Msgs[i])
			if err != nil {
				continue // e.g. an id that is valid JSON but not re-encodable as given
			}
			back, err := jsonrpc.Parse(b)
			if err != nil {
				t.Fatalf("re-encoded %s does not parse: %v", b, err)
			}
			if got, want := fmt.Sprint(back.Msgs[0].Method), fr.Msgs[i].Method; got != want {
				t.Fatalf("method %q became %q", want, got)
			}
		}
	})
}

func TestAppendBuilders(t *testing.T) {
	req := jsonrpc.AppendRequest(nil, 7, "eth_call", json.RawMessage(`[{"to":"0x1"},"latest"]`))
	if want := `{"jsonrpc":"2.0","id":7,"method":"eth_call","params":[{"to":"0x1"},"latest"]}`; string(req) != want {
		t.Errorf("AppendRequest = %s, want %s", req, want)
	}
	odd := jsonrpc.AppendRequest(nil, 1, "a\"b\u0000<", nil)
	var m jsonrpc.Message
	if err := json.Unmarshal(odd, &m); err != nil || m.Method != "a\"b\u0000<" {
		t.Errorf("AppendRequest with an odd method = %s (%v)", odd, err)
	}
	res := jsonrpc.AppendResult(nil, json.RawMessage(`"x"`), json.RawMessage(`"0x1"`), nil)
	if want := `{"jsonrpc":"2.0","id":"x","result":"0x1"}`; string(res) != want {
		t.Errorf("AppendResult = %s, want %s", res, want)
	}
	er := jsonrpc.AppendResult(nil, nil, nil, json.RawMessage(`{"code":-1,"message":"m"}`))
	if want := `{"jsonrpc":"2.0","id":null,"error":{"code":-1,"message":"m"}}`; string(er) != want {
		t.Errorf("AppendResult error = %s, want %s", er, want)
	}
	n := jsonrpc.AppendNotification(nil, "0xab", json.RawMessage(`{"number":"0x1"}`))
	if want := `{"jsonrpc":"2.0","method":"eth_subscription","params":{"subscription":"0xab","result":{"number":"0x1"}}}`; string(n) != want {
		t.Errorf("AppendNotification = %s, want %s", n, want)
	}
}
