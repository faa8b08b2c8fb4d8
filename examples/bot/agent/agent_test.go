package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// The test binary doubles as a fake agent CLI: with AGENT_HELPER set it
// behaves as described in helperMain instead of running tests.
func TestMain(m *testing.M) {
	if mode := os.Getenv("AGENT_HELPER"); mode != "" {
		os.Exit(helperMain(mode))
	}
	goleak.VerifyTestMain(m)
}

func helperMain(mode string) int {
	args := os.Args[1:]
	switch mode {
	case "args": // print the argv we got, as the "result"
		b, _ := json.Marshal(args)
		out, _ := json.Marshal(map[string]any{"type": "result", "result": string(b), "session_id": "sess-42"})
		fmt.Println(string(out))
		return 0
	case "plain":
		fmt.Print("plain text answer")
		return 0
	case "iserror":
		fmt.Println(`{"type":"result","is_error":true,"result":"quota exceeded","session_id":"s"}`)
		return 0
	case "crash":
		fmt.Fprintln(os.Stderr, "boom")
		return 3
	case "hang": // start a grandchild in our group, report both pids, block
		self, _ := os.Executable()
		child, err := os.StartProcess(self, []string{self}, &os.ProcAttr{
			Env:   envWith("AGENT_HELPER", "sleep"),
			Files: []*os.File{nil, os.Stdout, os.Stderr}, // holds our stdout pipe open
		})
		if err != nil {
			return 4
		}
		pids := fmt.Sprintf("%d %d", os.Getpid(), child.Pid)
		if err := os.WriteFile(os.Getenv("AGENT_PIDFILE")+".tmp", []byte(pids), 0o600); err != nil {
			return 5
		}
		os.Rename(os.Getenv("AGENT_PIDFILE")+".tmp", os.Getenv("AGENT_PIDFILE"))
		blockUntilKilled()
	case "background": // leave a child holding stdout open, answer, exit 0
		self, _ := os.Executable()
		child, err := os.StartProcess(self, []string{self}, &os.ProcAttr{
			Env:   envWith("AGENT_HELPER", "sleep"),
			Files: []*os.File{nil, os.Stdout, os.Stderr},
		})
		if err != nil {
			return 4
		}
		os.WriteFile(os.Getenv("AGENT_PIDFILE"), []byte(strconv.Itoa(child.Pid)), 0o600)
		fmt.Println(`{"result":"done anyway","session_id":"bg"}`)
		return 0
	case "sleep": // the grandchild: prove it runs, then block
		if f := os.Getenv("AGENT_PIDFILE"); f != "" {
			os.WriteFile(f+".child", []byte(strconv.Itoa(os.Getpid())), 0o600)
		}
		blockUntilKilled()
	}
	return 2
}

// blockUntilKilled hangs the helper process until a signal ends it. A bare
// select {} is not enough: with no other goroutine alive (no -race runtime
// helpers), the Go runtime aborts the process as deadlocked, and the test
// would see a crash instead of a hang. A registered signal channel keeps the
// runtime's signal watcher alive, so the process really waits.
func blockUntilKilled() {
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGUSR1)
	<-c
	os.Exit(6)
}

func helperCommand(t *testing.T, mode string, tmpl string) *Command {
	t.Helper()
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	c, err := ParseTemplate("'" + self + "' " + tmpl)
	if err != nil {
		t.Fatal(err)
	}
	c.Env = envWith("AGENT_HELPER", mode)
	return c
}

func TestParseTemplate(t *testing.T) {
	for tmpl, want := range map[string][]string{
		`claude -p --resume {session} --output-format json {prompt}`: {"claude", "-p", "--resume", "{session}", "--output-format", "json", "{prompt}"},
		`a 'b c' "d \"e\" \\" f\ g`:                                  {"a", "b c", `d "e" \`, "f g"},
		`  x   ''  `:                                                 {"x", ""},
	} {
		c, err := ParseTemplate(tmpl)
		if err != nil {
			t.Fatalf("%q: %v", tmpl, err)
		}
		if !reflect.DeepEqual(c.argv, want) {
			t.Errorf("%q: got %q want %q", tmpl, c.argv, want)
		}
	}
	for _, bad := range []string{"", "   ", `a 'b`, `a "b`, `a \`} {
		if _, err := ParseTemplate(bad); !errors.Is(err, ErrTemplate) {
			t.Errorf("%q: err = %v, want ErrTemplate", bad, err)
		}
	}
}

func TestArgsSubstitutesPerArgumentAndDropsEmptyResume(t *testing.T) {
	c, _ := ParseTemplate(`claude -p --resume {session} --model {model} --output-format json --tag=ch-{channel} {prompt}`)
	evil := `it's "quoted"; rm -rf / $(touch pwned) ` + "`id`"
	got := c.Args(Request{Channel: "42", Prompt: evil})
	want := []string{"claude", "-p", "--output-format", "json", "--tag=ch-42", evil}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("first run: got %q want %q", got, want)
	}
	got = c.Args(Request{Channel: "42", Prompt: "hi", SessionID: "s1", Model: "opus"})
	want = []string{"claude", "-p", "--resume", "s1", "--model", "opus", "--output-format", "json", "--tag=ch-42", "hi"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("resumed run: got %q want %q", got, want)
	}
}

