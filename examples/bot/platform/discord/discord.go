// Package discord connects the bot to Discord with disgo
// (github.com/disgoorg/disgo).
//
// The bot answers messages that @mention it, in the configured channels
// (or in every channel it can read when none are configured). It needs the
// privileged Message Content intent, enabled for the application in the
// Discord developer portal.
//
// # Ordering at receipt
//
// disgo reads the gateway on one goroutine and, unless async events are
// enabled (they are not here), dispatches each event to the listeners on
// that same goroutine, in the order Discord sent them. The listener calls
// the router's Handle right there: Handle only appends the message to its
// channel's queue and returns, so the gateway is never blocked by an agent
// run, and the per-channel order is fixed before any goroutine is spawned.
// (discordgo, by contrast, starts a goroutine per handler call by default,
// so two messages could reach any lock in either order.)
package discord

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/disgoorg/disgo"
	"github.com/disgoorg/disgo/bot"
	"github.com/disgoorg/disgo/discord"
	"github.com/disgoorg/disgo/events"
	"github.com/disgoorg/disgo/gateway"
	"github.com/disgoorg/disgo/rest"
	"github.com/disgoorg/snowflake/v2"

	"github.com/steadfast-go/steadfast/examples/bot/chat"
	"github.com/steadfast-go/steadfast/examples/bot/chunk"
)

// ErrToken is returned (wrapped) by New for a token that does not look like
// a Discord bot token.
var ErrToken = errors.New("discord: bad bot token")

// WaitingEmoji is the reaction put on a message while it waits for its
// channel.
const WaitingEmoji = "⏳"

// Config configures the Discord platform.
type Config struct {
	Token string
	// Channels, if not empty, limits the bot to these channel ids.
	Channels []string
	// RestURL overrides the REST API base URL (tests point it at a fake);
	// GatewayURL overrides the gateway URL. Empty means Discord's.
	RestURL    string
	GatewayURL string
	Logger     *slog.Logger
}

// Discord is the Discord platform. It is safe for concurrent use. Create it
// with New.
type Discord struct {
	cfg      Config
	log      *slog.Logger
	self     snowflake.ID
	allowed  map[snowflake.ID]bool
	rc       rest.Client // see Close
	rest     rest.Rest
	mentions []string // "<@id>", "<@!id>"
}

// New validates cfg and prepares the REST client (call Close when done);
// it does not connect. It
// returns an error wrapping ErrToken for a malformed token, or for a bad
// channel id.
func New(cfg Config) (*Discord, error) {
	self, err := idFromToken(cfg.Token)
	if err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	d := &Discord{cfg: cfg, log: cfg.Logger, self: self, allowed: map[snowflake.ID]bool{}}
	for _, c := range cfg.Channels {
		id, err := snowflake.Parse(strings.TrimSpace(c))
		if err != nil {
			return nil, fmt.Errorf("discord: bad channel id %q: %w", c, err)
		}
		d.allowed[id] = true
	}
	opts := []rest.ConfigOpt{rest.WithLogger(cfg.Logger)}
	if cfg.RestURL != "" {
		opts = append(opts, rest.WithURL(cfg.RestURL))
	}
	d.rc = rest.NewClient(cfg.Token, opts...)
	d.rest = rest.New(d.rc)
	d.mentions = []string{"<@" + self.String() + ">", "<@!" + self.String() + ">"}
	return d, nil
}

// idFromToken reads the bot's user id from the first part of its token
// (base64 of the id), so mentions can be recognized before READY.
func idFromToken(token string) (snowflake.ID, error) {
	first, _, ok := strings.Cut(token, ".")
	if !ok || first == "" {
		return 0, ErrToken
	}
	b, err := base64.RawStdEncoding.DecodeString(strings.TrimRight(first, "="))
	if err != nil {
		return 0, fmt.Errorf("%w: %v", ErrToken, err)
	}
	id, err := snowflake.Parse(string(b))
	if err != nil {
		return 0, fmt.Errorf("%w: %v", ErrToken, err)
	}
	return id, nil
}

// Close waits for in-flight REST requests and closes idle connections.
// Call it after the last Send. (disgo v0.18's rate limiter also starts a
// cleanup goroutine that has no way to stop; it lives until the process
// exits.)
func (d *Discord) Close(ctx context.Context) { d.rc.Close(ctx) }

// Name returns "discord".
func (d *Discord) Name() string { return "discord" }

// Limit returns Discord's message length limit.
func (d *Discord) Limit() int { return chunk.DiscordLimit }

