package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"time"
)

// ErrTemplate is returned (wrapped) by ParseTemplate for an unusable
// command template.
var ErrTemplate = errors.New("agent: bad command template")

// Placeholders substituted inside each argument of a command template.
const (
	PlaceholderPrompt  = "{prompt}"
	PlaceholderSession = "{session}"
	PlaceholderModel   = "{model}"
	PlaceholderChannel = "{channel}"
)

// MaxOutput caps the standard output kept from one run; the rest is
// discarded and the reply says so.
const MaxOutput = 8 << 20

// DefaultWaitDelay bounds how long Run waits for the command's output pipes
// to close after the process group was killed (a child that escaped the
// group could otherwise hold them open).
const DefaultWaitDelay = 2 * time.Second

// Command runs an external agent CLI from a template. It is safe for
// concurrent use; each Run starts its own process.
type Command struct {
	argv []string // the template, split into arguments
	// Env, if non-nil, is the environment of the command (default: the
	// bot's environment). Dir is its working directory (default: the
	// bot's).
	Env []string
	Dir string
}

// ParseTemplate splits a command template into arguments the way a POSIX
// shell splits words, without expanding anything: blanks separate
// arguments, '...' is literal, "..." allows \" and \\, and a backslash
// outside quotes escapes the next character. Placeholders ({prompt},
// {session}, {model}, {channel}) are replaced later, per argument.
//
// It returns an error wrapping ErrTemplate for an empty template or an
// unterminated quote or escape.
func ParseTemplate(tmpl string) (*Command, error) {
	argv, err := splitWords(tmpl)
	if err != nil {
		return nil, err
	}
	if len(argv) == 0 {
		return nil, fmt.Errorf("%w: empty", ErrTemplate)
	}
	return &Command{argv: argv}, nil
}

func splitWords(s string) ([]string, error) {
	var (
		out   []string
		cur   strings.Builder
		inArg bool
	)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			if inArg {
				out = append(out, cur.String())
				cur.Reset()
				inArg = false
			}
		case c == '\\':
			if i+1 >= len(s) {
				return nil, fmt.Errorf("%w: trailing backslash", ErrTemplate)
			}
			i++
			cur.WriteByte(s[i])
			inArg = true
		case c == '\'':
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				return nil, fmt.Errorf("%w: unterminated single quote", ErrTemplate)
			}
			cur.WriteString(s[i+1 : i+1+j])
			i += j + 1
			inArg = true
		case c == '"':
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) && (s[i+1] == '"' || s[i+1] == '\\') {
					i++
				}
				cur.WriteByte(s[i])
			}
			if i >= len(s) {
				return nil, fmt.Errorf("%w: unterminated double quote", ErrTemplate)
			}
			inArg = true
		default:
			cur.WriteByte(c)
			inArg = true
		}
	}
	if inArg {
		out = append(out, cur.String())
	}
	return out, nil
}

// Program returns the command's program (the template's first word).
func (c *Command) Program() string { return c.argv[0] }

// Check reports whether the program can be found (exec.LookPath), so a
// typo or a missing CLI is reported at startup rather than as a failure of
// every message. It returns the lookup error (wrapping exec.ErrNotFound
// when the program is not in $PATH).
func (c *Command) Check() error {
	if _, err := exec.LookPath(c.argv[0]); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	return nil
}

// Args returns the argument vector for req (program name first).
// Placeholders are replaced inside each argument; a value never splits or
// joins arguments. An argument that is exactly {session} or {model} when
// that value is empty is left out, together with the flag right before it
// if that starts with "-": so "--resume {session}" disappears on the first
// run of a channel, when there is no session yet.
func (c *Command) Args(req Request) []string {
	repl := strings.NewReplacer(
		PlaceholderPrompt, req.Prompt,
		PlaceholderSession, req.SessionID,
		PlaceholderModel, req.Model,
		PlaceholderChannel, req.Channel,
	)
	out := make([]string, 0, len(c.argv))
	for i, a := range c.argv {
		if (a == PlaceholderSession && req.SessionID == "") || (a == PlaceholderModel && req.Model == "") {
			if i > 0 && len(out) > 0 && strings.HasPrefix(c.argv[i-1], "-") && !strings.Contains(c.argv[i-1], "{") {
				out = out[:len(out)-1]
			}
			continue
		}
		out = append(out, repl.Replace(a))
	}
	return out
}

