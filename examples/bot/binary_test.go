package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestBinary builds the real binary and runs it twice: in terminal mode
// with piped stdin/stdout until end of input, and as a web chat on
// 127.0.0.1 that is stopped with SIGTERM.
func TestBinary(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "bot")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	sessions := filepath.Join(dir, "sessions.json")

	t.Run("terminal", func(t *testing.T) {
		cmd := exec.Command(bin, "-sessions", sessions, "-echo-delay", "0")
		cmd.Env = withoutDiscord()
		cmd.Stdin = strings.NewReader("#a> hi\n#b> there\nsame channel as before\n")
		var out, errb bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &errb
		if err := runBounded(t, cmd); err != nil {
			t.Fatalf("bot: %v\n%s", err, errb.String())
		}
		for _, want := range []string{"[#a] echo: hi\n", "[#b] echo: there\n", "[#b] echo: same channel as before\n"} {
			if !strings.Contains(out.String(), want) {
				t.Fatalf("output lacks %q:\n%s", want, out.String())
			}
		}
		if b, err := os.ReadFile(sessions); err != nil || !bytes.Contains(b, []byte(`"a"`)) {
			t.Fatalf("session file: %v\n%s", err, b)
		}
	})

	t.Run("bad invocation exits 2", func(t *testing.T) {
		for _, args := range [][]string{{"sessions.json"}, {"-no-such-flag"}, {"-agent-cmd", "agent --resume {session}"}} {
			cmd := exec.Command(bin, append([]string{"-sessions", sessions}, args...)...)
			cmd.Env = withoutDiscord()
			var errb bytes.Buffer
			cmd.Stderr = &errb
			err := runBounded(t, cmd)
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.ExitCode() != 2 {
				t.Fatalf("bot %q: %v, want exit status 2\n%s", args, err, errb.String())
			}
		}
	})

	t.Run("web+SIGTERM", func(t *testing.T) {
		cmd := exec.Command(bin, "-sessions", sessions, "-echo-delay", "0", "-http", "127.0.0.1:0")
		cmd.Env = withoutDiscord()
		stderr, _ := cmd.StderrPipe()
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill() })
		urlc := make(chan string, 1)
		go func() {
			re := regexp.MustCompile(`url=(http://127\.0\.0\.1:\d+/)`)
			sc := bufio.NewScanner(stderr)
			for sc.Scan() {
				if m := re.FindStringSubmatch(sc.Text()); m != nil {
					urlc <- m[1]
				}
			}
			close(urlc)
		}()
		var base string
		select {
		case base = <-urlc:
		case <-time.After(30 * time.Second):
			t.Fatal("the bot did not report its address")
		}
		if base == "" {
			t.Fatal("the bot exited before listening")
		}
		page, err := http.Get(base)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(page.Body)
		page.Body.Close()
		if !bytes.Contains(body, []byte("EventSource")) {
			t.Fatal("the chat page is missing")
		}
		ev, err := http.Get(base + "api/events")
		if err != nil {
			t.Fatal(err)
		}
		defer ev.Body.Close()
		resp, err := http.Post(base+"api/send", "application/json", strings.NewReader(`{"channel":"a","text":"over http"}`))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		sc := bufio.NewScanner(ev.Body)
		got := false
		for !got && sc.Scan() {
			var e struct{ Kind, Text string }
			if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok && json.Unmarshal([]byte(data), &e) == nil {
				got = e.Kind == "bot" && e.Text == "echo: over http"
			}
		}
		if !got {
			t.Fatal("no reply on the event stream")
		}
		cmd.Process.Signal(syscall.SIGTERM)
		if err := runBounded(t, cmd); err != nil {
			t.Fatalf("exit after SIGTERM: %v", err)
		}
	})
}

// TestBinarySecondSignalStopsDrain: the first SIGINT lets admitted work
// finish for up to -drain (here an hour) and says so; a second SIGINT
// must end that wait at once and answer every message, with a clean exit,
// instead of being ignored until the drain expires.
func TestBinarySecondSignalStopsDrain(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "bot")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	cmd := exec.Command(bin, "-sessions", filepath.Join(dir, "sessions.json"), "-echo-delay", "1h", "-drain", "1h")
	cmd.Env = withoutDiscord()
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	stderr, _ := cmd.StderrPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	lines := func(r io.Reader) <-chan string {
		c := make(chan string, 100)
		go func() {
			defer close(c)
			sc := bufio.NewScanner(r)
			for sc.Scan() {
				c <- sc.Text()
			}
		}()
		return c
	}
	outc, errc := lines(stdout), lines(stderr)
	var out []string
	waitFor := func(c <-chan string, substr string) {
		t.Helper()
		deadline := time.After(30 * time.Second)
		for {
			select {
			case l, ok := <-c:
				if !ok {
					t.Fatalf("stream ended before %q; stdout so far: %q", substr, out)
				}
				if c == outc {
					out = append(out, l)
				}
				if strings.Contains(l, substr) {
					return
				}
			case <-deadline:
				t.Fatalf("no %q within 30s", substr)
			}
		}
	}
	io.WriteString(stdin, "#a> runs for an hour\n#a> queued behind it\n")
	waitFor(outc, "message 2 is waiting")
	cmd.Process.Signal(os.Interrupt)
	waitFor(errc, "send SIGINT (Ctrl-C) again")
	cmd.Process.Signal(os.Interrupt)
	waitFor(outc, "Not processed")
	if err := runBounded(t, cmd); err != nil {
		t.Fatalf("exit after the second SIGINT: %v", err)
	}
	for l := range outc {
		out = append(out, l)
	}
	all := strings.Join(out, "\n")
	if !strings.Contains(all, "[#a] ⏹️ Stopped: the bot is shutting down") {
		t.Fatalf("the running message was not answered:\n%s", all)
	}
	stdin.Close()
}

func withoutDiscord() []string {
	var env []string
	for _, e := range os.Environ() {
		if !strings.HasPrefix(e, "DISCORD_TOKEN=") && !strings.HasPrefix(e, "BOT_HELPER=") {
			env = append(env, e)
		}
	}
	return env
}

// runBounded starts cmd if needed and waits for it for at most 60 s.
func runBounded(t *testing.T, cmd *exec.Cmd) error {
	t.Helper()
	if cmd.Process == nil {
		if err := cmd.Start(); err != nil {
			return err
		}
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(60 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatal("the bot did not exit within 60s")
		return nil
	}
}
