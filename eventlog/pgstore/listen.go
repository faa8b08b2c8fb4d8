package pgstore

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
)

// Watch implements eventlog.Store. The first call starts the store's one
// listener goroutine: it holds a LISTEN connection and calls fn with the
// stream of every change committed by any process on the database (this
// process's own changes are told at once, without waiting for the
// notification). Whenever the LISTEN connection is (re)established it
// re-checks the database's identity and calls fn(""), since notifications
// sent while it was down are lost: the Log then re-reads every subscribed
// stream from its subscriber's cursor.
func (s *Store) Watch(fn func(stream string)) {
	s.notify.Store(&fn)
	s.watchOnce.Do(func() {
		ctx, cancel := context.WithCancel(context.Background())
		s.stop = cancel
		s.wg.Add(1)
		go s.listen(ctx)
	})
}

// listen keeps a LISTEN connection until ctx ends, reconnecting with a
// doubling delay (10 ms up to the reconnect delay) after a failure.
func (s *Store) listen(ctx context.Context) {
	defer s.wg.Done()
	wait := time.Duration(0)
	for ctx.Err() == nil {
		if s.listenOnce(ctx) {
			wait = 0 // it was up: retry at once
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		wait = min(max(2*wait, 10*time.Millisecond), s.delay)
	}
}

// listenOnce opens the LISTEN connection and relays notifications until it
// fails; it reports whether the connection was established.
func (s *Store) listenOnce(ctx context.Context) bool {
	conn, err := pgx.ConnectConfig(ctx, s.connCfg)
	if err != nil {
		return false
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "LISTEN "+channel); err != nil {
		return false
	}
	epoch, err := recheck(ctx, conn)
	if err != nil {
		return false
	}
	s.setEpoch(epoch)
	s.changed("") // what was sent while we were not listening is lost
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			return true
		}
		s.changed(n.Payload)
	}
}