// Run starts the command for req in a new process group, waits for it, and
// parses its output. If the output is a JSON object (or an array whose last
// "result" element is one) with "result" and/or "session_id" fields, those
// are the reply; otherwise the whole standard output is the reply text.
//
// Errors: if ctx ends first, the whole process group is killed and Run
// returns an error wrapping context.Cause(ctx) (context.DeadlineExceeded on
// a timeout); a non-zero exit status or "is_error": true in the JSON
// returns an error wrapping ErrFailed; failing to start returns the
// exec error.
func (c *Command) Run(ctx context.Context, req Request) (Reply, error) {
	args := c.Args(req)
	cmd := exec.CommandContext(ctx, args[0], args[1:]...)
	cmd.Env = c.Env
	cmd.Dir = c.Dir
	setGroup(cmd)
	cmd.WaitDelay = DefaultWaitDelay
	var stdout, stderr capped
	stdout.max, stderr.max = MaxOutput, 4<<10
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if errors.Is(err, exec.ErrWaitDelay) {
		// The agent exited successfully but something it started kept the
		// output open past DefaultWaitDelay: use what it wrote.
		err = nil
	}
	if ctx.Err() != nil {
		return Reply{}, fmt.Errorf("agent: %s killed: %w", args[0], context.Cause(ctx))
	}
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return Reply{}, fmt.Errorf("%w: %s: %v: %s", ErrFailed, args[0], ee, strings.TrimSpace(stderr.String()))
		}
		return Reply{}, fmt.Errorf("agent: start %s: %w", args[0], err)
	}
	rep, isErr := parseOutput(stdout.Bytes())
	if stdout.dropped > 0 {
		rep.Text += fmt.Sprintf("\n[output truncated: %d bytes dropped]", stdout.dropped)
	}
	if isErr {
		return rep, fmt.Errorf("%w: %s", ErrFailed, rep.Text)
	}
	return rep, nil
}

type jsonResult struct {
	Type      string  `json:"type"`
	Result    *string `json:"result"`
	SessionID string  `json:"session_id"`
	IsError   bool    `json:"is_error"`
}

func parseOutput(out []byte) (Reply, bool) {
	trimmed := bytes.TrimSpace(out)
	var r jsonResult
	switch {
	case len(trimmed) > 0 && trimmed[0] == '{':
		if json.Unmarshal(trimmed, &r) != nil || (r.Result == nil && r.SessionID == "") {
			return Reply{Text: string(out)}, false
		}
	case len(trimmed) > 0 && trimmed[0] == '[':
		var all []jsonResult
		if json.Unmarshal(trimmed, &all) != nil {
			return Reply{Text: string(out)}, false
		}
		found := false
		for _, e := range all {
			if e.Type == "result" || e.Result != nil {
				r, found = e, true
			}
		}
		if !found {
			return Reply{Text: string(out)}, false
		}
	default:
		return Reply{Text: string(out)}, false
	}
	rep := Reply{SessionID: r.SessionID}
	if r.Result != nil {
		rep.Text = *r.Result
	}
	return rep, r.IsError
}

// capped is an io.Writer keeping at most max bytes and counting the rest.
type capped struct {
	bytes.Buffer
	max     int
	dropped int
}

func (c *capped) Write(p []byte) (int, error) {
	room := c.max - c.Len()
	if room < 0 {
		room = 0
	}
	if len(p) > room {
		c.dropped += len(p) - room
		c.Buffer.Write(p[:room])
		return len(p), nil
	}
	return c.Buffer.Write(p)
}
