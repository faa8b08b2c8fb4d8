package eventlog

import (
	"context"
	"time"
)

// Retention bounds how much history a store keeps for each stream. A zero
// field means "no bound" of that kind; the zero Retention keeps everything
// (the in-memory store then still needs a count bound, see NewMemoryStore).
// It is a plain value.
type Retention struct {
	// MaxEvents is the number of most recent events kept per stream.
	MaxEvents int
	// MaxAge is how long an event is kept after it was appended. Events older
	// than MaxAge are invisible to reads at once and freed lazily.
	MaxAge time.Duration
}

// Store is the storage behind a Log. The Log validates input, computes
// replay results and wakes subscribers; the Store keeps events, heads, stream
// states and the epoch. The package provides MemoryStore; the sqlitestore
// sub-package provides a persistent one; storetest checks any implementation
// against the same conformance suite.
//
// Implementations must be safe for concurrent use and must make every
// appended event readable no later than Append returns, in sequence order:
// a reader never sees seq n+1 without seq n.
type Store interface {
	// Epoch returns the store's epoch: a string accepted by ValidEpoch that
	// stays the same for as long as the store's history does (for a
	// persistent store, across restarts) and changes whenever history is
	// lost.
	Epoch() string

	// Append adds one event to stream, creating the stream in state Created
	// if it does not exist, and returns its sequence number: head+1, where
	// the first event of a stream is 1. The store may keep typ but must copy
	// data if it keeps it. Errors: ErrStreamEnded if the stream is Ended,
	// ErrClosed after Close, ctx.Err(), or a storage error.
	Append(ctx context.Context, stream, typ string, data []byte) (uint64, error)

	// ReadAfter appends to dst the retained events of stream with
	// after < seq, in order, at most limit of them (all of them if limit is
	// negative), and returns the extended slice. Errors: ErrUnknownStream, ErrCursorAhead if after > head,
	// ErrCursorExpired if event after+1 is no longer retained, ErrClosed,
	// ctx.Err(), or a storage error.
	ReadAfter(ctx context.Context, stream string, after uint64, limit int, dst []Event) ([]Event, error)

	// Bounds returns the oldest retained seq of stream and its head (the last
	// assigned seq). A stream with no retained event has first == head+1.
	// Errors: ErrUnknownStream, ErrClosed, ctx.Err(), or a storage error.
	Bounds(ctx context.Context, stream string) (first, head uint64, err error)

	// SetState sets the state of stream, creating the stream if needed.
	// Errors: ErrInvalidState, ErrStreamEnded if the stream is Ended and st
	// is not Ended, ErrClosed, ctx.Err(), or a storage error.
	SetState(ctx context.Context, stream string, st State) error

	// State returns the state of stream. Errors: ErrUnknownStream, ErrClosed,
	// or a storage error.
	State(stream string) (State, error)

	// Delete removes stream: its events, head and state. The store frees
	// them (memory, rows) and keeps only a tombstone of the id, so that the
	// id is never recreated in this epoch: every later operation on it
	// (reads, Append, SetState, Delete) returns DeletedError. (A recreated
	// stream would restart at seq 1 under the same epoch, and a cursor from
	// the deleted one would be taken as a position in it.) Errors:
	// ErrUnknownStream for an id that never existed, DeletedError, ErrClosed,
	// ctx.Err(), or a storage error.
	Delete(ctx context.Context, stream string) error

	// Streams appends to dst every stream that exists (not deleted) with
	// its state, sorted by ID, and returns the extended slice. Errors:
	// ErrClosed, ctx.Err(), or a storage error.
	Streams(ctx context.Context, dst []StreamInfo) ([]StreamInfo, error)

	// Close releases the store. Calls after Close return ErrClosed.
	Close() error
}

// StreamInfo names one stream of a store and its state. It is a plain
// value; the zero StreamInfo names no stream.
type StreamInfo struct {
	// ID is the stream id.
	ID string
	// State is the stream's state.
	State State
}
