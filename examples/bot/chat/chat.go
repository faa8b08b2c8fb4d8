// Package chat defines the small interface between the bot's router and a
// chat platform (terminal, local web chat, Discord).
//
// The one rule a platform must follow: call Handler.Handle synchronously,
// on its receive path, in the order messages arrived, before spawning any
// goroutine for them. Handle only records the message in its channel's
// queue and returns at once, so this never blocks the receive path, and the
// per-channel order is fixed at receipt instead of being left to goroutine
// scheduling.
package chat

import (
	"context"
	"errors"
)

// ErrClosed is returned by Handler.Handle once the bot is shutting down.
var ErrClosed = errors.New("chat: bot is shutting down")

// Message is one incoming chat message.
type Message struct {
	Channel string // channel id: the key messages are serialized on
	ID      string // platform message id, for replies and reactions; may be empty
	Author  string // display name
	Text    string // the text, with any bot mention removed
}

// Outgoing is one reply chunk, already within the platform's Limit.
type Outgoing struct {
	Channel string
	ReplyTo string // message id this answers, or "" for a plain message
	Text    string
}

// Handler receives messages from a platform.
type Handler interface {
	// Handle admits m into its channel's queue and returns without waiting
	// for it to be processed. It returns ErrClosed during shutdown.
	Handle(m Message) error
}

// Platform is a chat service. Send, Typing and Waiting may be called
// concurrently (for different channels) and must keep working after Run
// returns, until the process exits, so queued replies can still be
// delivered during shutdown.
type Platform interface {
	// Name is a short name for logs ("terminal", "web", "discord").
	Name() string
	// Limit is the longest message the platform accepts, in runes.
	Limit() int
	// Run receives messages and passes them to h.Handle in arrival order
	// until ctx ends or the input ends (for the terminal: end of file). It
	// returns nil on a clean end, or the error that stopped it.
	Run(ctx context.Context, h Handler) error
	// Send posts one reply chunk.
	Send(ctx context.Context, out Outgoing) error
	// Typing shows that the bot is working in channel; the router refreshes
	// it periodically while the agent runs.
	Typing(ctx context.Context, channel string) error
	// Waiting sets (true) or clears (false) the "waiting" marker of a
	// message that arrived while its channel was busy.
	Waiting(ctx context.Context, m Message, waiting bool) error
}

// An Idler is a Platform that shows when the bot stops working in a channel
// (the web chat clears its "bot is typing…" line then, rather than at the
// next reply, which may be a command's answer while the agent still runs).
// The router calls Idle when an agent run ends, before its reply.
type Idler interface {
	Idle(ctx context.Context, channel string) error
}
