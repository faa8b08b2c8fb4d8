package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/examples/sse/client"
	"github.com/steadfast-go/steadfast/examples/sse/internal/verify"
	"github.com/steadfast-go/steadfast/examples/sse/server"
)

const waitLimit = 30 * time.Second

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// binary builds the sse command once per test run.
func binary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		binDir, err := os.MkdirTemp("", "sse-bin-")
		if err != nil {
			binErr = err
			return
		}
		binDirs = append(binDirs, binDir)
		binPath = filepath.Join(binDir, "sse")
		out, err := exec.Command("go", append(append([]string{"build"}, buildFlags...), "-o", binPath, ".")...).CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

var binDirs []string

// buildFlags are extra flags of the go build of the binary.
var buildFlags []string

// proc is one server process started by a test.
type proc struct {
	cmd  *exec.Cmd
	out  *lockedWriter
	logs *strings.Builder
	done chan error
}

// freeAddr returns a loopback address with a port free at the moment.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// startProc runs the binary with args and waits until /healthz answers on
// addr; the test kills it at cleanup if it still runs.
func startProc(t *testing.T, addr string, args ...string) *proc {
	t.Helper()
	logs := &strings.Builder{}
	p := &proc{logs: logs, out: &lockedWriter{w: logs}, done: make(chan error, 1)}
	p.cmd = exec.Command(binary(t), append([]string{"-addr", addr}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		p.kill(t)
		if strings.Contains(p.log(), "WARNING: DATA RACE") {
			t.Errorf("the server reported a data race:\n%s", p.log())
		}
	})
	hc := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(waitLimit)
	for {
		resp, err := hc.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		select {
		case err := <-p.done:
			p.done <- err
			t.Fatalf("server exited at start: %v\n%s", err, p.log())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("server not healthy after %v\n%s", waitLimit, p.log())
		}
	}
}

func (p *proc) log() string {
	p.out.mu.Lock()
	defer p.out.mu.Unlock()
	return p.logs.String()
}

// kill sends SIGKILL (if it still runs) and waits for the exit.
func (p *proc) kill(t *testing.T) {
	p.cmd.Process.Kill()
	p.wait(t)
}

// wait waits for the process to exit and returns its exit error.
func (p *proc) wait(t *testing.T) error {
	select {
	case err := <-p.done:
		p.done <- err
		return err
	case <-time.After(waitLimit):
		p.cmd.Process.Kill()
		t.Fatalf("server did not exit within %v", waitLimit)
		return nil
	}
}

// events collects a client's events.
type events struct {
	mu      sync.Mutex
	evs     []client.Event
	changed chan struct{}
}

func newEvents() *events { return &events{changed: make(chan struct{})} }

func (e *events) add(ev client.Event) {
	e.mu.Lock()
	e.evs = append(e.evs, ev)
	close(e.changed)
	e.changed = make(chan struct{})
	e.mu.Unlock()
}

func (e *events) snapshot() []client.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.evs)
}

func (e *events) waitFor(t *testing.T, what string, pred func([]client.Event) bool) {
	t.Helper()
	deadline := time.NewTimer(waitLimit)
	defer deadline.Stop()
	for {
		e.mu.Lock()
		ok, ch, n := pred(e.evs), e.changed, len(e.evs)
		e.mu.Unlock()
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

func count(evs []client.Event, typ string) int {
	n := 0
	for _, ev := range evs {
		if ev.Type == typ {
			n++
		}
	}
	return n
}

// storedOnly keeps the events that are stored in the log.
func storedOnly(evs []client.Event) []client.Event {
	var out []client.Event
	for _, ev := range evs {
		switch ev.Type {
		case server.TypeUser, server.TypeDelta, server.TypeDone, server.TypeInterrupted, server.TypeFailed, server.TypeRestarted, server.TypeState:
			out = append(out, ev)
		}
	}
	return out
}

// fullHistory pages GET /history from the newest event back to the first.
func fullHistory(t *testing.T, c *client.Client) []client.Event {
	t.Helper()
	var pages [][]client.HistoryEvent
	before := ""
	for range 1000 {
		evs, more, err := c.History(t.Context(), before, server.MaxHistoryLimit)
		if err != nil {
			t.Fatal(err)
		}
		pages = append(pages, evs)
		if !more || len(evs) == 0 {
			var out []client.Event
			for i := len(pages) - 1; i >= 0; i-- {
				for _, ev := range pages[i] {
					out = append(out, client.Event{ID: ev.ID, Type: ev.Type, Data: []byte(ev.Data)})
				}
			}
			return out
		}
		before = evs[0].ID
	}
	t.Fatal("history does not end")
	return nil
}

func sameEvents(t *testing.T, got, want []client.Event) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("the client has %d events, /history %d", len(got), len(want))
	}
	for i := range got {
		if got[i].ID != want[i].ID || got[i].Type != want[i].Type || string(got[i].Data) != string(want[i].Data) {
			t.Fatalf("event %d: client %s %s %s, /history %s %s %s", i, got[i].ID, got[i].Type, got[i].Data, want[i].ID, want[i].Type, want[i].Data)
		}
	}
}

