package discord

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/discord"
	"github.com/disgoorg/disgo/events"
	"github.com/disgoorg/snowflake/v2"
	"go.uber.org/goleak"

	"github.com/steadfast-go/steadfast/examples/bot/agent"
	"github.com/steadfast-go/steadfast/examples/bot/chunk"
	"github.com/steadfast-go/steadfast/examples/bot/router"
	"github.com/steadfast-go/steadfast/examples/bot/store"
)

func TestMain(m *testing.M) {
	// disgo v0.18's REST rate limiter starts a cleanup goroutine with no
	// way to stop it (rest.NewRateLimiter); everything else must stop.
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("github.com/disgoorg/disgo/rest.(*rateLimiterImpl).cleanup"))
}

const (
	botID     = snowflake.ID(111111111111111111)
	channelID = snowflake.ID(222222222222222222)
	userID    = snowflake.ID(333333333333333333)
)

var token = base64.RawStdEncoding.EncodeToString([]byte(botID.String())) + ".fake.token"

// fakeREST is an httptest fake of the Discord REST endpoints the bot uses.
type fakeREST struct {
	mu       sync.Mutex
	calls    []string // "METHOD path"
	messages []discord.MessageCreate
	next     int
}

func (f *fakeREST) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if r.Method == "GET" && strings.HasSuffix(r.URL.Path, "/gateway") {
		// disgo asks for the gateway URL when the client is built; the
		// tests never connect to it.
		fmt.Fprint(w, `{"url":"wss://127.0.0.1:1/unused"}`)
		return
	}
	if r.Header.Get("Authorization") != "Bot "+token {
		http.Error(w, `{"message":"401: Unauthorized","code":0}`, http.StatusUnauthorized)
		return
	}
	f.calls = append(f.calls, r.Method+" "+r.URL.EscapedPath())
	switch {
	case r.Method == "POST" && strings.HasSuffix(r.URL.Path, "/messages"):
		var mc discord.MessageCreate
		body, _ := io.ReadAll(r.Body)
		if err := json.Unmarshal(body, &mc); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if utf8.RuneCountInString(mc.Content) > 2000 {
			http.Error(w, `{"message":"Invalid Form Body","code":50035}`, http.StatusBadRequest)
			return
		}
		f.messages = append(f.messages, mc)
		f.next++
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"id":"%d","channel_id":"%d","content":%q,"author":{"id":"%d","username":"bot"}}`,
			900000000000000000+f.next, channelID, mc.Content, botID)
	case strings.HasSuffix(r.URL.Path, "/typing"),
		strings.Contains(r.URL.Path, "/reactions/"):
		w.WriteHeader(http.StatusNoContent)
	default:
		http.Error(w, `{"message":"404: Not Found","code":0}`, http.StatusNotFound)
	}
}

func (f *fakeREST) snapshot() ([]string, []discord.MessageCreate) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...), append([]discord.MessageCreate(nil), f.messages...)
}

type setup struct {
	fake   *fakeREST
	d      *Discord
	r      *router.Router
	client bot.Client
}

func newSetup(t *testing.T, ag agent.Agent, channels ...string) *setup {
	t.Helper()
	fake := &fakeREST{}
	srv := httptest.NewServer(fake)
	t.Cleanup(srv.Close)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	d, err := New(Config{Token: token, RestURL: srv.URL, Channels: channels, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(filepath.Join(t.TempDir(), "s.json"))
	if err != nil {
		t.Fatal(err)
	}
	r := router.New(router.Config{Platform: d, Agent: ag, Store: st, Logger: log})
	client, err := d.Client(r)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close(context.Background()) })
	return &setup{fake: fake, d: d, r: r, client: client}
}

var nextMsg = snowflake.ID(500000000000000000)

// dispatch delivers a MessageCreate through disgo's event manager, as the
// gateway goroutine does.
func (s *setup) dispatch(content string, author snowflake.ID, isBot bool, mention bool) snowflake.ID {
	nextMsg++
	m := discord.Message{ID: nextMsg, ChannelID: channelID, Content: content,
		Author: discord.User{ID: author, Username: "ann", Bot: isBot}}
	if mention {
		m.Mentions = []discord.User{{ID: botID}}
	}
	s.client.EventManager().DispatchEvent(&events.MessageCreate{GenericMessage: &events.GenericMessage{
		GenericEvent: events.NewGenericEvent(s.client, 0, 0), MessageID: m.ID, Message: m, ChannelID: channelID}})
	return m.ID
}

type fixedAgent struct{ text string }

func (a fixedAgent) Run(ctx context.Context, req agent.Request) (agent.Reply, error) {
	return agent.Reply{Text: a.text, SessionID: "s1"}, nil
}

// TestChunkedReplyOverREST: a 5000-rune answer with a code block reaches
// the REST fake as several messages, each within 2000 runes, fences
// balanced, the first one replying to the question, none pinging anyone;
// a typing indicator was sent.
func TestChunkedReplyOverREST(t *testing.T) {
	answer := "Sure:\n\n```go\n" + strings.Repeat("fmt.Println(\"ünïcödé\") // @everyone\n", 120) + "```\nDone."
	s := newSetup(t, fixedAgent{answer})
	id := s.dispatch(fmt.Sprintf("<@%d> write it", botID), userID, false, true)
	if err := s.r.Drain(t.Context()); err != nil {
		t.Fatal(err)
	}
	calls, msgs := s.fake.snapshot()
	if len(msgs) < 3 {
		t.Fatalf("%d messages, want the answer split in 3 or more", len(msgs))
	}
	var body strings.Builder
	for i, m := range msgs {
		if n := utf8.RuneCountInString(m.Content); n > chunk.DiscordLimit {
			t.Fatalf("message %d has %d runes", i, n)
		}
		if !chunk.Balanced(m.Content) {
			t.Fatalf("message %d has unbalanced fences", i)
		}
		if m.AllowedMentions == nil || len(m.AllowedMentions.Parse) != 0 {
			t.Fatalf("message %d may ping: %+v", i, m.AllowedMentions)
		}
		if (m.MessageReference != nil) != (i == 0) {
			t.Fatalf("message %d reference %+v", i, m.MessageReference)
		}
		body.WriteString(m.Content)
	}
	if *msgs[0].MessageReference.MessageID != id {
		t.Fatalf("first chunk replies to %v, want %v", msgs[0].MessageReference.MessageID, id)
	}
	parts := chunk.SplitParts(answer, chunk.DiscordLimit)
	if len(parts) != len(msgs) {
		t.Fatalf("%d messages for %d chunks", len(msgs), len(parts))
	}
	for i, p := range parts {
		if msgs[i].Content != p.String() {
			t.Fatalf("message %d differs from chunk %d", i, i)
		}
	}
	if want := fmt.Sprintf("/channels/%d/typing", channelID); !strings.HasPrefix(calls[0], "POST ") || !strings.HasSuffix(calls[0], want) {
		t.Fatalf("first REST call %q, want typing", calls[0])
	}
}