// Client builds the disgo client whose (synchronous) message listener
// passes mentions to h. Run uses it; tests use it to dispatch events
// without a gateway.
func (d *Discord) Client(h chat.Handler) (bot.Client, error) {
	gw := []gateway.ConfigOpt{gateway.WithIntents(gateway.IntentGuildMessages, gateway.IntentMessageContent, gateway.IntentDirectMessages)}
	if d.cfg.GatewayURL != "" {
		gw = append(gw, gateway.WithURL(d.cfg.GatewayURL))
	}
	return disgo.New(d.cfg.Token,
		bot.WithLogger(d.log),
		bot.WithRest(d.rest),
		bot.WithGatewayConfigOpts(gw...),
		// Async events stay disabled: the listener must run on the gateway
		// goroutine, in order.
		bot.WithEventListenerFunc(func(e *events.MessageCreate) { d.receive(e.Message, h) }),
	)
}

// Run connects to the gateway and delivers mentions to h until ctx ends.
// It returns the connection error, or nil after ctx ends.
func (d *Discord) Run(ctx context.Context, h chat.Handler) error {
	client, err := d.Client(h)
	if err != nil {
		return fmt.Errorf("discord: %w", err)
	}
	if err := client.OpenGateway(ctx); err != nil {
		return fmt.Errorf("discord: open gateway: %w", err)
	}
	d.log.Info("discord gateway connected", "bot_id", d.self.String())
	<-ctx.Done()
	cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	client.Gateway().Close(cctx) // the REST client stays usable for the last replies
	return nil
}

// receive runs on the gateway goroutine: filter, strip the mention, and
// admit the message (non-blocking).
func (d *Discord) receive(m discord.Message, h chat.Handler) {
	if m.Author.Bot || m.Author.ID == d.self {
		return
	}
	if len(d.allowed) > 0 && !d.allowed[m.ChannelID] {
		return
	}
	mentioned := false
	for _, u := range m.Mentions {
		if u.ID == d.self {
			mentioned = true
		}
	}
	text := m.Content
	for _, tag := range d.mentions {
		if strings.Contains(text, tag) {
			mentioned = true
			text = strings.ReplaceAll(text, tag, "")
		}
	}
	if !mentioned {
		return
	}
	text = strings.TrimSpace(text)
	if text == "" {
		text = "/help"
	}
	msg := chat.Message{Channel: m.ChannelID.String(), ID: m.ID.String(), Author: m.Author.Username, Text: text}
	if err := h.Handle(msg); err != nil {
		d.log.Warn("message not accepted", "channel", msg.Channel, "id", msg.ID, "err", err)
	}
}

// Send posts one chunk; the first chunk of a reply references the message
// it answers. Mentions in agent output never ping anyone. If the
// referenced message is gone, the chunk is posted without the reference.
func (d *Discord) Send(ctx context.Context, o chat.Outgoing) error {
	ch, err := snowflake.Parse(o.Channel)
	if err != nil {
		return fmt.Errorf("discord: bad channel id %q: %w", o.Channel, err)
	}
	mc := discord.MessageCreate{Content: o.Text, AllowedMentions: &discord.AllowedMentions{Parse: []discord.AllowedMentionType{}}}
	if id, err := snowflake.Parse(o.ReplyTo); err == nil && o.ReplyTo != "" {
		mc.MessageReference = &discord.MessageReference{MessageID: &id, ChannelID: &ch}
		if _, err := d.rest.CreateMessage(ch, mc, rest.WithCtx(ctx)); err == nil {
			return nil
		} else if ctx.Err() != nil {
			return fmt.Errorf("discord: send: %w", err)
		}
		mc.MessageReference = nil
	}
	if _, err := d.rest.CreateMessage(ch, mc, rest.WithCtx(ctx)); err != nil {
		return fmt.Errorf("discord: send: %w", err)
	}
	return nil
}

// Typing triggers the typing indicator (it lasts about 10 s).
func (d *Discord) Typing(ctx context.Context, channel string) error {
	ch, err := snowflake.Parse(channel)
	if err != nil {
		return fmt.Errorf("discord: bad channel id %q: %w", channel, err)
	}
	if err := d.rest.SendTyping(ch, rest.WithCtx(ctx)); err != nil {
		return fmt.Errorf("discord: typing: %w", err)
	}
	return nil
}

// Waiting adds or removes the WaitingEmoji reaction on m.
func (d *Discord) Waiting(ctx context.Context, m chat.Message, on bool) error {
	ch, err1 := snowflake.Parse(m.Channel)
	id, err2 := snowflake.Parse(m.ID)
	if err := errors.Join(err1, err2); err != nil {
		return fmt.Errorf("discord: bad ids: %w", err)
	}
	var err error
	if on {
		err = d.rest.AddReaction(ch, id, WaitingEmoji, rest.WithCtx(ctx))
	} else {
		err = d.rest.RemoveOwnReaction(ch, id, WaitingEmoji, rest.WithCtx(ctx))
	}
	if err != nil {
		return fmt.Errorf("discord: reaction: %w", err)
	}
	return nil
}
