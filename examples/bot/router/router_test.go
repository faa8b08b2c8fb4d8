package router

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/steadfast-go/steadfast/examples/bot/agent"
	"github.com/steadfast-go/steadfast/examples/bot/chat"
	"github.com/steadfast-go/steadfast/examples/bot/chunk"
	"github.com/steadfast-go/steadfast/examples/bot/store"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakePlatform records every outgoing call in order.
type fakePlatform struct {
	limit int
	mu    sync.Mutex
	log   []string // "send ch text", "typing ch", "waiting id true|false"
	sent  map[string][]string
}

func newFakePlatform() *fakePlatform {
	return &fakePlatform{limit: chunk.DiscordLimit, sent: map[string][]string{}}
}

func (p *fakePlatform) Name() string { return "fake" }
func (p *fakePlatform) Limit() int   { return p.limit }
func (p *fakePlatform) Run(ctx context.Context, h chat.Handler) error {
	<-ctx.Done()
	return nil
}
func (p *fakePlatform) Send(_ context.Context, o chat.Outgoing) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.log = append(p.log, "send "+o.Channel+" "+o.Text)
	p.sent[o.Channel] = append(p.sent[o.Channel], o.Text)
	return nil
}
func (p *fakePlatform) Typing(_ context.Context, ch string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.log = append(p.log, "typing "+ch)
	return nil
}
func (p *fakePlatform) Waiting(_ context.Context, m chat.Message, on bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.log = append(p.log, fmt.Sprintf("waiting %s %v", m.ID, on))
	return nil
}
func (p *fakePlatform) sentTo(ch string) []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.sent[ch]...)
}
func (p *fakePlatform) calls() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.log...)
}

// gateAgent blocks every run until the test releases it, and records
// start/end order and concurrency per channel.
type gateAgent struct {
	mu        sync.Mutex
	started   []agent.Request
	active    map[string]int
	maxActive map[string]int
	maxTotal  int
	total     int
	release   chan struct{} // one receive per run; closed = run freely
	panicOn   string
}

func newGateAgent() *gateAgent {
	return &gateAgent{active: map[string]int{}, maxActive: map[string]int{}, release: make(chan struct{})}
}

func (a *gateAgent) Run(ctx context.Context, req agent.Request) (agent.Reply, error) {
	a.mu.Lock()
	a.started = append(a.started, req)
	a.active[req.Channel]++
	a.total++
	a.maxActive[req.Channel] = max(a.maxActive[req.Channel], a.active[req.Channel])
	a.maxTotal = max(a.maxTotal, a.total)
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		a.active[req.Channel]--
		a.total--
		a.mu.Unlock()
	}()
	if req.Prompt == a.panicOn {
		panic("agent exploded")
	}
	select {
	case <-a.release:
	case <-ctx.Done():
		return agent.Reply{}, ctx.Err()
	}
	sid := req.SessionID
	if sid == "" {
		sid = "sess-" + req.Channel
	}
	return agent.Reply{Text: "re: " + req.Prompt, SessionID: sid}, nil
}

func (a *gateAgent) starts() []agent.Request {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]agent.Request(nil), a.started...)
}

func newTestRouter(t *testing.T, ag agent.Agent, p *fakePlatform, timeout time.Duration) *Router {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "sessions.json"))
	if err != nil {
		t.Fatal(err)
	}
	return New(Config{Platform: p, Agent: ag, Store: st, Timeout: timeout,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
}

func msg(ch string, i int, text string) chat.Message {
	return chat.Message{Channel: ch, ID: fmt.Sprintf("%s-%d", ch, i), Text: text}
}

// TestIncidentConcurrentResumeOfOneSession is the regression test for the
// bot incident: two messages in one channel must never run the agent on the
// same session at once, and the second must resume the session the first
// one created.
func TestIncidentConcurrentResumeOfOneSession(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, a := newFakePlatform(), newGateAgent()
		r := newTestRouter(t, a, p, time.Minute)
		r.Handle(msg("major-domo", 1, "help with bug"))
		r.Handle(msg("major-domo", 2, "fix tests"))
		synctest.Wait()
		if n := len(a.starts()); n != 1 {
			t.Fatalf("%d runs started while the first is running, want 1", n)
		}
		a.release <- struct{}{}
		a.release <- struct{}{}
		if err := r.Drain(t.Context()); err != nil {
			t.Fatal(err)
		}
		s := a.starts()
		if len(s) != 2 || s[0].Prompt != "help with bug" || s[1].Prompt != "fix tests" {
			t.Fatalf("runs: %+v", s)
		}
		if s[0].SessionID != "" || s[1].SessionID != "sess-major-domo" {
			t.Fatalf("second run did not resume the first run's session: %+v", s)
		}
		if a.maxActive["major-domo"] != 1 {
			t.Fatalf("max concurrent runs in one channel = %d", a.maxActive["major-domo"])
		}
	})
}

