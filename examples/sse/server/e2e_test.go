package server_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/examples/sse/client"
	"github.com/steadfast-go/steadfast/examples/sse/server"
	"github.com/steadfast-go/steadfast/examples/sse/wire"
	"github.com/steadfast-go/steadfast/sendqueue"
)

func newClient(t *testing.T, url, id string, tr *transcript, mod ...func(*client.Config)) *client.Client {
	t.Helper()
	cfg := client.Config{
		BaseURL: url, Session: id, OnEvent: tr.add,
		ReconnectMin: 5 * time.Millisecond, ReconnectMax: 50 * time.Millisecond,
		SendBackOff: constBackOff(10 * time.Millisecond),
		OnReport: func(r client.Report) {
			t.Errorf("client gave up on %+v: %v", r.Request, r.Err)
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

// Restart the server (SQLite, same file, same port) while clients are
// connected: every client resumes with no lost and no duplicated events.
func TestRestartWhileClientsConnected(t *testing.T) {
	db := filepath.Join(t.TempDir(), "events.db")
	r := start(t, server.Config{DBPath: db}, "")
	addr := r.addr
	hc := httpClient(t)
	id := createSession(t, hc, r.url)

	const nClients = 5
	trs := make([]*transcript, nClients)
	cs := make([]*client.Client, nClients)
	for i := range trs {
		trs[i] = newTranscript()
		cs[i] = newClient(t, r.url, id, trs[i])
	}
	send := func(c *client.Client, text string) *sendqueue.Ticket {
		tk, err := c.Send(text)
		if err != nil {
			t.Fatal(err)
		}
		return tk
	}
	for i := range 5 {
		send(cs[i%nClients], fmt.Sprintf("before restart %d", i))
	}
	if err := cs[0].Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		c.Flush(t.Context())
	}
	waitAll := func(what string, l func() string) {
		h := l()
		for i, tr := range trs {
			tr.waitFor(t, fmt.Sprintf("client %d: %s (%s)", i, what, h), hasID(h))
		}
	}
	// Wait until the replies are complete, then for every client to have
	// everything.
	trs[0].waitFor(t, "5 replies", func(evs []client.Event) bool { return countTyped(evs, server.TypeDone) == 5 })
	waitAll("head before restart", func() string { return head(t, r.srv.Log(), id) })

	r.stop()
	r2 := start(t, server.Config{DBPath: db}, addr)
	tk := send(cs[1], "after restart")
	if err := tk.Wait(t.Context()); err != nil {
		t.Fatal(err)
	}
	trs[0].waitFor(t, "6 replies", func(evs []client.Event) bool { return countTyped(evs, server.TypeDone) == 6 })
	waitAll("head after restart", func() string { return head(t, r2.srv.Log(), id) })
	want := serverEvents(t, r2.srv.Log(), id)
	for i, tr := range trs {
		equalEvents(t, fmt.Sprintf("client %d", i), stored(tr.snapshot()), want)
		if n := countTyped(tr.snapshot(), server.TypeGap) + countTyped(tr.snapshot(), server.TypeReset); n != 0 {
			t.Fatalf("client %d got %d gap/reset events across a restart with a persistent log", i, n)
		}
	}
}

// Regression (the replay storm): after a restart, client cursors were
// thousands of events behind and a periodic sync replayed them 50 at a
// time for 8 minutes. A client 5,000 events behind gets one gap event with
// the skipped count and at most the cap of events, then live events.
func TestIncidentReplayStormCursorFarBehindGetsGap(t *testing.T) {
	const gapCap = 200
	r := start(t, server.Config{GapCap: gapCap, DBPath: filepath.Join(t.TempDir(), "e.db")}, "")
	hc := httpClient(t)
	id := createSession(t, hc, r.url)
	l := r.srv.Log()
	first := head(t, l, id)
	for i := range 5000 {
		if _, err := l.AppendEvent(t.Context(), id, server.TypeDelta, fmt.Appendf(nil, `{"text":"%d"}`, i)); err != nil {
			t.Fatal(err)
		}
	}
	headBefore := head(t, l, id)

	tr := newTranscript()
	c := newClient(t, r.url, id, tr, func(cfg *client.Config) { cfg.Cursor = first })
	tr.waitFor(t, "the gap event", func(evs []client.Event) bool { return countTyped(evs, server.TypeGap) == 1 })
	// A live event after the gap marks the end of what the reconnect sent.
	if _, err := c.Send("live"); err != nil {
		t.Fatal(err)
	}
	tr.waitFor(t, "the live reply", func(evs []client.Event) bool { return countTyped(evs, server.TypeDone) == 1 })
	evs := tr.snapshot()
	if evs[0].Type != server.TypeGap {
		t.Fatalf("first event %s, want gap", evs[0].Type)
	}
	var gap server.GapEvent
	if err := json.Unmarshal(evs[0].Data, &gap); err != nil {
		t.Fatal(err)
	}
	if gap.Skipped != 5000 || gap.Head != headBefore || evs[0].ID != headBefore {
		t.Fatalf("gap %+v id %s, want 5000 skipped up to %s", gap, evs[0].ID, headBefore)
	}
	replayed := 0
	for _, ev := range evs[1:] {
		if ev.Type == server.TypeDelta && !strings.Contains(string(ev.Data), "live") && !strings.Contains(string(ev.Data), "echo") {
			replayed++
		}
	}
	if replayed > gapCap {
		t.Fatalf("%d old events re-sent after the gap, cap %d", replayed, gapCap)
	}
	// The client fetches the skipped history lazily from the gap's URL...
	res := call(t, hc, "GET", r.url+gap.History, "")
	evsH, _ := res.body["events"].([]any)
	if res.code != 200 || len(evsH) != server.DefaultHistoryLimit || res.body["more"] != true {
		t.Fatalf("history from the gap: %d, %d events, more=%v", res.code, len(evsH), res.body["more"])
	}
	// ... or with the Go client, page by page: the skipped events are all
	// there, in order.
	var older []client.HistoryEvent
	hu, err := url.Parse(gap.History)
	if err != nil {
		t.Fatal(err)
	}
	before := hu.Query().Get("before")
	for range 100 {
		page, more, err := c.History(t.Context(), before, 500)
		if err != nil {
			t.Fatal(err)
		}
		older = append(page, older...)
		if !more {
			break
		}
		before = page[0].ID
	}
	all := serverEvents(t, l, id)
	if len(older) != 5001 || older[0].ID != all[0].ID || older[5000].ID != headBefore {
		t.Fatalf("history: %d events from %s to %s", len(older), older[0].ID, older[len(older)-1].ID)
	}
	// A cursor from another epoch gets reset, not silence or a replay.
	raw := readSSE(t, hc, r.url+"/sessions/"+id+"/events?cursor=otherepoch:3", 1)
	if raw[0].Type != server.TypeReset || !strings.Contains(raw[0].Data, "wrong-epoch") {
		t.Fatalf("foreign cursor: %+v", raw[0])
	}
	// A cursor at head replays nothing (go-sse re-sends its whole buffer).
	h := head(t, l, id)
	req, _ := http.NewRequest("GET", r.url+"/sessions/"+id+"/events", nil)
	req.Header.Set("Last-Event-ID", h)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	resp, err := hc.Do(req.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	call(t, hc, "POST", r.url+"/sessions/"+id+"/send", `{"text":"marker","idempotency_key":"m"}`)
	ev, err := wire.NewReader(resp.Body, 0).Next()
	if err != nil || ev.Type != server.TypeUser || !strings.Contains(ev.Data, "marker") {
		t.Fatalf("at head, the first event is %+v %v, want the new user message", ev, err)
	}
}

// readSSE reads n events from url and closes the stream.
func readSSE(t *testing.T, hc *http.Client, url string, n int) []wire.Event {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d", url, resp.StatusCode)
	}
	r := wire.NewReader(resp.Body, 0)
	var out []wire.Event
	for len(out) < n {
		ev, err := r.Next()
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ev)
	}
	return out
}

// Sends made while the server is down are delivered after it returns, in
// order, exactly once; a send whose response was lost is not executed
// twice across the restart.
func TestSendsWhileServerDownDeliveredInOrderOnce(t *testing.T) {
	db := filepath.Join(t.TempDir(), "events.db")
	r := start(t, server.Config{DBPath: db}, "")
	addr := r.addr
	hc := httpClient(t)
	id := createSession(t, hc, r.url)
	tr := newTranscript()
	connected := make(chan bool, 16)
	c := newClient(t, r.url, id, tr, func(cfg *client.Config) {
		cfg.OnConnect = func(on bool) {
			select {
			case connected <- on:
			default:
			}
		}
	})
	if !<-connected {
		t.Fatal("first connect event was a disconnect")
	}
	// A message stored just before the crash, whose response was lost: the
	// client will send it again with the same key.
	if res := call(t, hc, "POST", r.url+"/sessions/"+id+"/send", `{"text":"m0","idempotency_key":"key-0"}`); res.code != 202 {
		t.Fatal(res.raw)
	}
	r.stop()
	for on := range connected {
		if !on {
			break
		}
	}
	var tickets []*sendqueue.Ticket
	for i := range 20 {
		tk, err := c.SendKey(fmt.Sprintf("key-%d", i), fmt.Sprintf("m%d", i))
		if err != nil {
			t.Fatal(err)
		}
		tickets = append(tickets, tk)
	}
	for _, tk := range tickets {
		if tk.Status() != sendqueue.Pending {
			t.Fatalf("a send settled while the server was down: %v %v", tk.Status(), tk.Err())
		}
	}
	r2 := start(t, server.Config{DBPath: db}, addr)
	if err := c.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	for i, tk := range tickets {
		if tk.Status() != sendqueue.Delivered {
			t.Fatalf("send %d: %v %v", i, tk.Status(), tk.Err())
		}
	}
	var users []string
	for _, ev := range serverEvents(t, r2.srv.Log(), id) {
		if ev.Type == server.TypeUser {
			var u server.UserEvent
			json.Unmarshal(ev.Data, &u)
			users = append(users, u.Key+"="+u.Text)
		}
	}
	if len(users) != 20 {
		t.Fatalf("stored %d user messages, want 20: %v", len(users), users)
	}
	for i, u := range users {
		if want := fmt.Sprintf("key-%d=m%d", i, i); u != want {
			t.Fatalf("message %d is %s, want %s (order or duplicates broken): %v", i, u, want, users)
		}
	}
}

// killer tracks the connections of a client so a test can cut them, and
// knows which of them carry the event stream.
type killer struct {
	mu    sync.Mutex
	conns map[*trackedConn]bool
}

type trackedConn struct {
	net.Conn
	stream atomic.Bool
}

func (c *trackedConn) Write(p []byte) (int, error) {
	if bytes.HasPrefix(p, []byte("GET ")) && bytes.Contains(p[:min(len(p), 200)], []byte("/events ")) {
		c.stream.Store(true)
	}
	return c.Conn.Write(p)
}

func (k *killer) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	tc := &trackedConn{Conn: c}
	k.mu.Lock()
	k.conns[tc] = true
	k.mu.Unlock()
	return tc, nil
}

