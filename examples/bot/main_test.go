package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/steadfast-go/steadfast/examples/bot/agent"
	"github.com/steadfast-go/steadfast/examples/bot/router"
)

// The test binary doubles as a fake agent CLI (see helperMain) when
// BOT_HELPER is set, so the command agent is tested with real processes.
func TestMain(m *testing.M) {
	if mode := os.Getenv("BOT_HELPER"); mode != "" {
		os.Exit(helperMain(mode))
	}
	goleak.VerifyTestMain(m)
}

// helperMain is the fake agent CLI, invoked by the template
// "<test binary> --channel {channel} --resume {session} -p {prompt}".
// The prompt picks the behaviour: "hang" starts a child in its process
// group, reports both pids and blocks forever; "crash" exits with status 3;
// anything else prints Claude-style JSON whose result lists the argv and
// whose session_id continues the resumed session (or starts one).
func helperMain(mode string) int {
	if mode == "sleep" { // the grandchild: prove it runs, then block
		os.WriteFile(os.Getenv("BOT_PIDFILE")+".child", []byte(strconv.Itoa(os.Getpid())), 0o600)
		select {}
	}
	args := os.Args[1:]
	prompt := args[len(args)-1]
	switch prompt {
	case "hang":
		self, _ := os.Executable()
		child, err := os.StartProcess(self, []string{self}, &os.ProcAttr{
			Env:   envWith("BOT_HELPER", "sleep"),
			Files: []*os.File{nil, os.Stdout, os.Stderr},
		})
		if err != nil {
			return 4
		}
		pidfile := os.Getenv("BOT_PIDFILE")
		os.WriteFile(pidfile+".tmp", fmt.Appendf(nil, "%d %d", os.Getpid(), child.Pid), 0o600)
		os.Rename(pidfile+".tmp", pidfile)
		select {}
	case "crash":
		fmt.Fprintln(os.Stderr, "helper: simulated crash")
		return 3
	}
	sid := ""
	for i, a := range args {
		if a == "--resume" && i+1 < len(args) {
			sid = args[i+1]
		}
	}
	if sid == "" {
		sid = "sess-" + strconv.Itoa(os.Getpid())
	}
	b, _ := json.Marshal(strings.Join(args, " "))
	fmt.Printf(`{"type":"result","subtype":"success","is_error":false,"result":%s,"session_id":%q}`+"\n", b, sid)
	return 0
}

// ---- a fake in-process agent recording start and end ----

type span struct {
	ch, prompt string
	seq        int // position in the global start/end event order
	start, end time.Time
}

type recAgent struct {
	gate func(ctx context.Context, req agent.Request) error

	mu        sync.Mutex
	clock     int // logical clock over start and end events
	spans     []*span
	active    map[string]int
	maxActive map[string]int
	total     int
	maxTotal  int
}

func newRecAgent(gate func(ctx context.Context, req agent.Request) error) *recAgent {
	return &recAgent{gate: gate, active: map[string]int{}, maxActive: map[string]int{}}
}

func (a *recAgent) Run(ctx context.Context, req agent.Request) (agent.Reply, error) {
	a.mu.Lock()
	a.clock++
	s := &span{ch: req.Channel, prompt: req.Prompt, seq: a.clock, start: time.Now()}
	a.spans = append(a.spans, s)
	a.active[req.Channel]++
	a.total++
	a.maxActive[req.Channel] = max(a.maxActive[req.Channel], a.active[req.Channel])
	a.maxTotal = max(a.maxTotal, a.total)
	a.mu.Unlock()
	err := a.gate(ctx, req)
	a.mu.Lock()
	a.clock++
	s.end = time.Now()
	a.active[req.Channel]--
	a.total--
	a.mu.Unlock()
	if err != nil {
		return agent.Reply{}, err
	}
	return agent.Reply{Text: "re: " + req.Prompt}, nil
}

func (a *recAgent) snapshot() (spans []span, maxActive map[string]int, maxTotal int) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, s := range a.spans {
		spans = append(spans, *s)
	}
	m := map[string]int{}
	for k, v := range a.maxActive {
		m[k] = v
	}
	return spans, m, a.maxTotal
}

// ---- drivers: the real terminal (pipes) and web (HTTP on loopback) ----

type outLine struct {
	kind string // bot, waiting, started
	ch   string
	text string
}

type harness struct {
	t      *testing.T
	send   func(ch, text string)
	lines  chan outLine
	finish func() error // ends the input (EOF or cancel) and waits for run to return
}

