package server_test

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
