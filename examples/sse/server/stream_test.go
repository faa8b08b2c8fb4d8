package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/steadfast-go/steadfast/eventlog"
	"github.com/steadfast-go/steadfast/examples/sse/server"
)

// streamWriter is an http.ResponseWriter for a handler running in another
// goroutine: writes are recorded under a lock, and once block is set, each
// Write waits for the gate (a client that stopped reading).
type streamWriter struct {
	mu      sync.Mutex
	hdr     http.Header
	buf     strings.Builder
	block   bool
	blocked chan struct{} // receives when a Write starts waiting
	gate    chan struct{} // closed to let writes through
	wrote   chan struct{} // receives after each write
}

func newStreamWriter() *streamWriter {
	return &streamWriter{hdr: http.Header{}, blocked: make(chan struct{}, 1), gate: make(chan struct{}), wrote: make(chan struct{}, 1)}
}

func (w *streamWriter) Header() http.Header { return w.hdr }
func (w *streamWriter) WriteHeader(int)     {}
func (w *streamWriter) Flush()              {}

func (w *streamWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	block := w.block
	w.mu.Unlock()
	if block {
		select {
		case w.blocked <- struct{}{}:
		default:
		}
		<-w.gate
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	n, err := w.buf.WriteString(string(p))
	select {
	case w.wrote <- struct{}{}:
	default:
	}
	return n, err
}

// waitFor waits for s in the output.
func (w *streamWriter) waitFor(t *testing.T, s string) {
	t.Helper()
	timeout := time.After(waitLimit)
	for !strings.Contains(w.String(), s) {
		select {
		case <-w.wrote:
		case <-timeout:
			t.Fatalf("%q never written", s)
		}
	}
}

func (w *streamWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func discardLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func createInProcess(t *testing.T, srv *server.Server) string {
	rec := httptest.NewRecorder()
	srv.ServeHTTP(rec, httptest.NewRequest("POST", "/sessions", nil))
	var body struct{ ID string }
	if err := json.Unmarshal(rec.Body.Bytes(), &body); err != nil || rec.Code != 201 {
		t.Fatalf("create: %d %s", rec.Code, rec.Body)
	}
	return body.ID
}

// Heartbeats are SSE comments, one per interval while nothing happens, and
// the stream pushes events on append with no polling loop: under a fake
// clock, nothing is written between heartbeats.
func TestHeartbeatsAreComments(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		srv, err := server.New(server.Config{Heartbeat: 15 * time.Second, SyncInterval: -1, Logger: discardLogger()})
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Shutdown(context.Background())
		id := createInProcess(t, srv)
		w := newStreamWriter()
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			srv.ServeHTTP(w, httptest.NewRequest("GET", "/sessions/"+id+"/events", nil).WithContext(ctx))
		}()
		synctest.Wait()
		start := w.String()
		if !strings.Contains(start, "event: state\n") || strings.Contains(start, ":hb") {
			t.Fatalf("stream start: %q", start)
		}
		time.Sleep(14 * time.Second)
		synctest.Wait()
		if got := w.String(); got != start {
			t.Fatalf("wrote %q before the heartbeat was due", got[len(start):])
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if n := strings.Count(w.String(), ":hb\n"); n != 1 {
			t.Fatalf("%d heartbeats after 15 s, want 1: %q", n, w.String())
		}
		// An append is pushed at once, without waiting for any tick.
		if _, err := srv.Log().AppendEvent(context.Background(), id, server.TypeDelta, []byte(`{"text":"pushed"}`)); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if !strings.Contains(w.String(), `"pushed"`) {
			t.Fatal("an appended event was not pushed")
		}
		time.Sleep(31 * time.Second)
		synctest.Wait()
		if n := strings.Count(w.String(), ":hb\n"); n != 3 {
			t.Fatalf("%d heartbeats after 46 s, want 3: %q", n, w.String())
		}
		cancel()
		<-done
	})
}

// A client that stops reading falls behind; when it is more than MaxLag
// events behind it is cut off with a cutoff event saying why and where to
// resume, and resuming from there loses nothing.
func TestSlowClientCutOffWithReason(t *testing.T) {
	const maxLag = 32
	srv, err := server.New(server.Config{MaxLag: maxLag, GapCap: 1000, SyncInterval: -1, Logger: discardLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown(context.Background())
	id := createInProcess(t, srv)
	w := newStreamWriter()
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.ServeHTTP(w, httptest.NewRequest("GET", "/sessions/"+id+"/events", nil))
	}()
	l := srv.Log()
	// Wait until the stream delivered the first event, then stop reading.
	first, _ := l.Head(t.Context(), id)
	w.waitFor(t, "id: "+first.String()+"\n")
	w.mu.Lock()
	w.block = true
	w.mu.Unlock()
	if _, err := l.AppendEvent(context.Background(), id, server.TypeDelta, []byte(`{"text":"blocks"}`)); err != nil {
		t.Fatal(err)
	}
	<-w.blocked // the handler is stuck writing to a client that does not read
	for i := range 10 * maxLag {
		if _, err := l.AppendEvent(context.Background(), id, server.TypeDelta, fmt.Appendf(nil, `{"text":"%d"}`, i)); err != nil {
			t.Fatal(err)
		}
	}
	close(w.gate)
	<-done
	out := w.String()
	i := strings.Index(out, "event: cutoff\n")
	if i < 0 {
		t.Fatalf("no cutoff event in %q", out)
	}
	var co server.CutoffEvent
	data := out[i:]
	data = data[strings.Index(data, "data: ")+6:]
	data = data[:strings.Index(data, "\n")]
	if err := json.Unmarshal([]byte(data), &co); err != nil || !strings.Contains(co.Reason, "behind") {
		t.Fatalf("cutoff %q: %+v %v", data, co, err)
	}
	// The resume cursor is the last event the client was sent.
	lastID := ""
	for _, line := range strings.Split(out[:i], "\n") {
		if strings.HasPrefix(line, "id: ") {
			lastID = line[4:]
		}
	}
	if co.Resume != lastID {
		t.Fatalf("resume %s, but the last event sent was %s", co.Resume, lastID)
	}
	c, _ := eventlog.ParseCursor(co.Resume)
	res, err := l.Replay(context.Background(), id, c, 1000)
	h, _ := l.Head(t.Context(), id)
	if err != nil || res.Outcome != eventlog.Events || uint64(len(res.Events)) != h.Seq-c.Seq {
		t.Fatalf("resume from the cutoff: %+v %v", res.Outcome, err)
	}
}

// A malformed or foreign cursor never panics the parser, and a valid one
// round-trips.
func FuzzResumeCursor(f *testing.F) {
	f.Add("", "")
	f.Add("0123456789abcdef:42", "")
	f.Add("", "ep:0")
	f.Add("ep:01", "ep:1")
	f.Add(":0", "x")
	f.Add("ep:18446744073709551616", "")
	f.Add("a:b:c", "")
	f.Fuzz(func(t *testing.T, header, query string) {
		c, err := server.ParseResumeCursor(header, query)
		if err != nil {
			if !strings.Contains(err.Error(), "malformed cursor") {
				t.Fatalf("error %v does not wrap ErrBadCursor", err)
			}
			return
		}
		src := header
		if src == "" {
			src = query
		}
		if src == "" {
			if !c.IsZero() {
				t.Fatalf("no cursor gave %+v", c)
			}
			return
		}
		if c.String() != src {
			t.Fatalf("%q parsed as %+v, which formats as %q", src, c, c.String())
		}
	})
}