func (h *harness) next() outLine {
	h.t.Helper()
	timer := time.NewTimer(30 * time.Second)
	defer timer.Stop()
	select {
	case l, ok := <-h.lines:
		if !ok {
			h.t.Fatal("bot output ended")
		}
		return l
	case <-timer.C:
		h.t.Fatal("no output from the bot within 30s")
	}
	return outLine{}
}

// nextBot returns the next reply, skipping indicator lines.
func (h *harness) nextBot() outLine {
	h.t.Helper()
	for {
		if l := h.next(); l.kind == "bot" {
			return l
		}
	}
}

func startTerminal(t *testing.T, args []string, hk hooks) *harness {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	h := &harness{t: t, lines: make(chan outLine, 1000)}
	errc := make(chan error, 1)
	go func() {
		errc <- runWith(t.Context(), args, inR, outW, io.Discard, hk)
		outW.Close()
	}()
	go func() {
		defer close(h.lines)
		sc := bufio.NewScanner(outR)
		for sc.Scan() {
			line := sc.Text()
			ch, text, ok := strings.Cut(strings.TrimPrefix(line, "[#"), "] ")
			if !ok {
				continue
			}
			kind := "bot"
			switch {
			case strings.HasPrefix(text, "⏳ message"):
				kind = "waiting"
			case strings.HasPrefix(text, "▶ message"):
				kind = "started"
			}
			h.lines <- outLine{kind, ch, text}
		}
	}()
	h.send = func(ch, text string) {
		if _, err := fmt.Fprintf(inW, "#%s> %s\n", ch, text); err != nil {
			t.Fatal(err)
		}
	}
	h.finish = func() error {
		inW.Close()
		err := <-errc
		for range h.lines { // drain the reader goroutine
		}
		return err
	}
	return h
}

func startWeb(t *testing.T, args []string, hk hooks) *harness {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	addrc := make(chan net.Addr, 1)
	hk.webReady = func(a net.Addr) { addrc <- a }
	h := &harness{t: t, lines: make(chan outLine, 1000)}
	errc := make(chan error, 1)
	go func() {
		errc <- runWith(ctx, append([]string{"-http", "127.0.0.1:0"}, args...), nil, io.Discard, io.Discard, hk)
	}()
	var base string
	select {
	case a := <-addrc:
		base = "http://" + a.String()
	case err := <-errc:
		t.Fatalf("run: %v", err)
	}
	// Subscribe to the event stream before sending anything.
	req, _ := http.NewRequestWithContext(ctx, "GET", base+"/api/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("events content type %q", ct)
	}
	go func() {
		defer close(h.lines)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			data, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok {
				continue
			}
			var e struct{ Kind, Channel, Text, ID string }
			if json.Unmarshal([]byte(data), &e) != nil {
				continue
			}
			switch e.Kind {
			case "bot":
				h.lines <- outLine{"bot", e.Channel, e.Text}
			case "waiting", "started":
				h.lines <- outLine{e.Kind, e.Channel, e.ID}
			}
		}
	}()
	h.send = func(ch, text string) {
		body, _ := json.Marshal(map[string]string{"channel": ch, "text": text, "author": "tester"})
		resp, err := http.Post(base+"/api/send", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("POST /api/send: %s", resp.Status)
		}
	}
	h.finish = func() error {
		cancel()
		err := <-errc
		for range h.lines {
		}
		http.DefaultClient.CloseIdleConnections()
		return err
	}
	return h
}

var drivers = map[string]func(*testing.T, []string, hooks) *harness{
	"terminal": startTerminal,
	"web":      startWeb,
}

func sessionsFlag(t *testing.T) []string {
	return []string{"-sessions", filepath.Join(t.TempDir(), "sessions.json")}
}

