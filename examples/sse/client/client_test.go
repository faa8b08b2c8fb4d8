package client_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/steadfast-go/steadfast/examples/sse/client"
	"github.com/steadfast-go/steadfast/sendqueue"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type constBackOff time.Duration

func (b constBackOff) NextBackOff() time.Duration { return time.Duration(b) }
func (constBackOff) Reset()                       {}

// fake is a scripted server: its stream sends the events given to it and
// its POST endpoints answer with the scripted statuses.
type fake struct {
	mu       sync.Mutex
	posts    []string         // "kind text key" in arrival order
	statuses map[string][]int // per kind: statuses to answer, in order (then 202)
	lastIDs  []string         // Last-Event-ID of each stream request
	streams  chan chan string
}

func newFake(t *testing.T) (*fake, *httptest.Server) {
	f := &fake{statuses: map[string][]int{}, streams: make(chan chan string, 16)}
	srv := httptest.NewServer(f)
	t.Cleanup(srv.Close)
	return f, srv
}

func (f *fake) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	if len(parts) != 3 {
		http.NotFound(w, r)
		return
	}
	kind := parts[2]
	if kind == "events" {
		f.mu.Lock()
		f.lastIDs = append(f.lastIDs, r.Header.Get("Last-Event-ID"))
		f.mu.Unlock()
		w.Header().Set("Content-Type", "text/event-stream")
		w.WriteHeader(200)
		w.(http.Flusher).Flush()
		frames := make(chan string, 16)
		f.streams <- frames
		for {
			select {
			case fr, ok := <-frames:
				if !ok {
					return // the test ends this connection
				}
				io.WriteString(w, fr)
				w.(http.Flusher).Flush()
			case <-r.Context().Done():
				return
			}
		}
	}
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	code := 202
	if q := f.statuses[kind]; len(q) > 0 {
		code, f.statuses[kind] = q[0], q[1:]
	}
	f.posts = append(f.posts, fmt.Sprintf("%s %d %s", kind, code, body))
	f.mu.Unlock()
	w.WriteHeader(code)
	if code == http.StatusConflict {
		io.WriteString(w, `{"error":"a send with this idempotency key is in progress","state":"in-progress"}`)
		return
	}
	io.WriteString(w, `{}`)
}

func (f *fake) postLog() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.posts...)
}

