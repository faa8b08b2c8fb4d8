package pglock

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrLockLost is the cause of a Lease's context when its connection failed
// or stopped answering, or no longer holds the lock.
var ErrLockLost = errors.New("pglock: lock lost")

// A Lease is one grant of a key. Unlock it exactly once.
type Lease struct {
	l     *Locker
	key   string
	id    int64
	token int64

	ctx    context.Context
	cancel context.CancelCauseFunc
	stop   chan struct{} // closed by Unlock: ends the watcher
	wdone  chan struct{} // closed when the watcher has returned

	mu       sync.Mutex // serializes use of conn by the watcher and Unlock
	conn     *pgx.Conn
	unlocked bool
}

func (l *Locker) newLease(key string, id, token int64, conn *pgx.Conn) *Lease {
	ctx, cancel := context.WithCancelCause(context.Background())
	ls := &Lease{l: l, key: key, id: id, token: token, ctx: ctx, cancel: cancel,
		stop: make(chan struct{}), wdone: make(chan struct{}), conn: conn}
	go ls.watch()
	return ls
}

// Key returns the leased key.
func (ls *Lease) Key() string { return ls.key }

// Token returns the grant's fencing token: larger than every token of an
// earlier grant of this key.
func (ls *Lease) Token() int64 { return ls.token }

// Context returns a context that ends when the lock is lost (its cause is
// ErrLockLost) or released by Unlock. Pass it to the work the lock
// protects.
func (ls *Lease) Context() context.Context { return ls.ctx }

// watch checks every ping interval that the lease's backend still holds the
// lock, and cancels the lease's context when it cannot prove it.
func (ls *Lease) watch() {
	defer close(ls.wdone)
	t := time.NewTicker(ls.l.opt.pingInterval)
	defer t.Stop()
	for {
		select {
		case <-ls.stop:
			return
		case <-t.C:
		}
		if err := ls.check(); err != nil {
			ls.cancel(fmt.Errorf("%w: %q: %w", ErrLockLost, ls.key, err))
			return
		}
	}
}

// check asks the lease's own backend whether it holds the lock.
func (ls *Lease) check() error {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.unlocked {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), ls.l.opt.pingTimeout)
	defer cancel()
	id := uint64(ls.id)
	var held bool
	err := ls.conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_locks WHERE pid = pg_backend_pid()
		AND locktype = 'advisory' AND objsubid = 1 AND granted
		AND classid = $1::bigint::oid AND objid = $2::bigint::oid)`, int64(id>>32), int64(id&0xffffffff)).Scan(&held)
	if err == nil && !held {
		err = errors.New("the backend no longer holds it")
	}
	return err
}

// Unlock releases the lease: the advisory lock on the server, then the
// key's local queue. Its context ends. A second call returns an error and
// does nothing. If the unlock statement fails, the connection is closed,
// which releases the lock too, and the error is returned.
func (ls *Lease) Unlock() error {
	ls.mu.Lock()
	if ls.unlocked {
		ls.mu.Unlock()
		return fmt.Errorf("pglock: unlock of %q: already unlocked", ls.key)
	}
	ls.unlocked = true
	ls.mu.Unlock()
	close(ls.stop)
	<-ls.wdone
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var ok bool
	err := ls.conn.QueryRow(ctx, `SELECT pg_advisory_unlock($1)`, ls.id).Scan(&ok)
	switch {
	case err != nil:
		ls.conn.Close(context.Background()) // ends the session, and the lock
		err = fmt.Errorf("pglock: unlock of %q: %w", ls.key, err)
	case !ok:
		ls.conn.Close(context.Background())
		err = fmt.Errorf("pglock: unlock of %q: the lock was no longer held (lost before Unlock)", ls.key)
	default:
		ls.l.putConn(ls.conn)
	}
	ls.cancel(context.Canceled)
	ls.l.local.Unlock(ls.key)
	return err
}
