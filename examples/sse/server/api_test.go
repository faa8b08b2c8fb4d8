package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/steadfast-go/steadfast/eventlog"
	"github.com/steadfast-go/steadfast/examples/sse/client"
	"github.com/steadfast-go/steadfast/examples/sse/server"
)

// Bad input gets a clear 4xx with a JSON error, and nothing panics.
func TestBadInputGetsJSON4xx(t *testing.T) {
	r := start(t, server.Config{MaxBodyBytes: 1024}, "")
	hc := httpClient(t)
	id := createSession(t, hc, r.url)
	ended := createSession(t, hc, r.url)
	if res := call(t, hc, "POST", r.url+"/sessions/"+ended+"/stop", ""); res.code != 200 {
		t.Fatalf("stop: %d %s", res.code, res.raw)
	}
	s := r.url + "/sessions/" + id
	cases := []struct {
		name, method, url, body string
		hdr                     []string
		code                    int
		errHas                  string
	}{
		{"unknown session", "POST", r.url + "/sessions/nosuch/send", `{"text":"a","idempotency_key":"k"}`, nil, 404, "unknown session"},
		{"unknown session events", "GET", r.url + "/sessions/nosuch/events", "", nil, 404, "unknown session"},
		{"malformed id", "GET", r.url + "/sessions/a%20b/history", "", nil, 404, "unknown session"},
		{"malformed JSON", "POST", s + "/send", `{"text": "a",`, nil, 400, "malformed JSON"},
		{"not an object", "POST", s + "/send", `[1,2]`, nil, 400, "malformed JSON"},
		{"trailing data", "POST", s + "/send", `{"text":"a","idempotency_key":"k"} {}`, nil, 400, "trailing data"},
		{"empty body", "POST", s + "/send", ``, nil, 400, "empty request body"},
		{"oversized body", "POST", s + "/send", `{"text":"` + strings.Repeat("x", 2000) + `","idempotency_key":"k"}`, nil, 413, "larger than 1024 bytes"},
		{"missing key", "POST", s + "/send", `{"text":"a"}`, nil, 400, "idempotency_key is required"},
		{"empty text", "POST", s + "/send", `{"text":"  ","idempotency_key":"k"}`, nil, 400, "text is empty"},
		{"bad cursor header", "GET", s + "/events", "", []string{"Last-Event-ID", "garbage"}, 400, "bad cursor"},
		{"bad cursor query", "GET", s + "/events?cursor=ep:-1", "", nil, 400, "bad cursor"},
		{"bad history limit", "GET", s + "/history?limit=0", "", nil, 400, "limit must be"},
		{"bad history before", "GET", s + "/history?before=x:y:z", "", nil, 400, "bad before"},
		{"history beyond head", "GET", s + "/history?before=999999", "", nil, 400, "beyond the head"},
		{"unknown endpoint", "GET", r.url + "/nope", "", nil, 404, "no such endpoint"},
		{"send to ended session", "POST", r.url + "/sessions/" + ended + "/send", `{"text":"a","idempotency_key":"k"}`, nil, 409, "session ended"},
		{"interrupt ended session", "POST", r.url + "/sessions/" + ended + "/interrupt", "", nil, 409, "session ended"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res := call(t, hc, tc.method, tc.url, tc.body, tc.hdr...)
			if res.code != tc.code {
				t.Fatalf("status %d, want %d (%s)", res.code, tc.code, res.raw)
			}
			msg, _ := res.body["error"].(string)
			if !strings.Contains(msg, tc.errHas) {
				t.Fatalf("error %q does not say %q (body %s)", msg, tc.errHas, res.raw)
			}
		})
	}
	// Stopping an ended session is answered, not an error.
	res := call(t, hc, "POST", r.url+"/sessions/"+ended+"/stop", "")
	if res.code != 200 || res.body["already"] != true || res.body["state"] != "ended" {
		t.Fatalf("second stop: %d %s", res.code, res.raw)
	}
	// The server still works.
	if res := call(t, hc, "POST", s+"/send", `{"text":"still here","idempotency_key":"k1"}`); res.code != 202 {
		t.Fatalf("send after bad input: %d %s", res.code, res.raw)
	}
}

