package server_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/steadfast-go/steadfast/eventlog"
	"github.com/steadfast-go/steadfast/examples/sse/client"
	"github.com/steadfast-go/steadfast/examples/sse/server"
)

// waitStored waits, reading the log directly (an SSE client would count as
// attached), until session id has an event of type typ.
func waitStored(t *testing.T, l *eventlog.Log, id, typ string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), waitLimit)
	defer cancel()
	sub, err := l.Subscribe(ctx, id, eventlog.Cursor{}, eventlog.SubscribeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	for {
		res, err := sub.Next(ctx)
		if err != nil {
			t.Fatalf("waiting for a %s event in %s: %v", typ, id, err)
		}
		for _, ev := range res.Events {
			if ev.Type == typ {
				return
			}
		}
	}
}

// After a restart, the sync round covers every session in the log, also
// those nobody has touched since the restart: the old round only visited
// sessions loaded into memory, so after a restart it reported nothing and
// idle sessions were never detached.
func TestSyncAfterRestartCoversUntouchedSessions(t *testing.T) {
	db := filepath.Join(t.TempDir(), "events.db")
	r := start(t, server.Config{DBPath: db, SyncInterval: -1}, "")
	hc := httpClient(t)
	active := createSession(t, hc, r.url)
	created := createSession(t, hc, r.url)
	ended := createSession(t, hc, r.url)
	if res := call(t, hc, "POST", r.url+"/sessions/"+active+"/send", `{"text":"hi","idempotency_key":"k"}`); res.code != 202 {
		t.Fatal(res.raw)
	}
	waitStored(t, r.srv.Log(), active, server.TypeDone)
	if res := call(t, hc, "POST", r.url+"/sessions/"+ended+"/stop", ""); res.code != 200 {
		t.Fatal(res.raw)
	}
	r.stop()

	// No request touches any session after the restart.
	r2 := start(t, server.Config{DBPath: db, SyncInterval: -1, IdleTimeout: 1}, "")
	rep, err := r2.srv.SyncOnce(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(rep.Synced)
	want := []string{active, created}
	slices.Sort(want)
	if !slices.Equal(rep.Synced, want) || !slices.Equal(rep.Skipped, []string{ended}) || len(rep.Unknown)+len(rep.Failed) != 0 {
		t.Fatalf("first round after restart = %+v; want synced %v, skipped [%s]", rep, want, ended)
	}
	// The round acted on the untouched active session: idle, so detached.
	if st, err := r2.srv.Log().State(t.Context(), active); err != nil || st != eventlog.Detached {
		t.Fatalf("untouched idle session after the round: %v, %v; want detached", st, err)
	}
	rep, err = r2.srv.SyncOnce(t.Context())
	if err != nil || slices.Contains(rep.Synced, active) || !slices.Contains(rep.Skipped, active) {
		t.Fatalf("second round = %+v, %v; the detached session must be skipped", rep, err)
	}
}

// DELETE /sessions/{id} stops a running session, deletes its stream (the
// log forgets it), ends its event streams with an end event, and later
// requests for it get 410 Gone.
func TestDeleteSession(t *testing.T) {
	r := start(t, server.Config{SyncInterval: -1}, "")
	hc := httpClient(t)
	id := createSession(t, hc, r.url)
	other := createSession(t, hc, r.url)
	tr := newTranscript()
	c := newClient(t, r.url, id, tr)
	if _, err := c.Send("/long"); err != nil {
		t.Fatal(err)
	}
	tr.waitFor(t, "the reply to start", func(evs []client.Event) bool { return countTyped(evs, server.TypeDelta) > 0 })

	res := call(t, hc, "DELETE", r.url+"/sessions/"+id, "")
	if res.code != 200 || res.body["deleted"] != true || res.body["stopped"] != true {
		t.Fatalf("DELETE: %d %s", res.code, res.raw)
	}
	tr.waitFor(t, "the end event", func(evs []client.Event) bool { return countTyped(evs, server.TypeEnd) == 1 })
	l := r.srv.Log()
	if _, err := l.Head(t.Context(), id); !errors.Is(err, eventlog.ErrStreamDeleted) {
		t.Fatalf("Head(deleted session) err = %v", err)
	}
	infos, err := l.Streams(t.Context(), nil)
	if err != nil || len(infos) != 1 || infos[0].ID != other {
		t.Fatalf("log streams after DELETE = %v, %v; want only %s", infos, err, other)
	}
	for _, req := range []struct{ method, path, body string }{
		{"GET", "", ""}, {"GET", "/events", ""}, {"GET", "/history", ""},
		{"POST", "/send", `{"text":"x","idempotency_key":"k2"}`}, {"POST", "/stop", ""}, {"DELETE", "", ""},
	} {
		if res := call(t, hc, req.method, r.url+"/sessions/"+id+req.path, req.body); res.code != http.StatusGone || res.body["error"] == nil {
			t.Fatalf("%s %s after DELETE: %d %s; want 410 with a JSON error", req.method, req.path, res.code, res.raw)
		}
	}
	if res := call(t, hc, "DELETE", r.url+"/sessions/snever", ""); res.code != http.StatusNotFound {
		t.Fatalf("DELETE unknown session: %d", res.code)
	}
	// Deleting an ended session does not stop it again.
	if res := call(t, hc, "POST", r.url+"/sessions/"+other+"/stop", ""); res.code != 200 {
		t.Fatal(res.raw)
	}
	if res := call(t, hc, "DELETE", r.url+"/sessions/"+other, ""); res.code != 200 || res.body["stopped"] != false {
		t.Fatalf("DELETE ended session: %d %s", res.code, res.raw)
	}
}

// Ended sessions are deleted by the sync round once they have been ended
// for EndedRetention, not before; others are kept. (Fake clock: synctest.)
func TestEndedSessionsDeletedAfterRetention(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, err := server.New(server.Config{SyncInterval: -1, EndedRetention: time.Hour, Logger: testLogger(t)})
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Shutdown(context.Background())
		do := func(method, path string) (int, map[string]any) {
			w := httptest.NewRecorder()
			srv.ServeHTTP(w, httptest.NewRequest(method, path, strings.NewReader("")))
			var body map[string]any
			json.Unmarshal(w.Body.Bytes(), &body)
			return w.Code, body
		}
		create := func() string {
			code, body := do("POST", "/sessions")
			if code != 201 {
				t.Fatalf("create: %d", code)
			}
			return body["id"].(string)
		}
		ended, kept := create(), create()
		if code, _ := do("POST", "/sessions/"+ended+"/stop"); code != 200 {
			t.Fatalf("stop: %d", code)
		}
		time.Sleep(59 * time.Minute)
		if _, err := srv.SyncOnce(t.Context()); err != nil {
			t.Fatal(err)
		}
		if code, _ := do("GET", "/sessions/"+ended); code != 200 {
			t.Fatalf("ended session deleted before its retention: %d", code)
		}
		time.Sleep(time.Minute)
		if _, err := srv.SyncOnce(t.Context()); err != nil {
			t.Fatal(err)
		}
		if code, _ := do("GET", "/sessions/"+ended); code != http.StatusGone {
			t.Fatalf("ended session after its retention: %d, want 410", code)
		}
		if code, body := do("GET", "/sessions/"+kept); code != 200 || body["state"] != "created" {
			t.Fatalf("a session that did not end: %d %v", code, body)
		}
		if _, err := srv.Log().State(t.Context(), ended); !errors.Is(err, eventlog.ErrStreamDeleted) {
			t.Fatalf("log State(expired session) err = %v", err)
		}
	})
}