// TestOneChannelStrictOrderNoOverlap: 20 messages into one channel are
// admitted while the first one is still running, then released: they run
// one at a time, in the order sent, and the replies come back in order.
func TestOneChannelStrictOrderNoOverlap(t *testing.T) {
	for name, start := range drivers {
		t.Run(name, func(t *testing.T) {
			release := make(chan struct{})
			ag := newRecAgent(func(ctx context.Context, req agent.Request) error {
				select {
				case <-release:
					return nil
				case <-ctx.Done():
					return ctx.Err()
				}
			})
			h := start(t, sessionsFlag(t), hooks{agent: ag})
			const n = 20
			for i := range n {
				h.send("general", fmt.Sprintf("msg %02d", i))
			}
			// Messages 2..20 arrive while message 1 runs: 19 waiting markers
			// prove all 20 were admitted before anything was released.
			for waiting := 0; waiting < n-1; {
				if l := h.next(); l.kind == "waiting" {
					waiting++
				}
			}
			close(release)
			for i := range n {
				if l := h.nextBot(); l.ch != "general" || l.text != fmt.Sprintf("re: msg %02d", i) {
					t.Fatalf("reply %d = %+v", i, l)
				}
			}
			if err := h.finish(); err != nil {
				t.Fatal(err)
			}
			spans, maxActive, _ := ag.snapshot()
			if len(spans) != n || maxActive["general"] != 1 {
				t.Fatalf("%d runs, max concurrent %d", len(spans), maxActive["general"])
			}
			for i, s := range spans {
				if s.prompt != fmt.Sprintf("msg %02d", i) {
					t.Fatalf("run %d was %q", i, s.prompt)
				}
				if s.seq != 2*i+1 { // start i, end i, start i+1, ...: never interleaved
					t.Fatalf("run %d started at logical time %d", i, s.seq)
				}
				if i > 0 && s.start.Before(spans[i-1].end) {
					t.Fatalf("run %d started before run %d ended", i, i-1)
				}
			}
		})
	}
}

// TestChannelsOverlap: one message into each of 5 channels; the agent
// blocks until all 5 runs have started, which only happens if the channels
// run in parallel.
func TestChannelsOverlap(t *testing.T) {
	for name, start := range drivers {
		t.Run(name, func(t *testing.T) {
			var (
				mu      sync.Mutex
				started int
				all     = make(chan struct{})
			)
			ag := newRecAgent(func(ctx context.Context, req agent.Request) error {
				mu.Lock()
				started++
				if started == 5 {
					close(all)
				}
				mu.Unlock()
				select {
				case <-all:
					return nil
				case <-ctx.Done():
					return ctx.Err()
				}
			})
			h := start(t, append(sessionsFlag(t), "-timeout", "20s"), hooks{agent: ag})
			for c := range 5 {
				h.send(fmt.Sprint("ch", c), "hello")
			}
			seen := map[string]bool{}
			for range 5 {
				l := h.nextBot()
				if l.text != "re: hello" {
					t.Fatalf("reply %+v (a timeout here means the channels were serialized)", l)
				}
				seen[l.ch] = true
			}
			if err := h.finish(); err != nil {
				t.Fatal(err)
			}
			if _, _, maxTotal := ag.snapshot(); len(seen) != 5 || maxTotal != 5 {
				t.Fatalf("channels answered %v, max concurrent runs %d", seen, maxTotal)
			}
		})
	}
}

func helperTemplate(t *testing.T) string {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("'%s' --channel {channel} --resume {session} -p {prompt}", self)
}