func countTyped(evs []client.Event, typ string) int {
	n := 0
	for _, ev := range evs {
		if ev.Type == typ {
			n++
		}
	}
	return n
}

// A send retried with the same key, even concurrently, is stored and
// executed once, and the retries are answered as the IETF Idempotency-Key
// draft says: 409 while the original is in progress, the original answer
// (202, Idempotency-Replayed: true, the same id) once it has an outcome,
// and 422 for the key reused with another text.
func TestSendIsIdempotentByKey(t *testing.T) {
	// The reply waits for the gate, so every concurrent retry meets it in
	// progress.
	gate := make(chan struct{})
	r := start(t, server.Config{Agent: gateAgent(gate)}, "")
	hc := httpClient(t)
	id := createSession(t, hc, r.url)
	send := func(text string, hdr ...string) (int, string, map[string]any) {
		res := call(t, hc, "POST", r.url+"/sessions/"+id+"/send", `{"text":"`+text+`","idempotency_key":"same"}`, hdr...)
		return res.code, res.replayed, res.body
	}
	var wg sync.WaitGroup
	type answer struct {
		code     int
		replayed string
		id       any
	}
	answers := make([]answer, 16)
	for i := range answers {
		wg.Go(func() {
			code, rep, body := send("once please")
			answers[i] = answer{code, rep, body["id"]}
		})
	}
	wg.Wait()
	fresh, inProgress := 0, 0
	var origID any
	for _, a := range answers {
		switch {
		case a.code == 202 && a.replayed == "":
			fresh++
			origID = a.id
		case a.code == 409:
			inProgress++
		default:
			t.Fatalf("answer %+v during the reply", a)
		}
	}
	if fresh != 1 || inProgress != 15 {
		t.Fatalf("%d sends accepted and %d in progress, want 1 and 15 (%v)", fresh, inProgress, answers)
	}
	for _, a := range answers {
		if a.id != origID {
			t.Fatalf("retry names %v, the original is %v", a.id, origID)
		}
	}
	close(gate)
	tr := newTranscript()
	c, err := client.New(client.Config{BaseURL: r.url, Session: id, OnEvent: tr.add})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tr.waitFor(t, "the reply", func(evs []client.Event) bool { return countTyped(evs, server.TypeDone) == 1 })
	if code, rep, body := send("once please"); code != 202 || rep != "true" || body["id"] != origID || body["status"] != "accepted" {
		t.Fatalf("retry after the reply: %d replayed=%q %v, want 202 replayed the original %v", code, rep, body, origID)
	}
	if code, _, body := send("once please", "Idempotency-Key", "same"); code != 202 || body["id"] != origID {
		t.Fatalf("retry with the header: %d %v", code, body)
	}
	if code, _, body := send("another text"); code != 422 || body["id"] != origID {
		t.Fatalf("key reused with another text: %d %v, want 422", code, body)
	}
	if res := call(t, hc, "POST", r.url+"/sessions/"+id+"/send", `{"text":"x","idempotency_key":"a"}`, "Idempotency-Key", "b"); res.code != 400 {
		t.Fatalf("header and body keys differ: %d", res.code)
	}
	evs := serverEvents(t, r.srv.Log(), id)
	if n := countTyped(evs, server.TypeUser); n != 1 {
		t.Fatalf("%d user events stored, want 1", n)
	}
	if n := countTyped(evs, server.TypeDone); n != 1 {
		t.Fatalf("%d replies, want 1", n)
	}
}

