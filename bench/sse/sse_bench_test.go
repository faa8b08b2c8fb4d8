// Package sse_test measures the SSE example server (examples/sse) end to
// end over loopback HTTP: fan-out of one session to 1,000 SSE clients, and
// how long 100 clients take to resume after a server restart (SQLite).
//
//	go test -run '^$' -bench . -benchtime 3x ./sse/
package sse_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	sse "github.com/tmaxmax/go-sse"

	"github.com/steadfast-go/steadfast/eventlog"
	"github.com/steadfast-go/steadfast/examples/sse/client"
	"github.com/steadfast-go/steadfast/examples/sse/server"
)

type running struct {
	srv  *server.Server
	addr string
	done chan error
}

func start(b *testing.B, cfg server.Config, addr string) *running {
	b.Helper()
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg.SyncInterval = -1
	srv, err := server.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	var ln net.Listener
	for range 50 {
		if ln, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		b.Fatal(err)
	}
	r := &running{srv: srv, addr: ln.Addr().String(), done: make(chan error, 1)}
	go func() { r.done <- srv.Serve(ln) }()
	return r
}

func (r *running) stop() {
	r.srv.Shutdown(context.Background())
	<-r.done
}

func createSession(b *testing.B, hc *http.Client, addr string) string {
	id, err := client.CreateSession(context.Background(), hc, "http://"+addr)
	if err != nil {
		b.Fatal(err)
	}
	return id
}

// countEvents reads an SSE body and counts the lines equal to line (such
// as "event: delta"), calling reached once when the count reaches target.
func countEvents(body io.Reader, line string, target int64, reached func()) {
	buf := make([]byte, 32<<10)
	var n int64
	pos := 0 // bytes of the current line that matched line so far, -1 if none can
	for {
		m, err := body.Read(buf)
		for _, c := range buf[:m] {
			switch {
			case c == '\n':
				if pos == len(line) {
					n++
					if n == target {
						reached()
					}
				}
				pos = 0
			case pos >= 0 && pos < len(line) && c == line[pos]:
				pos++
			default:
				pos = -1
			}
		}
		if err != nil {
			return
		}
	}
}

// BenchmarkFanout1000Clients appends b.N events to one session watched by
// 1,000 SSE clients over loopback HTTP and reports the events delivered per
// second in total (target: >= 100,000/s on 2 cores). Each op is one event
// appended and delivered to all 1,000 clients.
func BenchmarkFanout1000Clients(b *testing.B) {
	const clients = 1000
	n := int64(b.N)
	r := start(b, server.Config{MaxLag: 1 << 30, MemoryHistory: max(b.N+16, 1024), Heartbeat: time.Hour}, "")
	defer r.stop()
	tr := &http.Transport{MaxIdleConnsPerHost: clients, DisableCompression: true}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	id := createSession(b, hc, r.addr)
	var finished sync.WaitGroup
	finished.Add(clients)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var readers sync.WaitGroup
	for range clients {
		req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+r.addr+"/sessions/"+id+"/events", nil)
		resp, err := hc.Do(req)
		if err != nil {
			b.Fatal(err)
		}
		// The server subscribes before it answers, so every client is
		// attached once Do returns.
		readers.Go(func() {
			defer resp.Body.Close()
			countEvents(resp.Body, "event: delta", n, finished.Done)
		})
	}
	l := r.srv.Log()
	payload := []byte(`{"reply_to":"k","text":" hello"}`)
	b.ReportAllocs()
	b.ResetTimer()
	t0 := time.Now()
	for range b.N {
		if _, err := l.AppendEvent(context.Background(), id, server.TypeDelta, payload); err != nil {
			b.Fatal(err)
		}
	}
	finished.Wait()
	el := time.Since(t0)
	b.StopTimer()
	b.ReportMetric(float64(b.N)*clients/el.Seconds(), "events/s")
	cancel()
	readers.Wait()
}

