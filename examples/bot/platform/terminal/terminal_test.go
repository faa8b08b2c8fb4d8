package terminal

import (
	"bytes"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/steadfast-go/steadfast/examples/bot/chat"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type recorder struct {
	mu   sync.Mutex
	msgs []chat.Message
}

func (r *recorder) Handle(m chat.Message) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, m)
	return nil
}

// TestChannelPrefixes: "#name>" selects the channel for that line and the
// following unprefixed lines, also after leading blanks (a pasted or
// indented "  #qa> x" used to go to the current channel verbatim); a bare
// "#ops>" switches and says so; blank lines are skipped; ids count up.
func TestChannelPrefixes(t *testing.T) {
	in := strings.NewReader("hello\n#dev> fix the tests\nand this too\n#ops>\n\n#ops> deploy\n#not a prefix\n  \t#qa> spaced\n")
	var rec recorder
	var out bytes.Buffer
	if err := New(in, &out).Run(t.Context(), &rec); err != nil {
		t.Fatal(err)
	}
	if want := "[#ops] now in #ops: lines without a #name> prefix go here\n"; out.String() != want {
		t.Fatalf("output %q, want %q", out.String(), want)
	}
	want := []chat.Message{
		{Channel: "general", ID: "1", Author: "you", Text: "hello"},
		{Channel: "dev", ID: "2", Author: "you", Text: "fix the tests"},
		{Channel: "dev", ID: "3", Author: "you", Text: "and this too"},
		{Channel: "ops", ID: "4", Author: "you", Text: "deploy"},
		{Channel: "ops", ID: "5", Author: "you", Text: "#not a prefix"},
		{Channel: "qa", ID: "6", Author: "you", Text: "spaced"},
	}
	if len(rec.msgs) != len(want) {
		t.Fatalf("got %+v", rec.msgs)
	}
	for i := range want {
		if rec.msgs[i] != want[i] {
			t.Fatalf("message %d = %+v, want %+v", i, rec.msgs[i], want[i])
		}
	}
}

func TestOutputFormat(t *testing.T) {
	var out bytes.Buffer
	term := New(strings.NewReader(""), &out)
	term.Send(t.Context(), chat.Outgoing{Channel: "dev", Text: "line one\nline two\n"})
	term.Waiting(t.Context(), chat.Message{Channel: "dev", ID: "7"}, true)
	term.Waiting(t.Context(), chat.Message{Channel: "dev", ID: "7"}, false)
	term.Typing(t.Context(), "dev") // silent unless ShowTyping
	want := "[#dev] line one\n[#dev] line two\n[#dev] ⏳ message 7 is waiting: the channel is busy\n[#dev] ▶ message 7 started\n"
	if out.String() != want {
		t.Fatalf("output:\n%s\nwant:\n%s", out.String(), want)
	}
}

type closedHandler struct{}

func (closedHandler) Handle(chat.Message) error { return chat.ErrClosed }

func TestStopsWhenBotCloses(t *testing.T) {
	var out bytes.Buffer
	if err := New(strings.NewReader("a\nb\n"), &out).Run(t.Context(), closedHandler{}); err != nil {
		t.Fatal(err)
	}
	if strings.Count(out.String(), "not accepted") != 1 {
		t.Fatalf("output %q", out.String())
	}
}

// TestHint: a person at a terminal is told how to pick a channel and get
// help before typing anything; piped input (Hint off) gets no extra line.
func TestHint(t *testing.T) {
	for _, hint := range []bool{true, false} {
		var out bytes.Buffer
		term := New(strings.NewReader(""), &out)
		term.Hint = hint
		if err := term.Run(t.Context(), &recorder{}); err != nil {
			t.Fatal(err)
		}
		got := out.String()
		if hint && (!strings.HasPrefix(got, "[#general] Type a message") || !strings.Contains(got, "#dev> text") || !strings.Contains(got, "/help")) {
			t.Fatalf("hint: %q", got)
		}
		if !hint && got != "" {
			t.Fatalf("no hint wanted, got %q", got)
		}
	}
}
