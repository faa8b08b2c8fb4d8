// Package pgstate is the state a bot shares with its other replicas in
// PostgreSQL: the channel locks (keyedlock/pglock) and the sessions, whose
// writes carry the lock's fencing token so that a replica that lost a
// channel's lock cannot overwrite what the new holder wrote.
package pgstate

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/steadfast-go/steadfast/examples/bot/router"
	"github.com/steadfast-go/steadfast/examples/bot/store"
	"github.com/steadfast-go/steadfast/keyedlock/pglock"
)

// ErrStale is returned by Put and Delete when a holder with a newer token
// has already written the channel's session.
var ErrStale = errors.New("pgstate: a newer lock holder wrote this session; the write is refused")

const schema = `CREATE TABLE IF NOT EXISTS bot_sessions (
	channel    text COLLATE "C" PRIMARY KEY,
	session_id text        NOT NULL,
	model      text        NOT NULL,
	last_used  timestamptz,
	token      bigint      NOT NULL)`

// opTimeout bounds one statement.
const opTimeout = 10 * time.Second

// State implements router.Replicas on one database.
type State struct {
	locks *pglock.Locker
	pool  *pgxpool.Pool
}

var _ router.Replicas = (*State)(nil)

// Open connects to url, creates the sessions table if needed and opens
// the channel locks.
func Open(ctx context.Context, url string) (*State, error) {
	pool, err := pgxpool.New(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("pgstate: %w", err)
	}
	err = pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(7418201)`); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, schema)
		return err
	})
	if err != nil {
		pool.Close()
		return nil, fmt.Errorf("pgstate: create the sessions table: %w", err)
	}
	locks, err := pglock.Open(ctx, url)
	if err != nil {
		pool.Close()
		return nil, err
	}
	return &State{locks: locks, pool: pool}, nil
}

// Close closes the locks' idle connections and the pool.
func (s *State) Close() error {
	s.locks.Close()
	s.pool.Close()
	return nil
}

// Lock takes channel's lock across every replica.
func (s *State) Lock(ctx context.Context, channel string) (router.Lease, error) {
	l, err := s.locks.Lock(ctx, channel)
	if err != nil {
		return nil, err
	}
	return l, nil
}

// Get reads channel's session.
func (s *State) Get(channel string) (store.Session, bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	var out store.Session
	var last *time.Time
	err := s.pool.QueryRow(ctx, `SELECT session_id, model, last_used FROM bot_sessions WHERE channel = $1`, channel).
		Scan(&out.SessionID, &out.Model, &last)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return store.Session{}, false, nil
	case err != nil:
		return store.Session{}, false, fmt.Errorf("pgstate: get %q: %w", channel, err)
	}
	if last != nil {
		out.LastUsed = *last
	}
	return out, true, nil
}

// Put writes channel's session under token. It returns ErrStale, and
// changes nothing, when the row was written under a newer token.
func (s *State) Put(channel string, token int64, sess store.Session) error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	var last *time.Time
	if !sess.LastUsed.IsZero() {
		last = &sess.LastUsed
	}
	tag, err := s.pool.Exec(ctx, `INSERT INTO bot_sessions AS t (channel, session_id, model, last_used, token)
		VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (channel) DO UPDATE SET session_id = EXCLUDED.session_id, model = EXCLUDED.model,
			last_used = EXCLUDED.last_used, token = EXCLUDED.token
		WHERE t.token <= EXCLUDED.token`, channel, sess.SessionID, sess.Model, last, token)
	if err != nil {
		return fmt.Errorf("pgstate: put %q: %w", channel, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%w (channel %q, token %d)", ErrStale, channel, token)
	}
	return nil
}

// Delete forgets channel's session under token; ErrStale if a newer holder
// wrote it.
func (s *State) Delete(channel string, token int64) error {
	ctx, cancel := context.WithTimeout(context.Background(), opTimeout)
	defer cancel()
	var newer bool
	err := s.pool.QueryRow(ctx, `WITH d AS (DELETE FROM bot_sessions WHERE channel = $1 AND token <= $2 RETURNING 1)
		SELECT EXISTS (SELECT 1 FROM bot_sessions WHERE channel = $1 AND token > $2) AND NOT EXISTS (SELECT 1 FROM d)`,
		channel, token).Scan(&newer)
	if err != nil {
		return fmt.Errorf("pgstate: delete %q: %w", channel, err)
	}
	if newer {
		return fmt.Errorf("%w (channel %q, token %d)", ErrStale, channel, token)
	}
	return nil
}