// BenchmarkResume100ClientsAfterRestart restarts a SQLite-backed server
// (same file, same port) under 100 connected clients and measures the time
// from the new server's start until every client has resumed and received
// the first event appended after the restart (target: <= 1 s). Each op is
// one restart.
func BenchmarkResume100ClientsAfterRestart(b *testing.B) {
	const clients = 100
	db := filepath.Join(b.TempDir(), "events.db")
	r := start(b, server.Config{DBPath: db, Heartbeat: time.Hour}, "")
	addr := r.addr
	tr := &http.Transport{MaxIdleConnsPerHost: clients}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	id := createSession(b, hc, addr)
	for i := range 300 {
		if _, err := r.srv.Log().AppendEvent(context.Background(), id, server.TypeDelta, fmt.Appendf(nil, `{"text":"%d"}`, i)); err != nil {
			b.Fatal(err)
		}
	}
	var (
		mu     sync.Mutex
		marker string
		got    sync.WaitGroup
		dups   atomic.Int64
	)
	cs := make([]*client.Client, clients)
	for i := range cs {
		var last string
		c, err := client.New(client.Config{
			BaseURL: "http://" + addr, Session: id, HTTPClient: hc,
			ReconnectMin: 5 * time.Millisecond, ReconnectMax: 20 * time.Millisecond,
			OnEvent: func(ev client.Event) {
				if ev.ID != "" && ev.ID == last {
					dups.Add(1)
				}
				last = ev.ID
				mu.Lock()
				m := marker
				mu.Unlock()
				if m != "" && ev.ID == m {
					got.Done()
				}
			},
		})
		if err != nil {
			b.Fatal(err)
		}
		cs[i] = c
	}
	defer func() {
		for _, c := range cs {
			c.Close()
		}
	}()
	// Everyone connected and caught up before the first restart.
	mark := func(r *running) {
		got.Add(clients)
		h, _ := r.srv.Log().Head(context.Background(), id)
		mu.Lock()
		marker = eventlog.Cursor{Epoch: h.Epoch, Seq: h.Seq + 1}.String()
		mu.Unlock()
		data, _ := json.Marshal(server.ReplyEvent{Text: "marker"})
		if _, err := r.srv.Log().AppendEvent(context.Background(), id, server.TypeDelta, data); err != nil {
			b.Fatal(err)
		}
		got.Wait()
	}
	mark(r)
	b.ResetTimer()
	var total time.Duration
	for range b.N {
		b.StopTimer()
		r.stop()
		b.StartTimer()
		t0 := time.Now()
		r = start(b, server.Config{DBPath: db, Heartbeat: time.Hour}, addr)
		mark(r)
		total += time.Since(t0)
	}
	b.StopTimer()
	r.stop()
	b.ReportMetric(total.Seconds()*1000/float64(b.N), "ms/resume")
	if dups.Load() != 0 {
		b.Fatalf("%d duplicated events across restarts", dups.Load())
	}
}

// BenchmarkFanout1000ClientsGoSSE is the peer: tmaxmax/go-sse v0.12.0's
// Server with its default Joe provider (no replayer, no ids, so it does
// less per event than the example), 1,000 clients over loopback HTTP.
func BenchmarkFanout1000ClientsGoSSE(b *testing.B) {
	const clients = 1000
	n := int64(b.N)
	joe := &sse.Joe{}
	srv := &sse.Server{Provider: joe}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	hs := &http.Server{Handler: srv, ErrorLog: log.New(io.Discard, "", 0)}
	go hs.Serve(ln)
	defer func() {
		joe.Shutdown(context.Background())
		hs.Close()
	}()
	tr := &http.Transport{MaxIdleConnsPerHost: clients, DisableCompression: true}
	defer tr.CloseIdleConnections()
	hc := &http.Client{Transport: tr}
	var warm, finished sync.WaitGroup
	warm.Add(clients)
	finished.Add(clients)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var readers sync.WaitGroup
	for range clients {
		// go-sse answers only with its first event: connect in the reader.
		readers.Go(func() {
			req, _ := http.NewRequestWithContext(ctx, "GET", "http://"+ln.Addr().String()+"/", nil)
			resp, err := hc.Do(req)
			if err != nil {
				b.Error(err)
				warm.Done()
				finished.Done()
				return
			}
			defer resp.Body.Close()
			var once sync.Once
			r := io.TeeReader(resp.Body, writerFunc(func(p []byte) { once.Do(warm.Done) }))
			countEvents(r, "event: delta", n, finished.Done)
		})
	}
	// go-sse subscribes after it answers: publish warm-up events (another
	// type) until every client has received something.
	warmMsg := &sse.Message{Type: sse.Type("warm")}
	warmMsg.AppendData("w")
	warmed := make(chan struct{})
	go func() { warm.Wait(); close(warmed) }()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for waiting := true; waiting; {
		srv.Publish(warmMsg)
		select {
		case <-warmed:
			waiting = false
		case <-tick.C:
		}
	}
	msg := &sse.Message{Type: sse.Type("delta")}
	msg.AppendData(`{"reply_to":"k","text":" hello"}`)
	b.ReportAllocs()
	b.ResetTimer()
	t0 := time.Now()
	for range b.N {
		if err := srv.Publish(msg); err != nil {
			b.Fatal(err)
		}
	}
	finished.Wait()
	el := time.Since(t0)
	b.StopTimer()
	b.ReportMetric(float64(b.N)*clients/el.Seconds(), "events/s")
	cancel()
	readers.Wait()
}

type writerFunc func([]byte)

func (f writerFunc) Write(p []byte) (int, error) { f(p); return len(p), nil }
