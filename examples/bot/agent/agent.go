// Package agent runs the coding agent that answers a chat channel: the
// built-in [Echo] agent, or any command line through a [Command] template
// such as
//
//	claude -p --resume {session} --model {model} --output-format json {prompt}
//
// The template is split into arguments once, without a shell; placeholders
// are substituted inside each argument, so a prompt full of quotes, `;` or
// `$(...)` is passed as one argument and never interpreted. The command runs
// in its own process group, and when the run's context ends (the per-run
// timeout, or shutdown) the whole group is killed, including any children
// the agent started.
package agent

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"time"
)

// ErrFailed is returned (wrapped) when the agent ran but failed: a non-zero
// exit status or an error result in its JSON output.
var ErrFailed = errors.New("agent: run failed")

// Request is one prompt for a channel's agent session.
type Request struct {
	Channel   string // platform channel id
	Prompt    string // the user's message
	SessionID string // session to resume; empty starts a new one
	Model     string // model name; empty means the agent's default
}

// Reply is an agent's answer.
type Reply struct {
	Text      string // the answer to show
	SessionID string // the session to resume next time; empty if unknown
}

// An Agent answers prompts. Run must return when ctx ends (the router sets a
// per-run timeout); implementations must be safe for concurrent use, since
// different channels run in parallel.
type Agent interface {
	Run(ctx context.Context, req Request) (Reply, error)
}

// Echo is the built-in offline agent: it waits Delay, then repeats the
// prompt. It assigns a session id on the first call for a channel and keeps
// returning the session it was given, so session persistence can be tried
// without a real agent.
//
// Echo is safe for concurrent use. The zero value answers immediately.
type Echo struct {
	Delay time.Duration
	// Wait, if set, replaces the timer used for Delay (tests drive it with
	// channels). It must return ctx.Err() when ctx ends first.
	Wait func(ctx context.Context, d time.Duration) error

	next atomic.Uint64 // session counter
}

// Run waits for the delay and echoes the prompt. It returns ctx.Err() if
// ctx ends first.
func (e *Echo) Run(ctx context.Context, req Request) (Reply, error) {
	wait := e.Wait
	if wait == nil {
		wait = sleep
	}
	if e.Delay > 0 || e.Wait != nil {
		if err := wait(ctx, e.Delay); err != nil {
			return Reply{}, err
		}
	} else if err := ctx.Err(); err != nil {
		return Reply{}, err
	}
	sid := req.SessionID
	if sid == "" {
		sid = "echo-" + strconv.FormatUint(e.next.Add(1), 10)
	}
	model := ""
	if req.Model != "" {
		model = " [" + req.Model + "]"
	}
	return Reply{Text: fmt.Sprintf("echo%s: %s", model, req.Prompt), SessionID: sid}, nil
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
