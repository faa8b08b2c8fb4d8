package pgstore

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/steadfast-go/steadfast/eventlog"
)

// SchemaVersion is the version of the tables this package creates and
// reads. Open migrates an older schema up to it and refuses a newer one.
const SchemaVersion = 1

// migrations[v] takes the schema from version v to v+1.
var migrations = []string{
	0: `
CREATE TABLE eventlog_streams (
	id      text COLLATE "C" PRIMARY KEY,
	head    bigint   NOT NULL,
	first   bigint   NOT NULL,
	state   smallint NOT NULL,
	deleted boolean  NOT NULL DEFAULT false
);
CREATE TABLE eventlog_events (
	stream text COLLATE "C" NOT NULL,
	seq    bigint NOT NULL,
	type   text   NOT NULL,
	data   bytea  NOT NULL,
	ts     bigint NOT NULL,
	PRIMARY KEY (stream, seq)
);`,
}

// migrateLock is the key of the transaction-scoped advisory lock that
// serializes schema creation and epoch checks among processes that open
// the same database at once.
const migrateLock = 0x5374_6466_4576_4c67 // "StdfEvLg"

// migrate creates or upgrades the schema in one transaction under the
// advisory lock, and makes sure the meta row exists and names this
// database's identity (rotating the epoch if it does not). It returns the
// epoch.
func migrate(ctx context.Context, conn *pgx.Conn) (epoch string, err error) {
	current, err := identity(ctx, conn)
	if err != nil {
		return "", err
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return "", err
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, int64(migrateLock)); err != nil {
		return "", err
	}
	if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS eventlog_meta (
		one            boolean PRIMARY KEY DEFAULT true CHECK (one),
		schema_version integer NOT NULL,
		epoch          text    NOT NULL,
		identity       text    NOT NULL)`); err != nil {
		return "", err
	}
	var version int
	err = tx.QueryRow(ctx, `SELECT schema_version FROM eventlog_meta`).Scan(&version)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		version = -1
	case err != nil:
		return "", err
	case version > SchemaVersion:
		return "", fmt.Errorf("%w: database has schema version %d, this build knows %d", ErrSchemaTooNew, version, SchemaVersion)
	}
	for v := max(version, 0); v < SchemaVersion; v++ {
		if _, err := tx.Exec(ctx, migrations[v]); err != nil {
			return "", fmt.Errorf("pgstore: migrate schema %d to %d: %w", v, v+1, err)
		}
	}
	if version < 0 {
		_, err = tx.Exec(ctx, `INSERT INTO eventlog_meta (schema_version, epoch, identity) VALUES ($1, $2, '')`, SchemaVersion, eventlog.NewEpoch())
	} else {
		_, err = tx.Exec(ctx, `UPDATE eventlog_meta SET schema_version = $1`, SchemaVersion)
	}
	if err != nil {
		return "", err
	}
	if epoch, err = checkIdentity(ctx, tx, current); err != nil {
		return "", err
	}
	return epoch, tx.Commit(ctx)
}

// identityParts name the history this database holds: the cluster's
// system identifier, the current WAL timeline (a promoted standby or a
// point-in-time restore starts a new one) and the database's oid (a dump
// restored into a new database gets a new one).
const (
	identityCluster  = `SELECT system_identifier::text FROM pg_control_system()`
	identityTimeline = `SELECT CASE WHEN pg_is_in_recovery() THEN 'standby' ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END`
	identityDatabase = `SELECT oid::text FROM pg_database WHERE datname = current_database()`
)

// identity reads the database's identity on conn, outside any transaction.
// A part the role may not read (pg_control_system needs privileges) is
// left empty; the others still tell restores apart.
func identity(ctx context.Context, conn *pgx.Conn) (string, error) {
	var parts [3]string
	for i, q := range []string{identityCluster, identityTimeline, identityDatabase} {
		if err := conn.QueryRow(ctx, q).Scan(&parts[i]); err != nil {
			if i == 0 && ctx.Err() == nil && !conn.IsClosed() {
				continue // no privilege on the control data
			}
			return "", fmt.Errorf("pgstore: read database identity: %w", err)
		}
	}
	return parts[0] + "/" + parts[1] + "/" + parts[2], nil
}

// checkIdentity compares the database's identity, current, with the one
// the meta row was written under and, if they differ, gives the store a new
// epoch (and tells every listener to re-read): the history may not be the
// one the old epoch's cursors were issued from. It runs in tx, with the
// meta row locked, and returns the epoch in force.
func checkIdentity(ctx context.Context, tx pgx.Tx, current string) (string, error) {
	var epoch, stored string
	if err := tx.QueryRow(ctx, `SELECT epoch, identity FROM eventlog_meta FOR UPDATE`).Scan(&epoch, &stored); err != nil {
		return "", err
	}
	if decideEpoch(stored, current) {
		epoch = eventlog.NewEpoch()
		if _, err := tx.Exec(ctx, `UPDATE eventlog_meta SET epoch = $1, identity = $2`, epoch, current); err != nil {
			return "", err
		}
		if _, err := tx.Exec(ctx, `SELECT pg_notify($1, '')`, channel); err != nil {
			return "", err
		}
	}
	if !eventlog.ValidEpoch(epoch) {
		return "", fmt.Errorf("%w: invalid epoch %q", ErrCorrupt, epoch)
	}
	return epoch, nil
}

// recheck verifies, on a new connection, that the database still holds the
// history of the meta row's epoch (see checkIdentity) and returns the epoch.
func recheck(ctx context.Context, conn *pgx.Conn) (string, error) {
	current, err := identity(ctx, conn)
	if err != nil {
		return "", err
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return "", err
	}
	defer tx.Rollback(ctx)
	epoch, err := checkIdentity(ctx, tx, current)
	if err != nil {
		return "", err
	}
	return epoch, tx.Commit(ctx)
}

// decideEpoch reports whether a store whose meta row was written under
// identity stored, now found under identity current, needs a new epoch.
// A fresh row (stored empty) takes the current identity with a new epoch
// too: it was created in this transaction, so no cursor names it yet.
func decideEpoch(stored, current string) bool { return stored != current }
