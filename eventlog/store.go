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

// Bounds is what a store knows of one stream at one moment: the epoch it
// answered under, the oldest retained seq and the head. A stream with no
// retained event has First == Head+1. It is a plain value.
type Bounds struct {
	// Epoch is the store's epoch when the bounds were read.
	Epoch string
	// First is the oldest retained seq.
	First uint64
	// Head is the last assigned seq (0 before the first append).
	Head uint64
}

// Store is the storage behind a Log. The Log validates input, computes
// replay results and wakes subscribers; the Store keeps events, heads, stream
// states and the epoch. The package provides MemoryStore; the sqlitestore
// and pgstore modules provide persistent ones; storetest checks any
// implementation against the same conformance suite.
//
// Implementations must be safe for concurrent use and must make every
// appended event readable no later than Append returns, in sequence order:
// a reader never sees seq n+1 without seq n.
//
// The epoch names one history. A store reports the epoch with every answer
// (Append's cursor, Bounds, and ReadAfter's check of the cursor it is given)
// so that an answer is never paired with the epoch of another moment: a
// shared store whose history was replaced under a running process (a restore
// from backup, a promoted standby) changes its epoch, and the next answer
// says so.
type Store interface {
	// Epoch returns the store's current epoch: a string accepted by
	// ValidEpoch that stays the same for as long as the store's history
	// does (for a persistent store, across restarts) and changes whenever
	// acknowledged history may have been lost. Errors: ErrClosed,
	// ctx.Err(), or a storage error.
	Epoch(ctx context.Context) (string, error)

	// Append adds one event to stream, creating the stream in state Created
	// if it does not exist, and returns its cursor: the epoch it was
	// committed under and its seq, head+1, where the first event of a
	// stream is 1. The store may keep typ but must copy data if it keeps
	// it. Errors: ErrStreamEnded if the stream is Ended, DeletedError for a
	// deleted id, ErrClosed after Close, ctx.Err(), or a storage error
	// (after which the event may or may not have been committed, but never
	// partly, and never under a seq another event holds).
	Append(ctx context.Context, stream, typ string, data []byte) (Cursor, error)

	// ReadAfter appends to dst the retained events of stream with
	// after.Seq < seq, in order, at most limit of them (all of them if
	// limit is negative), and returns the extended slice. If after.Epoch
	// is not empty it must be the store's epoch at the time of the read.
	// Errors: ErrWrongEpoch (after.Epoch is another epoch), ErrUnknownStream,
	// ErrCursorAhead if after.Seq > head, ErrCursorExpired if event
	// after.Seq+1 is no longer retained, ErrClosed, ctx.Err(), or a storage
	// error.
	ReadAfter(ctx context.Context, stream string, after Cursor, limit int, dst []Event) ([]Event, error)

	// Bounds returns the epoch, the oldest retained seq and the head of
	// stream. Errors: ErrUnknownStream, ErrClosed, ctx.Err(), or a storage
	// error.
	Bounds(ctx context.Context, stream string) (Bounds, error)

	// SetState sets the state of stream, creating the stream if needed.
	// Errors: ErrInvalidState, ErrStreamEnded if the stream is Ended and st
	// is not Ended, ErrClosed, ctx.Err(), or a storage error.
	SetState(ctx context.Context, stream string, st State) error

	// State returns the state of stream. Errors: ErrUnknownStream,
	// ErrClosed, ctx.Err(), or a storage error.
	State(ctx context.Context, stream string) (State, error)

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

	// Watch registers fn to be told of changes: the store calls
	// fn(stream) after every committed Append, SetState or Delete of
	// stream, by this process or (for a shared store) by any other, and
	// fn("") when changes may have been missed (a shared store that lost
	// and regained its notification channel, or whose epoch changed):
	// every stream must then be re-read. fn must not block and must not
	// call the store. A Log calls Watch once, in New; a store need keep
	// only the last fn. A store may coalesce calls, but a change is never
	// left untold: after a change commits, fn(stream) or fn("") follows.
	Watch(fn func(stream string))

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