// TestIncidentArrivalOrderLostBeforeLock: in the incident's stack each
// handler ran in its own goroutine, so arrival order could be lost before
// the lock was even reached. This test admits many messages before any worker goroutine
// has had a chance to run: whatever order the workers reach the lock in,
// the runs happen in admission order.
func TestIncidentArrivalOrderLostBeforeLock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, a := newFakePlatform(), newGateAgent()
		close(a.release)
		r := newTestRouter(t, a, p, time.Minute)
		const n = 50
		for i := range n {
			if err := r.Handle(msg("c", i, fmt.Sprint(i))); err != nil {
				t.Fatal(err)
			}
		}
		if err := r.Drain(t.Context()); err != nil {
			t.Fatal(err)
		}
		s := a.starts()
		for i := range n {
			if s[i].Prompt != fmt.Sprint(i) {
				t.Fatalf("run %d was message %s", i, s[i].Prompt)
			}
		}
		got := p.sentTo("c")
		for i := range n {
			if got[i] != "re: "+fmt.Sprint(i) {
				t.Fatalf("reply %d = %q", i, got[i])
			}
		}
		if a.maxActive["c"] != 1 {
			t.Fatalf("overlap: %d", a.maxActive["c"])
		}
		if st := r.Stats(); st.Channels != 0 || st.Locks.Held != 0 || st.Locks.Waiters != 0 || st.Runs != n {
			t.Fatalf("idle router holds state: %+v", st)
		}
	})
}

func TestChannelsRunInParallel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, a := newFakePlatform(), newGateAgent()
		r := newTestRouter(t, a, p, time.Minute)
		for c := range 5 {
			r.Handle(msg(fmt.Sprint("ch", c), 0, "go"))
		}
		synctest.Wait() // every goroutine is blocked: all five runs are in the agent
		a.mu.Lock()
		total := a.total
		a.mu.Unlock()
		if total != 5 {
			t.Fatalf("%d channels running at once, want 5", total)
		}
		close(a.release)
		r.Drain(t.Context())
	})
}

func TestWaitingMarkerSetThenClearedWhenStarted(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, a := newFakePlatform(), newGateAgent()
		r := newTestRouter(t, a, p, time.Minute)
		r.Handle(msg("c", 1, "first"))
		synctest.Wait()
		r.Handle(msg("c", 2, "second"))
		synctest.Wait()
		if !strings.Contains(r.Status("c"), "busy, 1 queued") {
			t.Fatalf("status while busy:\n%s", r.Status("c"))
		}
		a.release <- struct{}{}
		synctest.Wait()
		a.release <- struct{}{}
		r.Drain(t.Context())
		var marks []string
		for _, c := range p.calls() {
			if strings.HasPrefix(c, "waiting") {
				marks = append(marks, c)
			}
		}
		if strings.Join(marks, ",") != "waiting c-2 true,waiting c-2 false" {
			t.Fatalf("waiting marker calls: %q", marks)
		}
	})
}

func TestTypingRefreshedWhileRunning(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, a := newFakePlatform(), newGateAgent()
		r := newTestRouter(t, a, p, time.Hour)
		r.Handle(msg("c", 1, "slow"))
		time.Sleep(3*DefaultTypingInterval + time.Second) // fake clock
		synctest.Wait()
		n := 0
		for _, c := range p.calls() {
			if c == "typing c" {
				n++
			}
		}
		if n != 4 {
			t.Fatalf("typing calls = %d, want 4 (at start and every %s)", n, DefaultTypingInterval)
		}
		a.release <- struct{}{}
		r.Drain(t.Context())
		calls := p.calls()
		if last := calls[len(calls)-1]; last != "send c re: slow" {
			t.Fatalf("typing after the reply: %q", calls)
		}
	})
}

