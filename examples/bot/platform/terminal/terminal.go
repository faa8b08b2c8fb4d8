// Package terminal is the bot's offline chat platform: messages are lines
// on standard input, replies are lines on standard output.
//
// A line "#general> fix the tests" sends "fix the tests" to channel
// general and makes general the current channel; a line without a prefix
// goes to the current channel; "#dev>" alone switches channels (and says
// so). Blanks before the prefix are ignored. Output lines are prefixed
// with the channel: "[#general] echo: fix the tests".
package terminal

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"unicode"

	"github.com/steadfast-go/steadfast/examples/bot/chat"
)

// Limit is the chunk size used for terminal replies.
const Limit = 4000

// HintText is the line Run prints first when Hint is set.
const HintText = "Type a message and press Enter. \"#dev> text\" talks in channel #dev (lines without a prefix stay in the last channel); /help lists commands; Ctrl-D or Ctrl-C quits."

// MaxLine is the longest input line accepted.
const MaxLine = 1 << 20

var prefix = regexp.MustCompile(`^#([A-Za-z0-9_.-]{1,64})>\s?`)

// Terminal reads messages from an io.Reader and writes replies to an
// io.Writer. It is safe for concurrent use; output lines are never
// interleaved. Create it with New.
type Terminal struct {
	in  io.Reader
	out io.Writer
	// ShowTyping prints a line each time the typing indicator is set.
	ShowTyping bool
	// Hint makes Run start with a line explaining the input syntax (for
	// a person at a terminal; off for piped input).
	Hint bool

	mu sync.Mutex // serializes writes to out
}

// New returns a Terminal reading in and writing out. The first channel is
// "general".
func New(in io.Reader, out io.Writer) *Terminal {
	return &Terminal{in: in, out: out}
}

// Name returns "terminal".
func (t *Terminal) Name() string { return "terminal" }

// Limit returns the reply chunk size.
func (t *Terminal) Limit() int { return Limit }

// Run reads lines until end of input (returns nil) or ctx ends (returns
// nil; the blocked read is abandoned and ends with the input). A line
// longer than MaxLine returns an error wrapping bufio.ErrTooLong.
func (t *Terminal) Run(ctx context.Context, h chat.Handler) error {
	lines := make(chan string)
	errc := make(chan error, 1)
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		sc := bufio.NewScanner(t.in)
		sc.Buffer(make([]byte, 64<<10), MaxLine)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			case <-stop:
				return
			}
		}
		errc <- sc.Err()
	}()
	current, n := "general", 0
	if t.Hint {
		t.println(current, HintText)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-errc:
			return err
		case line := <-lines:
			text := line
			trimmed := strings.TrimLeftFunc(line, unicode.IsSpace)
			if m := prefix.FindStringSubmatch(trimmed); m != nil {
				current, text = m[1], trimmed[len(m[0]):]
				if strings.TrimSpace(text) == "" {
					t.println(current, "now in #"+current+": lines without a #name> prefix go here")
					continue
				}
			}
			if strings.TrimSpace(text) == "" {
				continue
			}
			n++
			msg := chat.Message{Channel: current, ID: strconv.Itoa(n), Author: "you", Text: text}
			if err := h.Handle(msg); err != nil {
				t.println(current, "not accepted: "+err.Error())
				if errors.Is(err, chat.ErrClosed) {
					return nil
				}
			}
		}
	}
}

// Send prints the reply, each line prefixed with the channel.
func (t *Terminal) Send(_ context.Context, o chat.Outgoing) error {
	return t.println(o.Channel, o.Text)
}

// Typing prints a typing line if ShowTyping is set.
func (t *Terminal) Typing(_ context.Context, ch string) error {
	if !t.ShowTyping {
		return nil
	}
	return t.println(ch, "… typing")
}

// Waiting prints when a message has to wait for its channel and when it
// starts.
func (t *Terminal) Waiting(_ context.Context, m chat.Message, on bool) error {
	if on {
		return t.println(m.Channel, fmt.Sprintf("⏳ message %s is waiting: the channel is busy", m.ID))
	}
	return t.println(m.Channel, fmt.Sprintf("▶ message %s started", m.ID))
}

func (t *Terminal) println(ch, text string) error {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(text, "\n"), "\n") {
		b.WriteString("[#" + ch + "] " + l + "\n")
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	_, err := io.WriteString(t.out, b.String())
	return err
}