// Regression (the origin's crash trigger): the agent's interrupt threw,
// the exception was unhandled and the server died, losing every session's
// in-memory state. Here an agent that panics when interrupted, panics
// outright, or fails moves its session to the error state, the client is
// told, and the server keeps serving.
func TestIncidentInterruptCrashDoesNotKillServer(t *testing.T) {
	r := start(t, server.Config{}, "")
	hc := httpClient(t)
	id := createSession(t, hc, r.url)
	tr := newTranscript()
	c, err := client.New(client.Config{BaseURL: r.url, Session: id, OnEvent: tr.add})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	tk, err := c.Send("/panic-on-interrupt")
	if err != nil {
		t.Fatal(err)
	}
	if err := tk.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	tr.waitFor(t, "the agent to wait", func(evs []client.Event) bool { return countTyped(evs, server.TypeDelta) == 1 })
	res := call(t, hc, "POST", r.url+"/sessions/"+id+"/interrupt", "")
	if res.code != 200 || res.body["interrupted"] != true {
		t.Fatalf("interrupt: %d %s", res.code, res.raw)
	}
	errorState := func(detail string) func([]client.Event) bool {
		return func(evs []client.Event) bool {
			for _, ev := range evs {
				var st server.StateEvent
				if ev.Type == server.TypeState && json.Unmarshal(ev.Data, &st) == nil && st.State == "error" && strings.Contains(st.Detail, detail) {
					return true
				}
			}
			return false
		}
	}
	tr.waitFor(t, "the error state", errorState("panicked"))
	if res := call(t, hc, "GET", r.url+"/sessions/"+id, ""); res.body["state"] != "error" {
		t.Fatalf("session state %v, want error", res.body["state"])
	}
	for _, m := range []struct{ text, detail string }{{"/panic", "panicked"}, {"/fail", "simulated agent failure"}} {
		before := len(tr.snapshot())
		if _, err := c.Send(m.text); err != nil {
			t.Fatal(err)
		}
		tr.waitFor(t, m.text+" reported", func(evs []client.Event) bool { return errorState(m.detail)(evs[before:]) })
	}
	// The next message restarts the agent: the session works again.
	if _, err := c.Send("alive"); err != nil {
		t.Fatal(err)
	}
	tr.waitFor(t, "a normal reply", func(evs []client.Event) bool {
		for _, ev := range evs {
			if ev.Type == server.TypeDelta && strings.Contains(string(ev.Data), "alive") {
				return true
			}
		}
		return false
	})
	if res := call(t, hc, "POST", r.url+"/sessions", ""); res.code != 201 {
		t.Fatalf("server no longer creates sessions: %d", res.code)
	}
}

// Interrupt cancels the reply being streamed and the client sees it; stop
// ends the session, and its streams end with an end event.
func TestInterruptAndStop(t *testing.T) {
	r := start(t, server.Config{}, "")
	hc := httpClient(t)
	id := createSession(t, hc, r.url)
	tr := newTranscript()
	c, err := client.New(client.Config{BaseURL: r.url, Session: id, OnEvent: tr.add})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Send("/long"); err != nil {
		t.Fatal(err)
	}
	tr.waitFor(t, "the reply to start", func(evs []client.Event) bool { return countTyped(evs, server.TypeDelta) > 0 })
	res := call(t, hc, "POST", r.url+"/sessions/"+id+"/interrupt", "")
	if res.code != 200 || res.body["interrupted"] != true {
		t.Fatalf("interrupt: %d %s", res.code, res.raw)
	}
	tr.waitFor(t, "interrupted", func(evs []client.Event) bool { return countTyped(evs, server.TypeInterrupted) == 1 })
	if n := countTyped(tr.snapshot(), server.TypeDelta); n >= 200 {
		t.Fatalf("the reply ran to the end (%d deltas) despite the interrupt", n)
	}
	if _, err := c.Stop(); err != nil {
		t.Fatal(err)
	}
	tr.waitFor(t, "end", func(evs []client.Event) bool { return countTyped(evs, "end") == 1 })
	if _, err := c.Send("too late"); err == nil {
		t.Fatal("Send after the end succeeded")
	}
}