// send posts one message; it reports a fresh 202.
func send(hc *http.Client, base, id, key, text string) (int, bool) {
	body := fmt.Sprintf(`{"text":%q,"idempotency_key":%q}`, text, key)
	resp, err := hc.Post(base+"/sessions/"+id+"/send", "application/json", strings.NewReader(body))
	if err != nil {
		return 0, false
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, resp.StatusCode == http.StatusAccepted && resp.Header.Get("Idempotency-Replayed") == ""
}

func followSession(t *testing.T, base, id string) (*client.Client, *events) {
	t.Helper()
	evs := newEvents()
	c, err := client.New(client.Config{BaseURL: base, Session: id, OnEvent: evs.add,
		ReconnectMin: 20 * time.Millisecond, ReconnectMax: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, evs
}

// The durable 202 with the real binary and kill -9: 10 rounds of a burst of
// sends, then SIGKILL at a random number of events into the replies (with
// messages still queued unstarted), and a restart on the same SQLite file.
// Every accepted message is answered exactly once, in order, a reply cut
// mid-way is marked restarted, and the transcript of a client that streamed
// across every kill equals /history.
func TestBinaryKill9LoopAnswersEveryAcceptedMessageOnce(t *testing.T) {
	addr := freeAddr(t)
	base := "http://" + addr
	db := filepath.Join(t.TempDir(), "events.db")
	args := []string{"-db", db, "-typing-delay", "3ms"}
	p := startProc(t, addr, args...)
	hc := &http.Client{Timeout: 10 * time.Second}
	id, err := client.CreateSession(t.Context(), hc, base)
	if err != nil {
		t.Fatal(err)
	}
	c, evs := followSession(t, base, id)
	rng := rand.New(rand.NewPCG(16, 9))
	var accepted []string
	maxUnstarted := 0
	for round := range 10 {
		var mine []string
		for i := range 5 {
			key := fmt.Sprintf("r%d-m%d", round, i)
			if _, ok := send(hc, base, id, key, fmt.Sprintf("round %d message %d with a few words", round, i)); ok {
				mine = append(mine, key)
			}
		}
		accepted = append(accepted, mine...)
		target := len(evs.snapshot()) + 1 + rng.IntN(25)
		evs.waitFor(t, fmt.Sprintf("round %d: %d events", round, target), func(e []client.Event) bool { return len(e) >= target })
		maxUnstarted = max(maxUnstarted, unstarted(evs.snapshot(), mine))
		p.kill(t)
		p = startProc(t, addr, args...)
	}
	evs.waitFor(t, "every message answered", func(e []client.Event) bool {
		return count(e, server.TypeUser) >= len(accepted) && count(e, server.TypeDone) >= count(e, server.TypeUser)
	})
	want := fullHistory(t, c)
	evs.waitFor(t, "the head", func(e []client.Event) bool {
		return len(e) > 0 && storedOnly(e)[len(storedOnly(e))-1].ID == want[len(want)-1].ID
	})
	sameEvents(t, storedOnly(evs.snapshot()), want)
	restarts, err := verify.Answered(want, accepted, verify.SimulatorReply)
	if err != nil {
		t.Fatal(err)
	}
	if len(accepted) < 40 || maxUnstarted < 2 {
		t.Fatalf("%d accepted, at most %d queued unstarted at a kill: the test did not exercise the queue", len(accepted), maxUnstarted)
	}
	t.Logf("%d accepted, %d replies restarted, up to %d queued unstarted at a kill", len(accepted), restarts, maxUnstarted)
}

// unstarted bounds from below how many of keys were queued and not started
// when evs was taken: those with no reply event, less the one that may
// start next.
func unstarted(evs []client.Event, keys []string) int {
	n := 0
	for _, k := range keys {
		started := false
		for _, ev := range evs {
			if ev.Type != server.TypeUser && strings.Contains(string(ev.Data), `"reply_to":"`+k+`"`) {
				started = true
				break
			}
		}
		if !started {
			n++
		}
	}
	return n - 1
}

// SIGTERM drains: with a reply running and two messages queued, the server
// answers sends 503 and /healthz "draining", lets the running reply finish
// (its done event reaches the client before the exit), starts nothing
// else, and exits 0; the queued messages run after the restart.
func TestBinarySIGTERMDrainsRunningReplyAndKeepsQueue(t *testing.T) {
	addr := freeAddr(t)
	base := "http://" + addr
	args := []string{"-db", filepath.Join(t.TempDir(), "events.db"), "-typing-delay", "40ms", "-drain", "20s"}
	p := startProc(t, addr, args...)
	hc := &http.Client{Timeout: 10 * time.Second}
	id, err := client.CreateSession(t.Context(), hc, base)
	if err != nil {
		t.Fatal(err)
	}
	c, evs := followSession(t, base, id)
	var accepted []string
	for i, text := range []string{"one two three four five six seven eight nine ten eleven twelve", "queued a", "queued b"} {
		key := fmt.Sprintf("m%d", i)
		if code, ok := send(hc, base, id, key, text); !ok {
			t.Fatalf("send %d: %d", i, code)
		}
		accepted = append(accepted, key)
	}
	evs.waitFor(t, "the first reply started", func(e []client.Event) bool { return count(e, server.TypeDelta) > 0 })
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	// While it drains: not healthy, no new sends.
	deadline := time.Now().Add(waitLimit)
	for {
		resp, err := hc.Get(base + "/healthz")
		if err != nil {
			t.Fatalf("healthz during the drain: %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode == http.StatusServiceUnavailable && strings.Contains(string(body), "draining") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("healthz still %d %s", resp.StatusCode, body)
		}
		time.Sleep(5 * time.Millisecond) // poll interval
	}
	if code, _ := send(hc, base, id, "late", "too late"); code != http.StatusServiceUnavailable {
		t.Fatalf("send while draining: %d, want 503", code)
	}
	if err := p.wait(t); err != nil {
		t.Fatalf("exit after SIGTERM: %v\n%s", err, p.log())
	}
	got := evs.snapshot()
	if count(got, server.TypeDone) != 1 || count(got, server.TypeRestarted) != 0 {
		t.Fatalf("at exit: %d done, %d restarted; want the running reply finished (1 done)\n%s", count(got, server.TypeDone), count(got, server.TypeRestarted), p.log())
	}
	if n := unstarted(got, accepted[1:]); n != 1 {
		t.Fatalf("a queued message started during the drain")
	}
	startProc(t, addr, args...)
	evs.waitFor(t, "the queued messages answered", func(e []client.Event) bool { return count(e, server.TypeDone) == 3 })
	want := fullHistory(t, c)
	if _, err := verify.Answered(want, accepted, verify.SimulatorReply); err != nil {
		t.Fatal(err)
	}
	if n := count(want, server.TypeRestarted); n != 0 {
		t.Fatalf("%d replies restarted after a drain that let the running one finish", n)
	}
}

// Bad command lines exit 2 with a message; -help prints the usage and
// exits 0.
func TestBinaryCommandLine(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"sessions.db"}, 2, `unexpected argument "sessions.db"`},
		{[]string{"-gap-cap", "0"}, 2, "-gap-cap 0"},
		{[]string{"-gap-cap", "-5"}, 2, "-gap-cap -5"},
		{[]string{"-max-lag", "0"}, 2, "-max-lag 0"},
		{[]string{"-bogus"}, 2, "flag provided but not defined"},
		{[]string{"-gap-cap", "x"}, 2, "invalid value"},
		{[]string{"-help"}, 0, "Usage: sse [flags]"},
	} {
		ctx, cancel := context.WithTimeout(t.Context(), waitLimit)
		out, err := exec.CommandContext(ctx, binary(t), tc.args...).CombinedOutput()
		cancel()
		code := 0
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != tc.code || !strings.Contains(string(out), tc.want) || !strings.Contains(string(out), "-typing-delay") {
			t.Errorf("sse %v: exit %d, want %d; output:\n%s", tc.args, code, tc.code, out)
		}
	}
}

func netListen(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }
