package sendqueue

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
)

// Status is where an item stands, as seen through its [Ticket]. The zero
// value is [Pending].
type Status uint32

const (
	// Pending: the item is queued or being sent.
	Pending Status = iota
	// Delivered: a send of the item returned nil.
	Delivered
	// Failed: the item left the queue undelivered (dropped, given up,
	// evicted or still queued at Close); [Ticket.Err] says why, and the
	// item was reported.
	Failed
)

// String returns "pending", "delivered" or "failed".
func (s Status) String() string {
	switch s {
	case Pending:
		return "pending"
	case Delivered:
		return "delivered"
	case Failed:
		return "failed"
	}
	return fmt.Sprintf("Status(%d)", uint32(s))
}

// A Ticket follows one pushed item until it settles: it is delivered, or it
// fails for a reason that is also reported. A UI can use it to show "sent"
// or "pending". Tickets are created by [Queue.Push]; a zero Ticket stays
// Pending forever.
//
// A Ticket is safe for concurrent use and must not be copied. It settles
// exactly once; Status, Err and Done agree once it has. A failed item's
// ticket settles only after the [WithReport] function has returned for it,
// so a goroutine that waits on the ticket sees what the report did.
type Ticket struct {
	key   string        // the queued item's Key
	state atomic.Uint32 // Status; stored after err is written, under mu

	mu   sync.Mutex    // protects done and the writes of err and state
	err  error         // why the item failed; written once, before state
	done chan struct{} // made by the first Done call; closed by settle
}

// closedChan is what Done returns once the ticket has settled, so that
// tickets nobody waited on never allocate a channel.
var closedChan = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

// Key returns the item's idempotency key (the caller's, or the generated one).
func (t *Ticket) Key() string { return t.key }

// Status returns Pending, Delivered or Failed.
func (t *Ticket) Status() Status { return Status(t.state.Load()) }

// Err returns nil while the item is pending or once it is delivered, and the
// reason once it failed: an error wrapping [ErrDropped], [ErrGaveUp],
// [ErrEvicted] or [ErrClosed] and, if a send of the item had failed, the
// last send error.
func (t *Ticket) Err() error {
	if t.Status() == Failed {
		return t.err
	}
	return nil
}

// Done returns a channel that is closed when the ticket settles. Like
// context's Done, the channel is made on the first call that finds the
// ticket pending, so tickets nobody waits on cost no channel. A zero
// Ticket, which never settles, returns nil.
func (t *Ticket) Done() <-chan struct{} {
	if t.Status() != Pending {
		return closedChan
	}
	if t.key == "" {
		return nil // zero Ticket: Push always sets a key
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.Status() != Pending { // settled since the first check
		return closedChan
	}
	if t.done == nil {
		t.done = make(chan struct{})
	}
	return t.done
}

// Wait blocks until the ticket settles or ctx is done. It returns nil if the
// item was delivered, the reason if it failed (see [Ticket.Err]), or
// ctx.Err() if ctx ended first (the item stays queued).
func (t *Ticket) Wait(ctx context.Context) error {
	select {
	case <-t.Done():
		return t.Err()
	case <-ctx.Done():
		return ctx.Err()
	}
}

// settle records the outcome. The queue calls it once per ticket.
func (t *Ticket) settle(s Status, err error) {
	t.mu.Lock()
	t.err = err
	t.state.Store(uint32(s))
	if t.done != nil {
		close(t.done)
	}
	t.mu.Unlock()
}
