package sendqueue

import (
	"context"
	"fmt"
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
// exactly once; Status, Err and Done agree once it has.
type Ticket struct {
	key   string                 // the queued item's Key
	state atomic.Uint32          // Status; stored after err is written
	err   error                  // why the item failed; written once, before state
	done  atomic.Pointer[doneCh] // set by the first Done call, or settledDone
}

// doneCh boxes a Done channel so that it can be swapped atomically.
type doneCh struct{ c chan struct{} }

// closedChan is returned by Done for tickets that settled before anyone
// asked, so that most tickets never allocate a channel.
var closedChan = func() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}()

// settledDone replaces a Ticket's Done channel once it has been closed.
var settledDone = &doneCh{c: closedChan}

// Key returns the item's idempotency key (the caller's, or the generated one).
func (t *Ticket) Key() string { return t.key }

// Status returns Pending, Delivered or Failed.
func (t *Ticket) Status() Status { return Status(t.state.Load()) }

// Err returns nil while the item is pending or once it is delivered, and the
// reason once it failed: an error wrapping [ErrDropped], [ErrGaveUp],
// [ErrEvicted] or [ErrClosed] (and the last send error, if any).
func (t *Ticket) Err() error {
	if t.Status() == Failed {
		return t.err
	}
	return nil
}

// Done returns a channel that is closed when the ticket settles. The channel
// is made on the first call, so tickets nobody waits on cost no channel.
func (t *Ticket) Done() <-chan struct{} {
	if t.Status() != Pending {
		return closedChan
	}
	if d := t.done.Load(); d != nil {
		return d.c
	}
	if t.key == "" {
		return nil // zero Ticket (Push always sets a key): never settles
	}
	// Lock-free hand-over with settle, which stores the state and then
	// loads done: either settle sees d and closes it, or this goroutine
	// sees the new state after publishing d and closes it. The
	// CompareAndSwap to settledDone makes exactly one of them close it.
	d := &doneCh{c: make(chan struct{})}
	if !t.done.CompareAndSwap(nil, d) {
		return t.done.Load().c
	}
	if t.Status() != Pending {
		t.closeDone(d)
	}
	return d.c
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

// settle records the outcome. It is called once per ticket, by the queue,
// under the queue's lock.
func (t *Ticket) settle(s Status, err error) {
	if err != nil {
		t.err = err
	}
	t.state.Store(uint32(s))
	if d := t.done.Load(); d != nil {
		t.closeDone(d)
	}
}

// closeDone closes d, the channel Done handed out, unless the other side of
// the hand-over (settle or Done) already did.
func (t *Ticket) closeDone(d *doneCh) {
	if d != settledDone && t.done.CompareAndSwap(d, settledDone) {
		close(d.c)
	}
}
