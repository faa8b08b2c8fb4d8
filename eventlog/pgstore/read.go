package pgstore

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/steadfast-go/steadfast/eventlog"
)

// boundsCTE reads the epoch and one stream's row, with the oldest seq
// still retained under count ($3 events) and age (newer than $2) retention,
// in one snapshot. Columns: epoch, head, first, state, deleted (all but
// epoch NULL for an unknown stream).
const boundsCTE = `b AS (
	SELECT m.epoch, s.head, s.state, s.deleted,
		CASE WHEN $2::bigint > 0 AND c.first <= s.head
			THEN coalesce((SELECT min(e.seq) FROM eventlog_events e WHERE e.stream = $1 AND e.seq >= c.first AND e.ts > $2::bigint), s.head + 1)
			ELSE c.first END AS first
	FROM eventlog_meta m
	LEFT JOIN eventlog_streams s ON s.id = $1
	LEFT JOIN LATERAL (SELECT GREATEST(s.first, CASE WHEN $3::bigint > 0 THEN s.head - $3::bigint + 1 ELSE 0 END) AS first) c ON true)`

const boundsQuery = `WITH ` + boundsCTE + ` SELECT epoch, head, first, state, deleted FROM b`

// readQuery is boundsQuery with the events after $4 (at most $5, all if
// NULL) that are retained, when $6 is empty or the epoch: one statement, so
// the events and the bounds they are checked against are one snapshot.
const readQuery = `WITH ` + boundsCTE + `
SELECT b.epoch, b.head, b.first, b.state, b.deleted, e.seq, e.type, e.data FROM b
LEFT JOIN LATERAL (
	SELECT seq, type, data FROM eventlog_events e
	WHERE e.stream = $1 AND e.seq > $4 AND e.seq >= b.first AND e.seq <= b.head AND ($6 = '' OR b.epoch = $6)
	ORDER BY e.seq LIMIT $5::bigint) e ON true
ORDER BY e.seq`

// row is a stream's row as a read sees it.
type row struct {
	epoch   string
	head    *int64
	first   *int64
	state   *int16
	deleted *bool
}

// decideRead is the error of a read of stream after cursor from, given the
// row: nil if the events after from can be returned. It is pure.
func decideRead(stream string, from eventlog.Cursor, r row) error {
	if err := known(stream, r); err != nil {
		return err
	}
	switch {
	case from.Epoch != "" && from.Epoch != r.epoch:
		return fmt.Errorf("%w: stream %q: cursor epoch %q, store epoch %q", eventlog.ErrWrongEpoch, stream, from.Epoch, r.epoch)
	case from.Seq > uint64(*r.head):
		return fmt.Errorf("%w: stream %q: cursor %d, head %d", eventlog.ErrCursorAhead, stream, from.Seq, *r.head)
	case from.Seq+1 < uint64(*r.first):
		return fmt.Errorf("%w: stream %q: cursor %d, oldest retained %d", eventlog.ErrCursorExpired, stream, from.Seq, *r.first)
	}
	return nil
}

// known is the error for a row of a stream that does not exist (any more).
func known(stream string, r row) error {
	switch {
	case r.head == nil:
		return fmt.Errorf("%w: %q", eventlog.ErrUnknownStream, stream)
	case *r.deleted:
		return eventlog.DeletedError(stream)
	}
	return nil
}

// Bounds implements eventlog.Store (one query).
func (s *Store) Bounds(ctx context.Context, stream string) (eventlog.Bounds, error) {
	if err := s.check(ctx, stream); err != nil {
		return eventlog.Bounds{}, err
	}
	var r row
	err := s.pool.QueryRow(ctx, boundsQuery, stream, s.cutoff(), int64(s.retention.MaxEvents)).Scan(&r.epoch, &r.head, &r.first, &r.state, &r.deleted)
	if err != nil {
		return eventlog.Bounds{}, s.err("bounds", err)
	}
	s.setEpoch(r.epoch)
	if err := known(stream, r); err != nil {
		return eventlog.Bounds{}, err
	}
	return eventlog.Bounds{Epoch: r.epoch, First: uint64(*r.first), Head: uint64(*r.head)}, nil
}

// ReadAfter implements eventlog.Store (one query). The Data of each event
// is a fresh copy owned by the caller.
func (s *Store) ReadAfter(ctx context.Context, stream string, from eventlog.Cursor, limit int, dst []eventlog.Event) ([]eventlog.Event, error) {
	if err := s.check(ctx, stream); err != nil {
		return dst, err
	}
	var lim *int64
	if limit >= 0 {
		l := int64(limit)
		lim = &l
	}
	rows, err := s.pool.Query(ctx, readQuery, stream, s.cutoff(), int64(s.retention.MaxEvents), int64(from.Seq), lim, from.Epoch)
	if err != nil {
		return dst, s.err("read", err)
	}
	var r row
	var seq *int64
	var typ *string
	var data []byte
	n := 0
	_, err = pgx.ForEachRow(rows, []any{&r.epoch, &r.head, &r.first, &r.state, &r.deleted, &seq, &typ, &data}, func() error {
		if n++; n == 1 {
			if err := decideRead(stream, from, r); err != nil {
				return err
			}
		}
		if seq != nil {
			dst = append(dst, eventlog.Event{Seq: uint64(*seq), Type: *typ, Data: data})
		}
		return nil
	})
	if err != nil {
		return dst, s.opErr("read", err)
	}
	s.setEpoch(r.epoch)
	return dst, nil
}
