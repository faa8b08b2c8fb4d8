package server

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"time"
)

// Request is one user message for the agent.
type Request struct {
	Session string // session id
	Key     string // the message's idempotency key
	Text    string
}

// Agent produces the reply to a user message. Reply streams the reply by
// calling emit with successive chunks, and returns when the reply is
// complete (nil) or failed. ctx ends when the user interrupts or stops the
// session or the server shuts down; Reply should then return promptly. The
// server survives anything Reply does, panics included: the session moves to
// the error state and its clients are told.
//
// Reply is called for one message of a session at a time, in the order the
// messages were accepted; different sessions run concurrently.
type Agent interface {
	Reply(ctx context.Context, req Request, emit func(chunk string) error) error
}

// Simulator is the built-in agent: it echoes the message back word by word
// with a typing delay. A few messages trigger faults, to show what the
// server does with them: "/panic" panics, "/fail" returns an error,
// "/panic-on-interrupt" says it waits and panics when interrupted (the
// origin's crash), and "/long" types a long reply (to interrupt).
//
// Its zero value is ready to use and it is safe for concurrent use.
type Simulator struct {
	// Delay is the pause between words (0: none).
	Delay time.Duration
}

// ErrSimulated is the error of the "/fail" message.
var ErrSimulated = errors.New("server: simulated agent failure")

// Reply implements Agent.
func (s *Simulator) Reply(ctx context.Context, req Request, emit func(string) error) error {
	text := strings.TrimSpace(req.Text)
	words := strings.Fields("echo: " + text)
	delay := s.Delay
	switch text {
	case "/panic":
		panic("simulated agent crash")
	case "/fail":
		return ErrSimulated
	case "/panic-on-interrupt":
		if err := emit("waiting for an interrupt"); err != nil {
			return err
		}
		<-ctx.Done()
		panic("interrupt() threw: simulated ProcessTransport crash")
	case "/long":
		words = words[:0]
		for i := range 200 {
			words = append(words, fmt.Sprintf("word%d", i))
		}
		if delay == 0 {
			delay = 10 * time.Millisecond
		}
	}
	var t *time.Timer
	for i, w := range words {
		if i > 0 {
			w = " " + w
			if delay > 0 {
				if t == nil {
					t = time.NewTimer(delay)
					defer t.Stop()
				} else {
					t.Reset(delay)
				}
				select {
				case <-ctx.Done():
					return context.Cause(ctx)
				case <-t.C:
				}
			}
		}
		if err := ctx.Err(); err != nil {
			return context.Cause(ctx)
		}
		if err := emit(w); err != nil {
			return err
		}
	}
	return nil
}

// Command is an agent that runs a shell command per message: the message
// on its stdin, each line of its stdout streamed as a chunk, a non-zero exit
// (with the end of its stderr) reported as an error. Interrupting kills the
// process.
//
// It is safe for concurrent use; Cmd must be set.
type Command struct {
	// Cmd is run with "sh -c". The environment gets SSE_SESSION and
	// SSE_MESSAGE_KEY.
	Cmd string
}

// Reply implements Agent.
func (c *Command) Reply(ctx context.Context, req Request, emit func(string) error) error {
	cmd := exec.CommandContext(ctx, "sh", "-c", c.Cmd)
	cmd.Env = append(cmd.Environ(), "SSE_SESSION="+req.Session, "SSE_MESSAGE_KEY="+req.Key)
	cmd.Stdin = strings.NewReader(req.Text)
	cmd.WaitDelay = 2 * time.Second
	var stderr tailBuffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("agent command: %w", err)
	}
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 0, 4096), 64<<10)
	var emitErr error
	for sc.Scan() {
		if emitErr == nil {
			emitErr = emit(sc.Text() + "\n")
		}
	}
	io.Copy(io.Discard, out)
	werr := cmd.Wait()
	switch {
	case ctx.Err() != nil:
		return context.Cause(ctx)
	case emitErr != nil:
		return emitErr
	case werr != nil:
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			return fmt.Errorf("agent command: %w: %s", werr, msg)
		}
		return fmt.Errorf("agent command: %w", werr)
	}
	return sc.Err()
}

// tailBuffer keeps the last 1 KiB written to it.
type tailBuffer struct{ b bytes.Buffer }

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.b.Write(p)
	if t.b.Len() > 1024 {
		rest := t.b.Bytes()[t.b.Len()-1024:]
		t.b.Reset()
		t.b.Write(rest)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string { return t.b.String() }
