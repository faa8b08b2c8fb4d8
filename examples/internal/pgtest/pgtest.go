// Package pgtest gives the examples' tests a PostgreSQL database of their
// own on the server named by STEADFAST_POSTGRES, dropped when the test ends.
package pgtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// NewDatabase creates a database named prefix_<random> and returns its URL;
// it is dropped (with FORCE) at cleanup. The test is skipped when
// STEADFAST_POSTGRES is unset.
func NewDatabase(tb testing.TB, prefix string) string {
	tb.Helper()
	admin := os.Getenv("STEADFAST_POSTGRES")
	if admin == "" {
		tb.Skip("STEADFAST_POSTGRES is not set (e.g. postgres://root@127.0.0.1:5432/test?sslmode=disable): skipping a PostgreSQL test")
	}
	var b [6]byte
	rand.Read(b[:])
	name := prefix + "_" + hex.EncodeToString(b[:])
	if err := exec(admin, "CREATE DATABASE "+name); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() {
		if err := exec(admin, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			tb.Errorf("dropping the test database: %v", err)
		}
	})
	u, err := url.Parse(admin)
	if err != nil {
		tb.Fatalf("STEADFAST_POSTGRES: %v", err)
	}
	u.Path = "/" + name
	return u.String()
}

func exec(admin, sql string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, admin)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	_, err = conn.Exec(ctx, sql)
	return err
}