// TestOrderAtReceiptThroughDisgo: 20 mentions dispatched one after another
// on the event goroutine (as disgo's gateway does) are answered in that
// order, one at a time; later ones get the waiting reaction, which is
// removed when they start. Messages without a mention, from bots, or from
// other channels are ignored.
func TestOrderAtReceiptThroughDisgo(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	active, maxActive := 0, 0
	ag := agentFunc(func(ctx context.Context, req agent.Request) (agent.Reply, error) {
		mu.Lock()
		active++
		maxActive = max(maxActive, active)
		mu.Unlock()
		<-release
		mu.Lock()
		active--
		mu.Unlock()
		return agent.Reply{Text: "re: " + req.Prompt}, nil
	})
	s := newSetup(t, ag, channelID.String())
	s.dispatch("no mention here", userID, false, false)
	s.dispatch(fmt.Sprintf("<@%d> from a bot", botID), 444, true, true)
	var ids []snowflake.ID
	for i := range 20 {
		ids = append(ids, s.dispatch(fmt.Sprintf("<@!%d> msg %02d", botID, i), userID, false, false))
	}
	close(release)
	if err := s.r.Drain(t.Context()); err != nil {
		t.Fatal(err)
	}
	calls, msgs := s.fake.snapshot()
	if len(msgs) != 20 || maxActive != 1 {
		t.Fatalf("%d replies, max concurrent runs %d", len(msgs), maxActive)
	}
	for i, m := range msgs {
		if m.Content != fmt.Sprintf("re: msg %02d", i) || *m.MessageReference.MessageID != ids[i] {
			t.Fatalf("reply %d = %q to %v", i, m.Content, m.MessageReference.MessageID)
		}
	}
	// The waiting reaction of message 2 is added before it is removed.
	reaction := fmt.Sprintf("/channels/%d/messages/%d/reactions/", channelID, ids[1])
	put, del := -1, -1
	for i, c := range calls {
		if strings.Contains(c, reaction) && strings.HasPrefix(c, "PUT") {
			put = i
		}
		if strings.Contains(c, reaction) && strings.HasPrefix(c, "DELETE") {
			del = i
		}
	}
	if put < 0 || del < put {
		t.Fatalf("waiting reaction add at %d, remove at %d:\n%s", put, del, strings.Join(calls, "\n"))
	}

	other := newSetup(t, ag, "999999999999999999")
	other.dispatch(fmt.Sprintf("<@%d> wrong channel", botID), userID, false, true)
	other.r.Drain(t.Context())
	if _, msgs := other.fake.snapshot(); len(msgs) != 0 {
		t.Fatalf("answered in a channel that is not configured: %+v", msgs)
	}
}

type agentFunc func(ctx context.Context, req agent.Request) (agent.Reply, error)

func (f agentFunc) Run(ctx context.Context, req agent.Request) (agent.Reply, error) {
	return f(ctx, req)
}

func TestBadToken(t *testing.T) {
	for _, tok := range []string{"", "nodot", "!!!.x.y", base64.RawStdEncoding.EncodeToString([]byte("abc")) + ".x"} {
		if _, err := New(Config{Token: tok}); err == nil {
			t.Errorf("token %q accepted", tok)
		}
	}
}