// killAll closes every connection and reports whether one carried the
// stream.
func (k *killer) killAll() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	stream := false
	for c := range k.conns {
		stream = stream || c.stream.Load()
		c.Close()
		delete(k.conns, c)
	}
	return stream
}

// Kill a client's connections 100 times while messages stream: its
// transcript equals the server's.
func TestKillConnection100TimesTranscriptEqualsServer(t *testing.T) {
	// The gap cap is lifted: a client cut off for long under a fast writer
	// must get everything replayed, not a gap (tested elsewhere).
	r := start(t, server.Config{GapCap: 1 << 20}, "")
	hc := httpClient(t)
	id := createSession(t, hc, r.url)
	k := &killer{conns: map[*trackedConn]bool{}}
	tr := &http.Transport{DialContext: k.dial}
	t.Cleanup(tr.CloseIdleConnections)
	connected := make(chan struct{}, 1)
	var connects atomic.Int64
	trs := newTranscript()
	c := newClient(t, r.url, id, trs, func(cfg *client.Config) {
		cfg.HTTPClient = &http.Client{Transport: tr}
		cfg.ReconnectMin, cfg.ReconnectMax = time.Millisecond, 5*time.Millisecond
		cfg.OnConnect = func(on bool) {
			if on {
				connects.Add(1)
				select {
				case connected <- struct{}{}:
				default:
				}
			}
		}
	})
	// Another writer streams messages through the server meanwhile. It is
	// stopped between requests, never by canceling one in flight: a canceled
	// request's handler may still store its message (and the agent reply to
	// it) after the writer has returned, after the test has read the head.
	// That was the intermittent "client: 6170 events, server has 6176": one
	// late message (user event, four deltas, done) the client had not been
	// waited for.
	var stopWriter atomic.Bool
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; i < 100000 && !stopWriter.Load(); i++ {
			req, _ := http.NewRequest("POST", r.url+"/sessions/"+id+"/send",
				strings.NewReader(fmt.Sprintf(`{"text":"streaming message %d","idempotency_key":"w%d"}`, i, i)))
			resp, err := hc.Do(req)
			if err != nil {
				t.Errorf("writer: %v", err) // its handler may store the message late
				return
			}
			resp.Body.Close()
		}
	})
	deadline := time.NewTimer(waitLimit * 2)
	defer deadline.Stop()
	kills := 0
	for i := 0; kills < 100 && i < 300; i++ {
		select {
		case <-connected:
		case <-deadline.C:
			t.Fatalf("kill %d: the client did not reconnect", i)
		}
		// Let some events through on this connection before cutting it:
		// the client's own message guarantees there are some.
		n := len(trs.snapshot())
		if _, err := c.Send(fmt.Sprintf("own message %d", i)); err != nil {
			t.Fatal(err)
		}
		trs.waitFor(t, "progress", func(evs []client.Event) bool { return len(evs) > n })
		if k.killAll() {
			kills++
		}
	}
	if kills < 100 {
		t.Fatalf("only %d kills hit the stream", kills)
	}
	stopWriter.Store(true)
	wg.Wait()
	if err := c.Flush(t.Context()); err != nil {
		t.Fatal(err)
	}
	// Every message is stored now (each send was answered), so no user
	// event comes later. Wait until the client has every one of them and a
	// final event for each: then the server has finished every reply and
	// appends nothing more, and its head is final.
	users := countTyped(serverEvents(t, r.srv.Log(), id), server.TypeUser)
	trs.waitFor(t, "every message and every reply", func(evs []client.Event) bool {
		return countTyped(evs, server.TypeUser) == users && repliesFinished(evs)
	})
	h := head(t, r.srv.Log(), id)
	trs.waitFor(t, "the head "+h, hasID(h))
	if n := countTyped(trs.snapshot(), server.TypeGap) + countTyped(trs.snapshot(), server.TypeReset); n != 0 {
		t.Fatalf("%d gap/reset events", n)
	}
	equalEvents(t, "client", stored(trs.snapshot()), serverEvents(t, r.srv.Log(), id))
	if n := countTyped(trs.snapshot(), server.TypeUser); n < 100 {
		t.Fatalf("only %d messages streamed", n)
	}
	t.Logf("100 stream kills, %d connects", connects.Load())
}

