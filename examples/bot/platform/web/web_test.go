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
		req, _ := http.NewRequestWithContext(t.Context(), "GET", base+"/api/events", nil)
		if lastID != "" {
			req.Header.Set("Last-Event-ID", lastID)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var evs []Event
		sc := bufio.NewScanner(resp.Body)
		for len(evs) < n && sc.Scan() {
			if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
				var e Event
				json.Unmarshal([]byte(data), &e)
				evs = append(evs, e)
			}
		}
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
