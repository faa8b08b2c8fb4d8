package eventlog

import (
	"errors"
	"fmt"
)

// Sentinel errors. Methods wrap them with detail; test with errors.Is.
var (
	// ErrClosed: the log, store or subscription's log was closed.
	ErrClosed = errors.New("eventlog: closed")
	// ErrEmptyStream: a stream id was empty.
	ErrEmptyStream = errors.New("eventlog: empty stream id")
	// ErrEventTooLarge: an event exceeded the maximum event size.
	ErrEventTooLarge = errors.New("eventlog: event too large")
	// ErrUnknownStream: no stream has this id (it was never appended to nor
	// given a state).
	ErrUnknownStream = errors.New("eventlog: unknown stream")
	// ErrStreamDeleted: the stream was deleted with Log.Delete. Errors that
	// wrap it also wrap ErrUnknownStream (a deleted stream is unknown to
	// every read), and a deleted id is never recreated in the same epoch:
	// appends and state changes to it fail with this error.
	ErrStreamDeleted = errors.New("eventlog: stream deleted")
	// ErrStreamEnded: the stream is in state Ended.
	ErrStreamEnded = errors.New("eventlog: stream ended")
	// ErrCursorAhead: a cursor is beyond the head of its stream.
	ErrCursorAhead = errors.New("eventlog: cursor ahead of head")
	// ErrCursorExpired: the events right after a cursor are no longer
	// retained.
	ErrCursorExpired = errors.New("eventlog: cursor older than retention")
	// ErrWrongEpoch: a cursor's epoch is not the store's epoch: it was
	// issued by another history (before a restart that lost history, a
	// restore from backup, or by another store).
	ErrWrongEpoch = errors.New("eventlog: cursor from another epoch")
	// ErrBadCursor: a cursor string could not be parsed.
	ErrBadCursor = errors.New("eventlog: malformed cursor")
	// ErrInvalidState: a State value or name is not one of the six states.
	ErrInvalidState = errors.New("eventlog: invalid state")
	// ErrSubscriptionClosed: Subscription.Close was called, or the
	// subscription already ended with Lagged.
	ErrSubscriptionClosed = errors.New("eventlog: subscription closed")
)

func errorf(sentinel error, format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{sentinel}, args...)...)
}

// DeletedError returns the error for an operation on the deleted stream:
// it wraps both ErrUnknownStream and ErrStreamDeleted. Store
// implementations return it for every operation on a deleted id.
func DeletedError(stream string) error {
	return fmt.Errorf("%w: %w: %q", ErrUnknownStream, ErrStreamDeleted, clip(stream))
}
