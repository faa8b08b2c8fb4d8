package eventlog

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// SyncFunc is called by Sync for each stream that should be synced, with
// the stream's current state. Sync (and SyncEvery) call it sequentially, on
// the caller's goroutine, so it need not be safe for concurrent use.
type SyncFunc func(ctx context.Context, stream string, st State) error

// SyncError is one failed stream of a sync round (a plain value).
type SyncError struct {
	Stream string // the stream id, as passed to Sync
	Err    error  // what went wrong; wraps the SyncFunc's or the store's error
}

// Error returns the stream id and the cause, so a SyncError can be returned
// or logged as an error of its own.
func (e SyncError) Error() string { return "eventlog: sync " + e.Stream + ": " + e.Err.Error() }

// Unwrap returns e.Err, for errors.Is and errors.As.
func (e SyncError) Unwrap() error { return e.Err }

// SyncReport is the outcome of one sync round. Every stream passed to Sync
// appears in exactly one of its lists: nothing is skipped silently. It is a
// plain value owned by the caller; the zero SyncReport is an empty round.
type SyncReport struct {
	// Synced: syncable streams (Created, Starting, Active) for which the
	// SyncFunc returned nil.
	Synced []string
	// Skipped: known streams in a state that is not synced (Suspended,
	// Detached, Ended).
	Skipped []string
	// Unknown: ids the log has no stream for. The origin treated these
	// exactly like inactive sessions, so a session missing from the store
	// was silently never synced.
	Unknown []string
	// Failed: streams whose SyncFunc or state lookup returned an error.
	Failed []SyncError
}

// Sync runs one sync round over streams: fn is called, in order, for each
// stream whose state is Syncable; other known streams are reported as
// Skipped and ids with no stream as Unknown. An error from fn is recorded in
// the report and does not stop the round.
//
// Errors: ErrClosed, or ctx.Err() if ctx ends during the round (the report
// then covers the streams handled so far). It panics if fn is nil.
func (l *Log) Sync(ctx context.Context, streams []string, fn SyncFunc) (SyncReport, error) {
	if fn == nil {
		panic("eventlog: Sync needs a SyncFunc")
	}
	var rep SyncReport
	for _, id := range streams {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		st, err := l.State(ctx, id)
		switch {
		case errors.Is(err, ErrClosed):
			return rep, err
		case errors.Is(err, ErrUnknownStream) || errors.Is(err, ErrEmptyStream):
			rep.Unknown = append(rep.Unknown, id)
			continue
		case err != nil:
			rep.Failed = append(rep.Failed, SyncError{Stream: id, Err: err})
			continue
		}
		if !st.Syncable() {
			rep.Skipped = append(rep.Skipped, id)
			continue
		}
		if err := fn(ctx, id, st); err != nil {
			rep.Failed = append(rep.Failed, SyncError{Stream: id, Err: err})
			continue
		}
		rep.Synced = append(rep.Synced, id)
	}
	return rep, nil
}

// SyncEvery runs a sync round every interval until ctx ends or the log is
// closed: each round syncs the ids returned by streams (called afresh each
// round) with fn, and passes the round's report to report (if not nil). It
// runs in the calling goroutine and starts none.
//
// Errors: ctx.Err() (or its cause) when ctx ends, ErrClosed when the log is
// closed. It panics if interval <= 0 or streams or fn is nil.
func (l *Log) SyncEvery(ctx context.Context, interval time.Duration, streams func() []string, fn SyncFunc, report func(SyncReport)) error {
	if interval <= 0 {
		panic(fmt.Sprintf("eventlog: SyncEvery interval %v", interval))
	}
	if streams == nil || fn == nil {
		panic("eventlog: SyncEvery needs a streams function and a SyncFunc")
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return context.Cause(ctx)
		case <-l.done:
			return ErrClosed
		case <-t.C:
		}
		rep, err := l.Sync(ctx, streams(), fn)
		if report != nil {
			report(rep)
		}
		if err != nil {
			if ctx.Err() != nil {
				return context.Cause(ctx)
			}
			return err
		}
	}
}