// History pages stop exactly at the oldest retained event: the last page
// says there is nothing more and that older events were dropped, and a page
// entirely before retention is 410.
func TestHistoryStopsAtOldestRetained(t *testing.T) {
	r := start(t, server.Config{MemoryHistory: 30, SyncInterval: -1}, "")
	hc := httpClient(t)
	id := createSession(t, hc, r.url) // event 1: state created
	l := r.srv.Log()
	for i := range 99 {
		if _, err := l.AppendEvent(t.Context(), id, server.TypeDelta, []byte(fmt.Sprintf(`{"text":"%d"}`, i))); err != nil {
			t.Fatal(err)
		}
	}
	// Head 100; events 71..100 are retained.
	var got []server.HistoryEvent
	before := ""
	for page := 0; ; page++ {
		url := r.url + "/sessions/" + id + "/history?limit=12"
		if before != "" {
			url += "&before=" + before
		}
		resp, err := hc.Get(url)
		if err != nil {
			t.Fatal(err)
		}
		var hr server.HistoryResponse
		err = json.NewDecoder(resp.Body).Decode(&hr)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("page %d: %d %v", page, resp.StatusCode, err)
		}
		if hr.Oldest != at(l, 71).String() {
			t.Fatalf("oldest = %q, want %s", hr.Oldest, at(l, 71))
		}
		got = append(hr.Events, got...)
		if !hr.More {
			if !hr.Truncated {
				t.Fatal("the last page does not say older events were dropped")
			}
			break
		}
		if hr.Truncated || page > 3 {
			t.Fatalf("page %d: more %v truncated %v", page, hr.More, hr.Truncated)
		}
		before = hr.Events[0].ID
	}
	if len(got) != 30 || got[0].ID != at(l, 71).String() || got[29].ID != at(l, 100).String() {
		t.Fatalf("history = %d events from %s to %s; want exactly 71..100", len(got), got[0].ID, got[len(got)-1].ID)
	}
	if res := call(t, hc, "GET", r.url+"/sessions/"+id+"/history?before=50", ""); res.code != http.StatusGone {
		t.Fatalf("history before the retained range: %d %s", res.code, res.raw)
	}
}
