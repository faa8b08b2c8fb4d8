package server_test

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/steadfast-go/steadfast/eventlog"
	"github.com/steadfast-go/steadfast/examples/sse/client"
	"github.com/steadfast-go/steadfast/examples/sse/server"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// waitLimit bounds every wait of these tests.
const waitLimit = 20 * time.Second

// running is a server started by a test on loopback.
type running struct {
	srv  *server.Server
	addr string // host:port
	url  string
	once sync.Once
	done chan error
}

// start runs a server with cfg on addr ("" = 127.0.0.1:0); the test stops
// it (again, idempotently) at cleanup.
func start(t *testing.T, cfg server.Config, addr string) *running {
	t.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	if cfg.Agent == nil {
		cfg.Agent = &server.Simulator{}
	}
	if cfg.Logger == nil {
		cfg.Logger = testLogger(t)
	}
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	var ln net.Listener
	for range 50 { // the old server's port may take a moment to free
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		srv.Shutdown(context.Background())
		t.Fatal(err)
	}
	r := &running{srv: srv, addr: ln.Addr().String(), done: make(chan error, 1)}
	r.url = "http://" + r.addr
	go func() { r.done <- srv.Serve(ln) }()
	t.Cleanup(r.stop)
	return r
}

func (r *running) stop() {
	r.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
		defer cancel()
		r.srv.Shutdown(ctx)
		<-r.done
	})
}

// httpClient returns a client whose connections are closed at cleanup.
func httpClient(t *testing.T) *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: waitLimit}
}

type apiResult struct {
	code     int
	replayed string // the Idempotency-Replayed header
	body     map[string]any
	raw      string
}

func call(t *testing.T, hc *http.Client, method, url, body string, hdr ...string) apiResult {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	res := apiResult{code: resp.StatusCode, raw: string(raw), replayed: resp.Header.Get("Idempotency-Replayed")}
	json.Unmarshal(raw, &res.body)
	return res
}

func createSession(t *testing.T, hc *http.Client, base string) string {
	t.Helper()
	id, err := client.CreateSession(t.Context(), hc, base)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// transcript collects a client's events and lets a test wait on them.
type transcript struct {
	mu      sync.Mutex
	events  []client.Event
	changed chan struct{}
}

func newTranscript() *transcript { return &transcript{changed: make(chan struct{})} }

func (tr *transcript) add(ev client.Event) {
	tr.mu.Lock()
	tr.events = append(tr.events, ev)
	close(tr.changed)
	tr.changed = make(chan struct{})
	tr.mu.Unlock()
}

func (tr *transcript) snapshot() []client.Event {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return append([]client.Event(nil), tr.events...)
}

// waitFor waits until pred holds for the events, failing after waitLimit.
func (tr *transcript) waitFor(t *testing.T, what string, pred func([]client.Event) bool) {
	t.Helper()
	deadline := time.NewTimer(waitLimit)
	defer deadline.Stop()
	for {
		tr.mu.Lock()
		ok := pred(tr.events)
		ch := tr.changed
		n := len(tr.events)
		tr.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("timed out waiting for %s (%d events)", what, n)
		}
	}
}

// stored returns the stored events of a transcript (those with an id of
// the form epoch:seq and a stored type).
func stored(evs []client.Event) []client.Event {
	var out []client.Event
	for _, ev := range evs {
		switch ev.Type {
		case server.TypeUser, server.TypeDelta, server.TypeDone, server.TypeInterrupted, server.TypeFailed, server.TypeRestarted, server.TypeState:
			out = append(out, ev)
		}
	}
	return out
}

// serverEvents returns every event of a stream, as a client would see it.
func serverEvents(t *testing.T, l *eventlog.Log, id string) []client.Event {
	t.Helper()
	var out []client.Event
	var after uint64
	epoch, err := l.Epoch(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for {
		evs, err := l.ReadAfter(context.Background(), id, eventlog.Cursor{Epoch: epoch, Seq: after}, 1000)
		if err != nil && !errors.Is(err, eventlog.ErrCursorAhead) {
			t.Fatal(err)
		}
		if len(evs) == 0 {
			return out
		}
		for _, ev := range evs {
			out = append(out, client.Event{ID: eventlog.Cursor{Epoch: epoch, Seq: ev.Seq}.String(), Type: ev.Type, Data: append([]byte(nil), ev.Data...)})
			after = ev.Seq
		}
	}
}

func head(t *testing.T, l *eventlog.Log, id string) string {
	t.Helper()
	h, err := l.Head(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return h.String()
}

func hasID(id string) func([]client.Event) bool {
	return func(evs []client.Event) bool {
		for i := len(evs) - 1; i >= 0; i-- {
			if evs[i].ID == id {
				return true
			}
		}
		return false
	}
}

func equalEvents(t *testing.T, who string, got, want []client.Event) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d events, server has %d", who, len(got), len(want))
	}
	for i := range got {
		if got[i].ID != want[i].ID || got[i].Type != want[i].Type || string(got[i].Data) != string(want[i].Data) {
			t.Fatalf("%s: event %d is %s %s %s, server has %s %s %s", who, i,
				got[i].ID, got[i].Type, got[i].Data, want[i].ID, want[i].Type, want[i].Data)
		}
	}
}

// constBackOff waits d between attempts and never gives up.
type constBackOff time.Duration

func (b constBackOff) NextBackOff() time.Duration { return time.Duration(b) }
func (constBackOff) Reset()                       {}

// at returns the cursor of seq in l's current epoch.
func at(l *eventlog.Log, seq uint64) eventlog.Cursor {
	epoch, err := l.Epoch(context.Background())
	if err != nil {
		panic(err)
	}
	return eventlog.Cursor{Epoch: epoch, Seq: seq}
}