// TestHangingAgentKilledAtTimeout: a real agent process that hangs (with a
// child in its process group) is killed at -timeout, the whole group is
// gone, and the next message in the channel runs.
func TestHangingAgentKilledAtTimeout(t *testing.T) {
	pidfile := filepath.Join(t.TempDir(), "pids")
	t.Setenv("BOT_HELPER", "agent")
	t.Setenv("BOT_PIDFILE", pidfile)
	h := startTerminal(t, append(sessionsFlag(t), "-agent-cmd", helperTemplate(t), "-timeout", "3s"), hooks{})
	h.send("ops", "hang")
	h.send("ops", "after the hang")
	if l := h.nextBot(); !strings.Contains(l.text, "did not answer within 3s") {
		t.Fatalf("first reply %+v", l)
	}
	if l := h.nextBot(); !strings.Contains(l.text, "after the hang") {
		t.Fatalf("second reply %+v", l)
	}
	if err := h.finish(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(pidfile)
	if err != nil {
		t.Fatalf("the hanging helper never reported its pids: %v", err)
	}
	c, err := os.ReadFile(pidfile + ".child")
	if err != nil || !strings.HasSuffix(string(b), " "+string(c)) {
		t.Fatalf("the grandchild did not run (%v): pids %q, child %q", err, b, c)
	}
	for _, f := range strings.Fields(string(b)) {
		pid, _ := strconv.Atoi(f)
		waitGone(t, pid)
	}
}

// TestCrashingAgentDoesNotStopBot: an agent process that exits non-zero and
// an in-process agent that panics are reported in the channel; the bot
// keeps serving that channel.
func TestCrashingAgentDoesNotStopBot(t *testing.T) {
	t.Setenv("BOT_HELPER", "agent")
	h := startTerminal(t, append(sessionsFlag(t), "-agent-cmd", helperTemplate(t)), hooks{})
	h.send("dev", "crash")
	h.send("dev", "still there?")
	if l := h.nextBot(); !strings.Contains(l.text, "agent failed") || !strings.Contains(l.text, "simulated crash") {
		t.Fatalf("crash reply %+v", l)
	}
	if l := h.nextBot(); !strings.Contains(l.text, "still there?") {
		t.Fatalf("reply after crash %+v", l)
	}
	if err := h.finish(); err != nil {
		t.Fatal(err)
	}

	ag := newRecAgent(func(ctx context.Context, req agent.Request) error {
		if req.Prompt == "panic" {
			panic("agent bug")
		}
		return nil
	})
	h = startWeb(t, sessionsFlag(t), hooks{agent: ag})
	h.send("dev", "panic")
	h.send("dev", "after panic")
	if l := h.nextBot(); !strings.Contains(l.text, "agent panicked") {
		t.Fatalf("panic reply %+v", l)
	}
	if l := h.nextBot(); l.text != "re: after panic" {
		t.Fatalf("reply after panic %+v", l)
	}
	if err := h.finish(); err != nil {
		t.Fatal(err)
	}
}

// TestSessionResumedAndSurvivesRestart: the session id from the agent's
// JSON output is passed with --resume on the next call, and after a
// restart (same -sessions file) too.
func TestSessionResumedAndSurvivesRestart(t *testing.T) {
	t.Setenv("BOT_HELPER", "agent")
	sessions := filepath.Join(t.TempDir(), "state", "sessions.json")
	args := []string{"-sessions", sessions, "-agent-cmd", helperTemplate(t)}

	h := startTerminal(t, args, hooks{})
	h.send("general", "first")
	first := h.nextBot().text
	if strings.Contains(first, "--resume") {
		t.Fatalf("first call resumed a session: %q", first)
	}
	h.send("general", "second")
	second := h.nextBot().text
	i := strings.Index(second, "--resume sess-")
	if i < 0 {
		t.Fatalf("second call did not resume: %q", second)
	}
	sid := strings.Fields(second[i:])[1]
	if err := h.finish(); err != nil {
		t.Fatal(err)
	}

	h = startTerminal(t, args, hooks{})
	h.send("general", "after restart")
	if got := h.nextBot().text; !strings.Contains(got, "--resume "+sid+" ") {
		t.Fatalf("after restart: %q, want --resume %s", got, sid)
	}
	h.send("other", "new channel")
	if got := h.nextBot().text; strings.Contains(got, "--resume") {
		t.Fatalf("another channel got a session: %q", got)
	}
	if err := h.finish(); err != nil {
		t.Fatal(err)
	}
}

// TestCommandsEndToEnd drives /help, /model, /status and /reset through the
// terminal with the echo agent.
func TestCommandsEndToEnd(t *testing.T) {
	h := startTerminal(t, append(sessionsFlag(t), "-echo-delay", "0"), hooks{})
	step := func(text string) string {
		t.Helper()
		h.send("general", text)
		return h.nextBot().text
	}
	if got := step("/help"); !strings.Contains(got, "Talk to this channel's agent") {
		t.Fatalf("/help: %q", got)
	}
	for strings.Count(router.HelpText, "\n") > 0 { // the rest of /help, one line each
		if l := h.next(); strings.HasPrefix(l.text, "/help ") {
			break
		}
	}
	if got := step("hello"); got != "echo: hello" {
		t.Fatalf("hello: %q", got)
	}
	if got := step("/model sonnet"); got != "Model for this channel: sonnet" {
		t.Fatalf("/model: %q", got)
	}
	if got := step("hi"); got != "echo [sonnet]: hi" {
		t.Fatalf("after /model: %q", got)
	}
	if got := step("/status"); got != "session: echo-1" {
		t.Fatalf("/status first line: %q", got)
	}
	for range 4 { // the rest of /status
		h.next()
	}
	if got := step("/reset"); !strings.Contains(got, "Send /reset confirm") {
		t.Fatalf("/reset: %q", got)
	}
	if got := step("/reset confirm"); !strings.Contains(got, "echo-1 forgotten") {
		t.Fatalf("/reset confirm: %q", got)
	}
	if got := step("hello again"); got != "echo: hello again" {
		t.Fatalf("after reset: %q", got)
	}
	if err := h.finish(); err != nil {
		t.Fatal(err)
	}
}

// waitGone waits (bounded) until pid has exited: gone from /proc, or a
// zombie that some other process has to reap.
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if errors.Is(err, os.ErrNotExist) {
			return
		}
		if err != nil && syscall.Kill(pid, 0) == syscall.ESRCH {
			return
		}
		if i := bytes.LastIndexByte(b, ')'); i > 0 && len(b) > i+2 && (b[i+2] == 'Z' || b[i+2] == 'X') {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d still alive after its group was killed", pid)
		}
		<-tick.C
	}
}

