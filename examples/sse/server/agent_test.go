package server_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/steadfast-go/steadfast/examples/sse/server"
)

func collect(t *testing.T, a server.Agent, ctx context.Context, text string) (string, error) {
	t.Helper()
	var out strings.Builder
	err := a.Reply(ctx, server.Request{Session: "s1", Key: "k1", Text: text}, func(c string) error {
		out.WriteString(c)
		return nil
	})
	return out.String(), err
}

func TestSimulatorEchoesWordByWord(t *testing.T) {
	var chunks []string
	err := (&server.Simulator{}).Reply(t.Context(), server.Request{Text: "a b  c"}, func(c string) error {
		chunks = append(chunks, c)
		return nil
	})
	if err != nil || strings.Join(chunks, "|") != "echo:| a| b| c" {
		t.Fatalf("chunks %q, err %v", chunks, err)
	}
	if _, err := collect(t, &server.Simulator{}, t.Context(), "/fail"); !errors.Is(err, server.ErrSimulated) {
		t.Fatalf("/fail: %v", err)
	}
}

// The -agent-cmd agent: the message on stdin, stdout lines streamed, a
// failing command reported with its stderr, an interrupt kills it.
func TestCommandAgent(t *testing.T) {
	out, err := collect(t, &server.Command{Cmd: "tr a-z A-Z; echo; echo \"$SSE_MESSAGE_KEY\""}, t.Context(), "hello\nworld")
	if err != nil || out != "HELLO\nWORLD\nk1\n" {
		t.Fatalf("got %q, %v", out, err)
	}
	_, err = collect(t, &server.Command{Cmd: "echo broken >&2; exit 3"}, t.Context(), "x")
	if err == nil || !strings.Contains(err.Error(), "exit status 3") || !strings.Contains(err.Error(), "broken") {
		t.Fatalf("failing command: %v", err)
	}
	ctx, cancel := context.WithCancelCause(t.Context())
	started := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- (&server.Command{Cmd: "echo started; exec sleep 60"}).Reply(ctx, server.Request{}, func(string) error {
			close(started)
			return nil
		})
	}()
	<-started
	stop := errors.New("interrupted")
	cancel(stop)
	if err := <-done; !errors.Is(err, stop) {
		t.Fatalf("interrupted command: %v", err)
	}
}