func TestPromptIsNeverInterpretedByAShell(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "pwned")
	c := helperCommand(t, "args", "-p {prompt}")
	prompt := fmt.Sprintf(`x"; touch %s; echo "$(touch %s)`, marker, marker)
	rep, err := c.Run(t.Context(), Request{Prompt: prompt})
	if err != nil {
		t.Fatal(err)
	}
	var argv []string
	if err := json.Unmarshal([]byte(rep.Text), &argv); err != nil {
		t.Fatalf("reply %q: %v", rep.Text, err)
	}
	if !reflect.DeepEqual(argv, []string{"-p", prompt}) {
		t.Fatalf("argv = %q", argv)
	}
	if _, err := os.Stat(marker); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the prompt was executed: %v", err)
	}
	if rep.SessionID != "sess-42" {
		t.Fatalf("session = %q", rep.SessionID)
	}
}

func TestRunOutputs(t *testing.T) {
	rep, err := helperCommand(t, "plain", "").Run(t.Context(), Request{})
	if err != nil || rep.Text != "plain text answer" || rep.SessionID != "" {
		t.Fatalf("plain: %+v %v", rep, err)
	}
	_, err = helperCommand(t, "iserror", "").Run(t.Context(), Request{})
	if !errors.Is(err, ErrFailed) || !strings.Contains(err.Error(), "quota exceeded") {
		t.Fatalf("is_error: %v", err)
	}
	_, err = helperCommand(t, "crash", "").Run(t.Context(), Request{})
	if !errors.Is(err, ErrFailed) || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("crash: %v", err)
	}
	c, _ := ParseTemplate("/nonexistent/agent {prompt}")
	if _, err := c.Run(t.Context(), Request{}); err == nil || errors.Is(err, ErrFailed) {
		t.Fatalf("missing binary: %v", err)
	}
}

func TestParseOutputArrayForm(t *testing.T) {
	rep, isErr := parseOutput([]byte(`[{"type":"system","session_id":"a"},{"type":"result","result":"done","session_id":"b"}]`))
	if isErr || rep.Text != "done" || rep.SessionID != "b" {
		t.Fatalf("%+v %v", rep, isErr)
	}
	rep, _ = parseOutput([]byte(`{"unrelated": 1}`))
	if rep.Text != `{"unrelated": 1}` {
		t.Fatalf("non-agent JSON should be shown as is: %+v", rep)
	}
}

// TestTimeoutKillsWholeProcessGroup: a hanging agent that started a child
// is killed, child included, when the run's context times out; Run returns
// promptly even though the child held the output pipe.
func TestTimeoutKillsWholeProcessGroup(t *testing.T) {
	pidfile := filepath.Join(t.TempDir(), "pids")
	c := helperCommand(t, "hang", "{prompt}")
	c.Env = append(c.Env, "AGENT_PIDFILE="+pidfile)
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	_, err := c.Run(ctx, Request{Prompt: "hang"})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want DeadlineExceeded", err)
	}
	b, err := os.ReadFile(pidfile)
	if err != nil {
		t.Fatalf("helper never reported its pids (start took longer than the timeout?): %v", err)
	}
	c2, err := os.ReadFile(pidfile + ".child")
	if err != nil || !strings.HasSuffix(string(b), " "+string(c2)) {
		t.Fatalf("the grandchild did not run (%v): pids %q, child %q", err, b, c2)
	}
	for _, f := range strings.Fields(string(b)) {
		pid, _ := strconv.Atoi(f)
		waitGone(t, pid)
	}
}

// waitGone waits (bounded) until pid has exited: no longer in /proc, or a
// zombie waiting for a reaper that is not us.
func waitGone(t *testing.T, pid int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				return
			}
			// Without /proc, fall back to kill(pid, 0).
			if syscall.Kill(pid, 0) == syscall.ESRCH {
				return
			}
		} else if i := strings.LastIndexByte(string(b), ')'); i > 0 && len(b) > i+2 && (b[i+2] == 'Z' || b[i+2] == 'X') {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %d still running after the group was killed", pid)
		}
		<-tick.C
	}
}

func TestEchoAgent(t *testing.T) {
	var e Echo
	r1, err := e.Run(t.Context(), Request{Prompt: "hi"})
	if err != nil || r1.Text != "echo: hi" || r1.SessionID == "" {
		t.Fatalf("%+v %v", r1, err)
	}
	r2, _ := e.Run(t.Context(), Request{Prompt: "again", SessionID: r1.SessionID, Model: "m"})
	if r2.SessionID != r1.SessionID || r2.Text != "echo [m]: again" {
		t.Fatalf("%+v", r2)
	}
	release := make(chan struct{})
	e2 := Echo{Delay: time.Hour, Wait: func(ctx context.Context, d time.Duration) error {
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := e2.Run(ctx, Request{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled echo: %v", err)
	}
	close(release)
	if _, err := e2.Run(t.Context(), Request{}); err != nil {
		t.Fatal(err)
	}
}

// TestBackgroundChildHoldingOutput: an agent that exits 0 but leaves a
// child holding its stdout still answers, after DefaultWaitDelay.
func TestBackgroundChildHoldingOutput(t *testing.T) {
	pidfile := filepath.Join(t.TempDir(), "pid")
	c := helperCommand(t, "background", "")
	c.Env = append(c.Env, "AGENT_PIDFILE="+pidfile)
	rep, err := c.Run(t.Context(), Request{})
	if b, rerr := os.ReadFile(pidfile); rerr == nil {
		pid, _ := strconv.Atoi(string(b))
		syscall.Kill(pid, syscall.SIGKILL)
		waitGone(t, pid)
	}
	if err != nil || rep.Text != "done anyway" || rep.SessionID != "bg" {
		t.Fatalf("%+v %v", rep, err)
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
