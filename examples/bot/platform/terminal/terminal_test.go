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
// following unprefixed lines; blank lines are skipped; ids count up.
func TestChannelPrefixes(t *testing.T) {
	in := strings.NewReader("hello\n#dev> fix the tests\nand this too\n#ops>\n\n#ops> deploy\n#not a prefix\n")
	var rec recorder
	if err := New(in, &bytes.Buffer{}).Run(t.Context(), &rec); err != nil {
		t.Fatal(err)
	}
	want := []chat.Message{
		{Channel: "general", ID: "1", Author: "you", Text: "hello"},
		{Channel: "dev", ID: "2", Author: "you", Text: "fix the tests"},
		{Channel: "dev", ID: "3", Author: "you", Text: "and this too"},
		{Channel: "ops", ID: "4", Author: "you", Text: "deploy"},
		{Channel: "ops", ID: "5", Author: "you", Text: "#not a prefix"},
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
