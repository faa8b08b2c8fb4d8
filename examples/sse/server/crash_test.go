package server_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/eventlog"
	"github.com/steadfast-go/steadfast/eventlog/sqlitestore"
	"github.com/steadfast-go/steadfast/examples/sse/client"
	"github.com/steadfast-go/steadfast/examples/sse/internal/verify"
	"github.com/steadfast-go/steadfast/examples/sse/server"
)

// postSend sends one message and reports whether it was accepted (a fresh
// 202). A refused or failed send (503 while shutting down, a closed
// connection) is not accepted.
func postSend(hc *http.Client, base, id, key, text string) bool {
	body := fmt.Sprintf(`{"text":%q,"idempotency_key":%q}`, text, key)
	resp, err := hc.Post(base+"/sessions/"+id+"/send", "application/json", strings.NewReader(body))
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusAccepted && resp.Header.Get("Idempotency-Replayed") == ""
}

// unstartedBound counts accepted messages with no reply event in evs: at
// least that many minus one (the one that may start next) were queued and
// not started at that moment.
func unstartedBound(evs []client.Event, accepted []string) int {
	seen := map[string]bool{}
	for _, ev := range evs {
		for _, k := range accepted {
			if ev.Type != server.TypeUser && strings.Contains(string(ev.Data), `"reply_to":"`+k+`"`) {
				seen[k] = true
			}
		}
	}
	return len(accepted) - len(seen) - 1
}

// The durable 202, in process: a burst of sends, then the server is shut
// down with no drain at a random point of the replies (running replies are
// canceled without an outcome, queued messages stay queued: the log is left
// as a crash leaves it), restarted on the same file and port, 10 times.
// Every accepted message is answered exactly once, in order, a reply cut
// mid-way is marked restarted, and a client that streamed across every
// restart holds exactly the server's history.
func TestCrashLoopAnswersEveryAcceptedMessageOnce(t *testing.T) {
	db := filepath.Join(t.TempDir(), "events.db")
	cfg := server.Config{DBPath: db, Drain: -1, Agent: &server.Simulator{Delay: 3 * time.Millisecond}}
	r := start(t, cfg, "")
	addr := r.addr
	hc := httpClient(t)
	id := createSession(t, hc, r.url)
	tr := newTranscript()
	newClient(t, r.url, id, tr)
	rng := rand.New(rand.NewPCG(16, 1))
	var accepted []string
	maxUnstarted := 0
	for round := range 10 {
		var mine []string
		for i := range 5 {
			key := fmt.Sprintf("r%d-m%d", round, i)
			if postSend(hc, r.url, id, key, fmt.Sprintf("round %d message %d with a few words", round, i)) {
				mine = append(mine, key)
			}
		}
		accepted = append(accepted, mine...)
		// Stop at a random number of events into the replies.
		target := len(tr.snapshot()) + 1 + rng.IntN(25)
		tr.waitFor(t, fmt.Sprintf("round %d: %d events", round, target), func(evs []client.Event) bool { return len(evs) >= target })
		maxUnstarted = max(maxUnstarted, unstartedBound(tr.snapshot(), mine))
		r.stop()
		r = start(t, cfg, addr)
	}
	tr.waitFor(t, "every message answered", func(evs []client.Event) bool {
		return countTyped(evs, server.TypeDone) >= countTyped(evs, server.TypeUser) && countTyped(evs, server.TypeUser) >= len(accepted)
	})
	want := serverEvents(t, r.srv.Log(), id)
	tr.waitFor(t, "the head", hasID(want[len(want)-1].ID))
	equalEvents(t, "client", stored(tr.snapshot()), want)
	restarts, err := verify.Answered(want, accepted, verify.SimulatorReply)
	if err != nil {
		t.Fatal(err)
	}
	if len(accepted) < 40 || maxUnstarted < 2 {
		t.Fatalf("%d accepted, at most %d queued unstarted at a stop: the test did not exercise the queue", len(accepted), maxUnstarted)
	}
	t.Logf("%d accepted messages, %d replies restarted, up to %d queued unstarted at a stop", len(accepted), restarts, maxUnstarted)
}