func TestTimeoutReleasesChannel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, a := newFakePlatform(), newGateAgent()
		r := newTestRouter(t, a, p, 30*time.Second)
		r.Handle(msg("c", 1, "hang"))
		r.Handle(msg("c", 2, "next"))
		time.Sleep(31 * time.Second)
		synctest.Wait()
		got := p.sentTo("c")
		if len(got) != 1 || !strings.Contains(got[0], "did not answer within 30s") {
			t.Fatalf("after timeout: %q", got)
		}
		a.release <- struct{}{}
		r.Drain(t.Context())
		if got := p.sentTo("c"); len(got) != 2 || got[1] != "re: next" {
			t.Fatalf("next message after timeout: %q", got)
		}
		if st := r.Stats(); st.TimedOut != 1 || st.Locks.Held != 0 {
			t.Fatalf("stats %+v", st)
		}
	})
}

func TestPanickingAgentReleasesLock(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, a := newFakePlatform(), newGateAgent()
		a.panicOn = "boom"
		close(a.release)
		r := newTestRouter(t, a, p, time.Minute)
		r.Handle(msg("c", 1, "boom"))
		r.Handle(msg("c", 2, "after"))
		r.Drain(t.Context())
		got := p.sentTo("c")
		if len(got) != 2 || !strings.Contains(got[0], "agent panicked") || got[1] != "re: after" {
			t.Fatalf("replies: %q", got)
		}
	})
}

func TestCommands(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, a := newFakePlatform(), newGateAgent()
		close(a.release)
		r := newTestRouter(t, a, p, time.Minute)
		step := func(text string) string {
			t.Helper()
			before := len(p.sentTo("c"))
			if err := r.Handle(msg("c", 0, text)); err != nil {
				t.Fatal(err)
			}
			synctest.Wait()
			got := p.sentTo("c")
			if len(got) != before+1 {
				t.Fatalf("%s: %d replies", text, len(got)-before)
			}
			return got[before]
		}
		if got := step("/help"); got != HelpText {
			t.Fatalf("/help: %q", got)
		}
		if got := step("/reset"); !strings.Contains(got, "no session") {
			t.Fatalf("/reset without session: %q", got)
		}
		step("hello")
		if got := step("/status"); !strings.Contains(got, "session: sess-c") || !strings.Contains(got, "idle, 0 queued") {
			t.Fatalf("/status: %q", got)
		}
		if got := step("/model opus-4"); got != "Model for this channel: opus-4" {
			t.Fatalf("/model: %q", got)
		}
		if got := step("/model"); got != "model: opus-4" {
			t.Fatalf("/model query: %q", got)
		}
		if got := step("/model bad;name"); !strings.HasPrefix(got, "usage") {
			t.Fatalf("/model bad: %q", got)
		}
		step("again")
		if s := a.starts(); s[len(s)-1].Model != "opus-4" || s[len(s)-1].SessionID != "sess-c" {
			t.Fatalf("run after /model: %+v", s[len(s)-1])
		}
		if got := step("/reset confirm"); !strings.HasPrefix(got, "Nothing to confirm") {
			t.Fatalf("confirm without /reset: %q", got)
		}
		if got := step("/reset"); !strings.Contains(got, "sess-c") {
			t.Fatalf("/reset: %q", got)
		}
		time.Sleep(DefaultConfirmWindow + time.Second) // the confirmation expires
		if got := step("/reset confirm"); !strings.HasPrefix(got, "Nothing to confirm") {
			t.Fatalf("expired confirm: %q", got)
		}
		step("/reset")
		if got := step("/reset confirm"); !strings.Contains(got, "sess-c forgotten") {
			t.Fatalf("confirm: %q", got)
		}
		if _, ok := r.cfg.Store.Get("c"); ok {
			t.Fatal("session kept after /reset confirm")
		}
		if got := step("/nope"); !strings.Contains(got, "unknown command") {
			t.Fatalf("unknown: %q", got)
		}
		r.Drain(t.Context())
	})
}