// repliesFinished reports whether every user message has a final reply
// event.
func repliesFinished(evs []client.Event) bool {
	return countTyped(evs, server.TypeUser) > 0 && countTyped(evs, server.TypeUser) == countTyped(evs, server.TypeDone)+countTyped(evs, server.TypeFailed)+countTyped(evs, server.TypeInterrupted)
}

// A slow client is cut off with a reason instead of slowing others, and
// resumes by cursor: here over real TCP, the reader stops reading while a
// fast client receives everything.
func TestSlowClientCutOffOverTCP(t *testing.T) {
	r := start(t, server.Config{MaxLag: 64, WriteTimeout: 200 * time.Millisecond}, "")
	hc := httpClient(t)
	id := createSession(t, hc, r.url)
	conn, err := net.Dial("tcp", r.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if tc, ok := conn.(*net.TCPConn); ok {
		tc.SetReadBuffer(4096)
	}
	req, _ := http.NewRequest("GET", r.url+"/sessions/"+id+"/events", nil)
	if err := req.Write(conn); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("slow client: %v %v", resp, err)
	}
	br := resp.Body
	fastTr := newTranscript()
	newClient(t, r.url, id, fastTr)
	l := r.srv.Log()
	big := strings.Repeat("x", 4000)
	const n = 1500 // 6 MB: more than the socket buffers hold
	for i := range n {
		if _, err := l.AppendEvent(t.Context(), id, server.TypeDelta, fmt.Appendf(nil, `{"text":"%d %s"}`, i, big)); err != nil {
			t.Fatal(err)
		}
	}
	h := head(t, l, id)
	fastTr.waitFor(t, "the fast client to get everything", hasID(h))
	// Now the slow reader reads what it was sent: a prefix, then the end of
	// the connection (cut off), never all of it.
	var body strings.Builder
	buf := make([]byte, 64<<10)
	conn.SetReadDeadline(time.Now().Add(waitLimit))
	for {
		m, err := br.Read(buf)
		body.Write(buf[:m])
		if err != nil {
			break
		}
	}
	if strings.Contains(body.String(), "id: "+h+"\n") {
		t.Fatal("the slow client received everything: it was not cut off")
	}
	t.Logf("slow client got %d bytes; told the reason: %v", body.Len(), strings.Contains(body.String(), "event: cutoff"))
	// It resumes by its last id and is told how far behind it is.
	last := ""
	for _, line := range strings.Split(body.String(), "\n") {
		if strings.HasPrefix(line, "id: ") {
			last = strings.TrimPrefix(line, "id: ")
		}
	}
	if last == "" {
		t.Fatal("the slow client got no event at all")
	}
	evs := readSSE(t, hc, r.url+"/sessions/"+id+"/events?cursor="+last, 1)
	if evs[0].Type != server.TypeGap && evs[0].Type != server.TypeDelta {
		t.Fatalf("resume: %+v", evs[0])
	}
}