// Only sessions in a syncable state are synced: ended and errored sessions
// are skipped, unknown ids are reported, and an idle active session is
// detached (and then skipped).
func TestIncidentOnlySyncableSessionsAreSynced(t *testing.T) {
	r := start(t, server.Config{SyncInterval: -1, IdleTimeout: 1}, "")
	hc := httpClient(t)
	active := createSession(t, hc, r.url)
	errored := createSession(t, hc, r.url)
	ended := createSession(t, hc, r.url)
	created := createSession(t, hc, r.url)
	for _, s := range []struct{ id, text string }{{active, "hi"}, {errored, "/fail"}} {
		res := call(t, hc, "POST", r.url+"/sessions/"+s.id+"/send", fmt.Sprintf(`{"text":%q,"idempotency_key":"k"}`, s.text))
		if res.code != 202 {
			t.Fatal(res.raw)
		}
	}
	call(t, hc, "POST", r.url+"/sessions/"+ended+"/stop", "")
	// Wait until both replies are over (the errored session reached the
	// error state), reading the log directly: an SSE client would count as
	// attached.
	for _, w := range []struct{ id, last string }{{active, server.TypeDone}, {errored, server.TypeState}} {
		sub, err := r.srv.Log().Subscribe(t.Context(), w.id, eventlog.Cursor{}, eventlog.SubscribeOptions{})
		if err != nil {
			t.Fatal(err)
		}
		seen := map[string]int{}
		for seen[server.TypeDone] == 0 && seen[server.TypeFailed] == 0 || w.id == errored && seen[server.TypeState] < 3 {
			res, err := sub.Next(t.Context())
			if err != nil {
				t.Fatal(err)
			}
			for _, ev := range res.Events {
				seen[ev.Type]++
			}
		}
		sub.Close()
	}
	rep, err := r.srv.SyncOnce(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{active: "synced", created: "synced", errored: "skipped", ended: "skipped"}
	got := map[string]string{}
	for _, id := range rep.Synced {
		got[id] = "synced"
	}
	for _, id := range rep.Skipped {
		got[id] = "skipped"
	}
	for id, w := range want {
		if got[id] != w {
			t.Errorf("session %s: %q, want %q (report %+v)", id, got[id], w, rep)
		}
	}
	if len(rep.Failed) != 0 || len(rep.Unknown) != 0 {
		t.Fatalf("report %+v", rep)
	}
	st, err := r.srv.Log().State(t.Context(), active)
	if err != nil || st != eventlog.Detached {
		t.Fatalf("idle active session: %v %v, want detached", st, err)
	}
	rep, _ = r.srv.SyncOnce(t.Context())
	for _, id := range rep.Synced {
		if id == active {
			t.Fatal("a detached session was synced")
		}
	}
}

// History pages backwards through older events.
func TestHistory(t *testing.T) {
	r := start(t, server.Config{}, "")
	hc := httpClient(t)
	id := createSession(t, hc, r.url)
	l := r.srv.Log()
	for i := range 120 {
		if _, err := l.AppendEvent(t.Context(), id, server.TypeDelta, []byte(fmt.Sprintf(`{"text":"%d"}`, i))); err != nil {
			t.Fatal(err)
		}
	}
	all := serverEvents(t, l, id) // 121 events
	var got []server.HistoryEvent
	before := ""
	for range 10 {
		url := r.url + "/sessions/" + id + "/history?limit=50"
		if before != "" {
			url += "&before=" + before
		}
		req, _ := http.NewRequest("GET", url, nil)
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var hr server.HistoryResponse
		err = json.NewDecoder(resp.Body).Decode(&hr)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("history: %d %v", resp.StatusCode, err)
		}
		got = append(hr.Events, got...)
		if !hr.More {
			break
		}
		before = hr.Events[0].ID
	}
	if len(got) != len(all) {
		t.Fatalf("history has %d events, log %d", len(got), len(all))
	}
	for i := range got {
		if got[i].ID != all[i].ID || string(got[i].Data) != string(all[i].Data) {
			t.Fatalf("history event %d = %+v, log %+v", i, got[i], all[i])
		}
	}
}

// gateAgent replies "ok" once gate is closed.
type gateAgent chan struct{}

func (g gateAgent) Reply(ctx context.Context, _ server.Request, emit func(string) error) error {
	select {
	case <-g:
		return emit("ok")
	case <-ctx.Done():
		return ctx.Err()
	}
}