func TestLongReplyIsChunked(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p := newFakePlatform()
		p.limit = 100
		r := newTestRouter(t, &agent.Echo{}, p, time.Minute)
		long := strings.Repeat("word ", 100)
		r.Handle(msg("c", 1, long))
		r.Drain(t.Context())
		got := p.sentTo("c")
		if len(got) < 5 {
			t.Fatalf("%d chunks", len(got))
		}
		if strings.Join(got, "") != "echo: "+long {
			t.Fatal("chunks do not add up to the reply")
		}
	})
}

func TestDrainTimeoutCancelsRunsAndAnswersQueued(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, a := newFakePlatform(), newGateAgent()
		r := newTestRouter(t, a, p, time.Hour)
		r.Handle(msg("c", 1, "running"))
		r.Handle(msg("c", 2, "queued"))
		synctest.Wait()
		ctx, cancel := context.WithTimeout(t.Context(), time.Second)
		defer cancel()
		if err := r.Drain(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Drain = %v", err)
		}
		got := p.sentTo("c")
		// Both messages are answered (in either order): the run was
		// canceled, and says so in words (not a bare "context
		// canceled"), the queued one was never started.
		all := strings.Join(got, "|")
		if len(got) != 2 || !strings.Contains(all, "Stopped: the bot is shutting down") || !strings.Contains(all, "Not processed") || strings.Contains(all, "context canceled") {
			t.Fatalf("replies: %q", got)
		}
		if err := r.Handle(msg("c", 3, "late")); !errors.Is(err, chat.ErrClosed) {
			t.Fatalf("Handle after Drain = %v", err)
		}
	})
}

// TestIncidentLocksNeverCleanedUp: the origin kept a lock per channel
// forever. After 1000 channels have each been used once, the router holds
// no queue and the lock map holds no key.
func TestIncidentLocksNeverCleanedUp(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, a := newFakePlatform(), newGateAgent()
		close(a.release)
		r := newTestRouter(t, noSession{a}, p, time.Minute)
		for c := range 1000 {
			r.Handle(msg(fmt.Sprint("ch", c), 0, "hi"))
		}
		if err := r.Drain(t.Context()); err != nil {
			t.Fatal(err)
		}
		st := r.Stats()
		if st.Runs != 1000 || st.Channels != 0 || st.Queued != 0 || st.Locks.Held != 0 || st.Locks.Waiters != 0 {
			t.Fatalf("after all channels went idle: %+v", st)
		}
	})
}

// noSession hides the session id, so a test with many channels does not
// rewrite the session file once per channel.
type noSession struct{ agent.Agent }

func (n noSession) Run(ctx context.Context, req agent.Request) (agent.Reply, error) {
	rep, err := n.Agent.Run(ctx, req)
	rep.SessionID = ""
	return rep, err
}

// TestIncident_CommandsAndMessagesAgreeOnOneOrder: /model NAME used to wait
// in the channel's queue while /model and /reset answered at once, so right
// after setting a model /model showed the old one, and /reset during the
// first run said there was no session to reset. Every session command now
// takes its turn.
func TestIncident_CommandsAndMessagesAgreeOnOneOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		p, a := newFakePlatform(), newGateAgent()
		r := newTestRouter(t, a, p, time.Minute)
		for i, text := range []string{"first", "/model opus-4", "/model", "/reset"} {
			if err := r.Handle(msg("c", i, text)); err != nil {
				t.Fatal(err)
			}
		}
		synctest.Wait()
		if got := p.sentTo("c"); len(got) != 0 {
			t.Fatalf("answered before the running message finished: %q", got)
		}
		a.release <- struct{}{} // the first run ends and creates the session
		synctest.Wait()
		got := p.sentTo("c")
		if len(got) != 4 {
			t.Fatalf("replies %q, want 4", got)
		}
		if got[0] != "re: first" || got[1] != "Model for this channel: opus-4" || got[2] != "model: opus-4" || !strings.Contains(got[3], "sess-c") {
			t.Fatalf("replies out of order or stale: %q", got)
		}
		close(a.release)
		r.Drain(t.Context())
	})
}