// envWith returns the environment with key set to val. (Appending a second
// entry is not enough: a Go program reads the first one.)
func envWith(key, val string) []string {
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, key+"=") {
			env = append(env, e)
		}
	}
	return append(env, key+"="+val)
}

// TestMissingAgentProgramFailsAtStartup: a -agent-cmd whose program is not
// installed used to start the bot anyway and fail every message with
// "executable file not found"; it must stop at startup, naming the program,
// before anything else runs.
func TestMissingAgentProgramFailsAtStartup(t *testing.T) {
	var stderr bytes.Buffer
	err := run(t.Context(), append(sessionsFlag(t), "-agent-cmd", "no-such-agent-cli-7f3a -p {prompt}"),
		strings.NewReader("hello\n"), io.Discard, &stderr)
	if !errors.Is(err, exec.ErrNotFound) || !strings.Contains(err.Error(), "-agent-cmd") || !strings.Contains(err.Error(), "no-such-agent-cli-7f3a") {
		t.Fatalf("run = %v, want a -agent-cmd error naming the program and wrapping exec.ErrNotFound", err)
	}
	if strings.Contains(stderr.String(), "bot started") {
		t.Fatalf("the bot started anyway:\n%s", stderr.String())
	}
}

// TestIsLoopback: the web chat warns when it listens beyond loopback
// (-http :8081 listens on every interface, and the page runs the agent for
// anyone who reaches it).
func TestIsLoopback(t *testing.T) {
	for addr, want := range map[net.Addr]bool{
		&net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8081}: true,
		&net.TCPAddr{IP: net.IPv6loopback, Port: 8081}:       true,
		&net.TCPAddr{IP: net.IPv4zero, Port: 8081}:           false, // -http :8081
		&net.TCPAddr{IP: net.IPv6unspecified, Port: 8081}:    false,
		&net.TCPAddr{IP: net.IPv4(192, 168, 1, 5), Port: 80}: false,
		&net.UnixAddr{Name: "/tmp/x", Net: "unix"}:           false,
	} {
		if got := isLoopback(addr); got != want {
			t.Errorf("isLoopback(%v) = %v, want %v", addr, got, want)
		}
	}
}

// TestBadInvocationsAreUsageErrors: every bad invocation is refused before
// the bot starts, as a usage error (exit status 2), with a message that says
// what is wrong. A template without {prompt} used to be accepted, and the
// agent never saw the message.
func TestBadInvocationsAreUsageErrors(t *testing.T) {
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"unknown flag", []string{"-no-such-flag"}, "no-such-flag"},
		{"stray argument", []string{"sessions.json"}, "unexpected arguments"},
		{"bad log level", []string{"-log-level", "loud"}, "-log-level"},
		{"template without prompt", []string{"-agent-cmd", "claude -p --resume {session}"}, "no {prompt}"},
		{"unterminated quote", []string{"-agent-cmd", "claude '{prompt}"}, "-agent-cmd"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var stderr bytes.Buffer
			err := run(t.Context(), append(sessionsFlag(t), c.args...), strings.NewReader(""), io.Discard, &stderr)
			var u usageError
			if !errors.As(err, &u) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("run(%q) = %v, want a usage error mentioning %q", c.args, err, c.want)
			}
			if strings.Contains(stderr.String(), "bot started") {
				t.Fatalf("the bot started anyway:\n%s", stderr.String())
			}
		})
	}
	var stderr bytes.Buffer
	if err := run(t.Context(), []string{"-help"}, strings.NewReader(""), io.Discard, &stderr); !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("-help: %v", err)
	}
	if !strings.Contains(stderr.String(), "Usage: bot [flags]") || !strings.Contains(stderr.String(), "must contain") {
		t.Fatalf("-help does not print the usage paragraph:\n%s", stderr.String())
	}
}