// longReply is the simulator's reply to "/long".
func longReply(text string) string {
	if text != "/long" {
		return verify.SimulatorReply(text)
	}
	words := make([]string, 200)
	for i := range words {
		words[i] = fmt.Sprintf("word%d", i)
	}
	return strings.Join(words, " ")
}

// A reply still running at the end of the drain is canceled without an
// outcome; after the restart it runs again, after one restarted event, and
// the message queued behind it runs next.
func TestDrainTimeoutRestartsTheCutReplyOnStart(t *testing.T) {
	db := filepath.Join(t.TempDir(), "events.db")
	cfg := server.Config{DBPath: db, Drain: 50 * time.Millisecond, Agent: &server.Simulator{Delay: 2 * time.Millisecond}}
	r := start(t, cfg, "")
	addr := r.addr
	hc := httpClient(t)
	id := createSession(t, hc, r.url)
	tr := newTranscript()
	newClient(t, r.url, id, tr)
	accepted := []string{"long", "after"}
	if !postSend(hc, r.url, id, "long", "/long") || !postSend(hc, r.url, id, "after", "queued behind it") {
		t.Fatal("sends not accepted")
	}
	tr.waitFor(t, "the long reply under way", func(evs []client.Event) bool { return countTyped(evs, server.TypeDelta) >= 5 })
	r.stop() // 200 words at 2 ms do not fit in a 50 ms drain
	mid := serverEventsOf(t, db, id)
	if n := countTyped(mid, server.TypeDone) + countTyped(mid, server.TypeFailed); n != 0 {
		t.Fatalf("%d outcomes stored at the end of the drain, want none (the reply restarts)", n)
	}
	r = start(t, cfg, addr)
	tr.waitFor(t, "both answered", func(evs []client.Event) bool { return countTyped(evs, server.TypeDone) == 2 })
	want := serverEvents(t, r.srv.Log(), id)
	restarts, err := verify.Answered(want, accepted, longReply)
	if err != nil {
		t.Fatal(err)
	}
	if restarts != 1 {
		t.Fatalf("%d restarted events, want 1", restarts)
	}
}

// serverEventsOf reads a session's events from a stopped server's SQLite
// file (opening the store only: no server resumes anything).
func serverEventsOf(t *testing.T, db, id string) []client.Event {
	t.Helper()
	st, err := sqlitestore.Open(db)
	if err != nil {
		t.Fatal(err)
	}
	l := eventlog.New(eventlog.WithStore(st))
	defer l.Close()
	return serverEvents(t, l, id)
}

// blockAgent never answers until canceled: a server with it reads the log
// without adding outcomes.
type blockAgent struct{}

func (blockAgent) Reply(ctx context.Context, _ server.Request, _ func(string) error) error {
	<-ctx.Done()
	return ctx.Err()
}

// The pending cap counts accepted messages with no outcome yet, the
// running one included: the next send is 429 and is not stored.
func TestSendBeyondThePendingCapIs429(t *testing.T) {
	r := start(t, server.Config{MaxPending: 3, Agent: blockAgent{}, Drain: -1}, "")
	hc := httpClient(t)
	id := createSession(t, hc, r.url)
	for i := range 3 {
		if !postSend(hc, r.url, id, fmt.Sprintf("k%d", i), "wait") {
			t.Fatalf("send %d not accepted", i)
		}
	}
	if res := call(t, hc, "POST", r.url+"/sessions/"+id+"/send", `{"text":"one too many","idempotency_key":"k3"}`); res.code != http.StatusTooManyRequests {
		t.Fatalf("send beyond the cap: %d %s", res.code, res.raw)
	}
	if n := countTyped(serverEvents(t, r.srv.Log(), id), server.TypeUser); n != 3 {
		t.Fatalf("%d user events stored, want 3", n)
	}
}