func newClient(t *testing.T, url string, reports chan<- client.Report, mod ...func(*client.Config)) *client.Client {
	t.Helper()
	cfg := client.Config{
		BaseURL: url, Session: "s1",
		ReconnectMin: time.Millisecond, ReconnectMax: 10 * time.Millisecond,
		SendBackOff: constBackOff(time.Millisecond),
		OnReport: func(r client.Report) {
			if reports == nil {
				t.Errorf("unexpected report %+v", r)
				return
			}
			reports <- r
		},
	}
	for _, m := range mod {
		m(&cfg)
	}
	c, err := client.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Regression (the origin's silent loss and reordering): a send answered
// 404 (a stale connection after a reconnect) or 503 stays at the head and
// is retried, so nothing is dropped and the order holds.
func TestIncidentSendFailing404IsRetriedInOrder(t *testing.T) {
	f, srv := newFake(t)
	f.statuses["send"] = []int{404, 503, 404}
	c := newClient(t, srv.URL, nil)
	var tks []*sendqueue.Ticket
	for i := range 3 {
		tk, err := c.SendKey(fmt.Sprintf("k%d", i), fmt.Sprintf("m%d", i))
		if err != nil {
			t.Fatal(err)
		}
		tks = append(tks, tk)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for i, tk := range tks {
		if tk.Status() != sendqueue.Delivered {
			t.Fatalf("send %d: %v %v", i, tk.Status(), tk.Err())
		}
	}
	want := []string{
		`send 404 {"text":"m0","idempotency_key":"k0"}`,
		`send 503 {"text":"m0","idempotency_key":"k0"}`,
		`send 404 {"text":"m0","idempotency_key":"k0"}`,
		`send 202 {"text":"m0","idempotency_key":"k0"}`,
		`send 202 {"text":"m1","idempotency_key":"k1"}`,
		`send 202 {"text":"m2","idempotency_key":"k2"}`,
	}
	if got := f.postLog(); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("server saw\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// Stop and interrupt get one attempt each and are never retried; the
// failure is reported. A send the server refuses (400) is reported too.
func TestStopInterruptNeverRetriedAndFailuresReported(t *testing.T) {
	f, srv := newFake(t)
	f.statuses["stop"] = []int{503}
	f.statuses["interrupt"] = []int{500}
	f.statuses["send"] = []int{400}
	reports := make(chan client.Report, 8)
	c := newClient(t, srv.URL, reports)
	tkI, _ := c.Interrupt()
	tkS, _ := c.Send("refused")
	tkStop, _ := c.Stop()
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := c.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		tk   *sendqueue.Ticket
		want error
	}{{tkI, sendqueue.ErrGaveUp}, {tkS, sendqueue.ErrDropped}, {tkStop, sendqueue.ErrGaveUp}} {
		if tc.tk.Status() != sendqueue.Failed || !errors.Is(tc.tk.Err(), tc.want) {
			t.Fatalf("ticket %v %v, want failed with %v", tc.tk.Status(), tc.tk.Err(), tc.want)
		}
	}
	got := map[client.Kind]client.Report{}
	for range 3 {
		r := <-reports
		got[r.Request.Kind] = r
	}
	for _, k := range []client.Kind{client.KindInterrupt, client.KindSend, client.KindStop} {
		if got[k].Attempts != 1 {
			t.Fatalf("%s reported after %d attempts, want 1: %+v", k, got[k].Attempts, got[k])
		}
	}
	if n := len(f.postLog()); n != 3 {
		t.Fatalf("server saw %d requests, want 3 (no retries): %v", n, f.postLog())
	}
}

// The stream resumes by Last-Event-ID after a disconnect, and sends queued
// while it is down wait for the reconnect.
func TestStreamResumesByLastEventID(t *testing.T) {
	f, srv := newFake(t)
	var mu sync.Mutex
	var got []client.Event
	evs := make(chan struct{}, 16)
	c := newClient(t, srv.URL, nil, func(cfg *client.Config) {
		cfg.Cursor = "ep:3"
		cfg.OnEvent = func(ev client.Event) {
			mu.Lock()
			got = append(got, ev)
			mu.Unlock()
			evs <- struct{}{}
		}
	})
	s1 := <-f.streams
	s1 <- "id: ep:4\nevent: delta\ndata: {}\n\n:hb\n\nid: ep:5\nevent: done\ndata: {}\n\n"
	<-evs
	<-evs
	close(s1) // the server drops the connection
	s2 := <-f.streams
	s2 <- "event: cutoff\ndata: {}\n\n"
	<-evs
	f.mu.Lock()
	ids := append([]string(nil), f.lastIDs...)
	f.mu.Unlock()
	if strings.Join(ids, ",") != "ep:3,ep:5" {
		t.Fatalf("Last-Event-ID per connection: %q, want ep:3 then ep:5", ids)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 3 || got[0].ID != "ep:4" || got[1].ID != "ep:5" || got[2].Type != "cutoff" || got[2].ID != "" {
		t.Fatalf("events %+v", got)
	}
	if c.Cursor() != "ep:5" {
		t.Fatalf("cursor %s", c.Cursor())
	}
}

// While disconnected, sends wait (capped) instead of being attempted or
// dropped; Close reports each of them once.
func TestSendsWaitWhileDisconnectedAndCapHolds(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + ln.Addr().String()
	ln.Close() // nothing listens: connection refused
	reports := make(chan client.Report, 8)
	c, err := client.New(client.Config{
		BaseURL: url, Session: "s1", SendCapacity: 3,
		ReconnectMin: time.Millisecond, ReconnectMax: 5 * time.Millisecond,
		OnReport: func(r client.Report) { reports <- r },
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if _, err := c.Send(fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Send("one too many"); !errors.Is(err, sendqueue.ErrFull) {
		t.Fatalf("4th send: %v, want ErrFull", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		r := <-reports
		if !errors.Is(r.Err, sendqueue.ErrClosed) || r.Attempts != 0 || r.Request.Text != fmt.Sprint(i) {
			t.Fatalf("report %d: %+v", i, r)
		}
	}
	select {
	case r := <-reports:
		t.Fatalf("extra report %+v", r)
	default:
	}
}

// A retried send answered 409 "in-progress" (its original is queued or
// running on the server) is delivered, not retried and not reported; one
// answered 422 (the key was used for another text) is given up on and
// reported, and the next send goes on.
func TestSendInProgressIsDeliveredAndKeyReuseReported(t *testing.T) {
	f, srv := newFake(t)
	f.statuses["send"] = []int{409, 422}
	reports := make(chan client.Report, 4)
	c := newClient(t, srv.URL, reports)
	var tks []*sendqueue.Ticket
	for i := range 3 {
		tk, err := c.SendKey(fmt.Sprintf("k%d", i), fmt.Sprintf("m%d", i))
		if err != nil {
			t.Fatal(err)
		}
		tks = append(tks, tk)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	c.Flush(ctx)
	if tks[0].Status() != sendqueue.Delivered || tks[2].Status() != sendqueue.Delivered {
		t.Fatalf("statuses %v %v, want delivered", tks[0].Status(), tks[2].Status())
	}
	if tks[1].Status() == sendqueue.Delivered {
		t.Fatal("a send answered 422 counted as delivered")
	}
	select {
	case r := <-reports:
		if r.Key != "k1" {
			t.Fatalf("report for %s, want k1", r.Key)
		}
	case <-ctx.Done():
		t.Fatal("the 422 was not reported")
	}
	if got := len(f.postLog()); got != 3 {
		t.Fatalf("%d posts, want 3 (no retry): %v", got, f.postLog())
	}
}
