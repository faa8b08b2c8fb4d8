package web

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/steadfast-go/steadfast/examples/bot/chat"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type recorder struct{ msgs chan chat.Message }

func (r recorder) Handle(m chat.Message) error { r.msgs <- m; return nil }

func start(t *testing.T, h chat.Handler) (*Web, string, func()) {
	t.Helper()
	w := New("127.0.0.1:0", slog.New(slog.NewTextHandler(io.Discard, nil)))
	addr, err := w.Listen()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx, h) }()
	return w, "http://" + addr.String(), func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
		http.DefaultClient.CloseIdleConnections()
	}
}

func TestSendValidatesAndAdmits(t *testing.T) {
	rec := recorder{make(chan chat.Message, 10)}
	_, base, stop := start(t, rec)
	defer stop()
	for body, code := range map[string]int{
		`{"channel":"dev","text":"hi","author":"ann"}`: http.StatusAccepted,
		`{"channel":"bad name","text":"hi"}`:           http.StatusBadRequest,
		`{"channel":"dev","text":""}`:                  http.StatusBadRequest,
		`{"channel":"dev","text":" \n\t "}`:            http.StatusBadRequest, // blank: would run the agent on an empty prompt
		`not json`:                                     http.StatusBadRequest,
	} {
		resp, err := http.Post(base+"/api/send", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != code {
			t.Errorf("%s: %s, want %d", body, resp.Status, code)
		}
	}
	if m := <-rec.msgs; m.Channel != "dev" || m.Text != "hi" || m.Author != "ann" || m.ID != "w1" {
		t.Fatalf("admitted %+v", m)
	}
	if len(rec.msgs) != 0 {
		t.Fatal("an invalid message was admitted")
	}
}

// TestEventStreamResumes: events carry ids; Last-Event-ID resumes after
// one; a cursor older than the retained window gets a gap event.
func TestEventStreamResumes(t *testing.T) {
	w, base, stop := start(t, recorder{make(chan chat.Message, 1)})
	defer stop()
	for i := range 3 {
		w.Send(t.Context(), chat.Outgoing{Channel: "c", Text: fmt.Sprint("reply ", i)})
	}
	read := func(lastID string, n int) []Event {
		evs, _ := readEvents(t, base, lastID, n)
		return evs
	}
	if evs := read("1", 2); len(evs) != 2 || evs[0].Seq != 2 || evs[1].Text != "reply 2" {
		t.Fatalf("resume after 1: %+v", evs)
	}
	// Fill past the retention window so seq 1 is evicted.
	for i := range MaxEvents {
		w.Typing(t.Context(), fmt.Sprint("c", i%3))
	}
	if evs := read("1", 2); len(evs) != 2 || evs[0].Kind != "gap" || evs[1].Seq != 4 {
		t.Fatalf("after eviction: %+v", evs[:min(2, len(evs))])
	}
}

// readEvents connects to the event stream with lastID as Last-Event-ID and
// returns its first n events and their ids ("" for events without one).
func readEvents(t *testing.T, base, lastID string, n int) (evs []Event, ids []string) {
	t.Helper()
	// Bounded: a stream that never delivers fails the test instead of
	// hanging it.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", base+"/api/events", nil)
	if lastID != "" {
		req.Header.Set("Last-Event-ID", lastID)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /api/events with Last-Event-ID %q: %s", lastID, resp.Status)
	}
	id := ""
	sc := bufio.NewScanner(resp.Body)
	for len(evs) < n && sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "id: "); ok {
			id = v
		}
		if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			var e Event
			if err := json.Unmarshal([]byte(data), &e); err != nil {
				t.Fatalf("event %q: %v", data, err)
			}
			evs, ids = append(evs, e), append(ids, id)
			id = ""
		}
	}
	return evs, ids
}

// TestEventStreamAfterRestart: a page left open while the bot restarts
// reconnects with the last id of the previous run, whose sequence number
// is ahead of the new run's. It must still get the new run's events (it
// used to wait until the new run's counter passed the old one, so replies
// silently never showed up), after a "restart" marker.
func TestEventStreamAfterRestart(t *testing.T) {
	old, oldBase, stopOld := start(t, recorder{make(chan chat.Message, 1)})
	for i := range 5 {
		old.Send(t.Context(), chat.Outgoing{Channel: "c", Text: fmt.Sprint("old ", i)})
	}
	_, ids := readEvents(t, oldBase, "", 5)
	lastID := ids[4]
	stopOld()

	fresh, base, stop := start(t, recorder{make(chan chat.Message, 1)})
	defer stop()
	fresh.Send(t.Context(), chat.Outgoing{Channel: "c", Text: "new 0"})
	evs, newIDs := readEvents(t, base, lastID, 2)
	if len(evs) != 2 || evs[0].Kind != "restart" || evs[1].Kind != "bot" || evs[1].Text != "new 0" {
		t.Fatalf("reconnect with %q after a restart: %+v", lastID, evs)
	}
	// The same server resumes by its own ids, without a restart marker.
	fresh.Send(t.Context(), chat.Outgoing{Channel: "c", Text: "new 1"})
	if evs, _ := readEvents(t, base, newIDs[1], 1); len(evs) != 1 || evs[0].Text != "new 1" {
		t.Fatalf("resume with %q: %+v", newIDs[1], evs)
	}
	for _, bad := range []string{"x", "abc-x", "-"} {
		req, _ := http.NewRequestWithContext(t.Context(), "GET", base+"/api/events", nil)
		req.Header.Set("Last-Event-ID", bad)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("Last-Event-ID %q: %s, want 400", bad, resp.Status)
		}
	}
}
