package pgstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net/url"
	"os"
	"testing"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"

	"github.com/steadfast-go/steadfast/eventlog"
	"github.com/steadfast-go/steadfast/eventlog/storetest"
)

func TestMain(m *testing.M) {
	if role := os.Getenv(envRole); role != "" {
		os.Exit(runChild(role)) // a child process of one of the tests
	}
	goleak.VerifyTestMain(m)
}

// serverURL returns STEADFAST_POSTGRES or skips the test.
func serverURL(t testing.TB) string {
	t.Helper()
	u := os.Getenv("STEADFAST_POSTGRES")
	if u == "" {
		t.Skip("STEADFAST_POSTGRES is not set: no PostgreSQL to test against")
	}
	return u
}

// withDatabase returns base with its database name replaced by name.
func withDatabase(t testing.TB, base, name string) string {
	t.Helper()
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("STEADFAST_POSTGRES: %v", err)
	}
	u.Path = "/" + name
	return u.String()
}

// adminExec runs sql on the server's own database.
func adminExec(t testing.TB, sql string, args ...any) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, serverURL(t))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// newDatabase creates a database of its own for the test, dropped in
// t.Cleanup, and returns its URL.
func newDatabase(t testing.TB) string {
	t.Helper()
	base := serverURL(t)
	var b [6]byte
	rand.Read(b[:])
	name := "pgstore_test_" + hex.EncodeToString(b[:])
	adminExec(t, "CREATE DATABASE "+name)
	t.Cleanup(func() { adminExec(t, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)") })
	return withDatabase(t, base, name)
}

func open(t testing.TB, url string, opts ...Option) *Store {
	t.Helper()
	s, err := Open(context.Background(), url, opts...)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func TestConformance(t *testing.T) {
	serverURL(t)
	urls := map[eventlog.Store]string{}
	storetest.Run(t, storetest.Factory{
		Open: func(t *testing.T, r eventlog.Retention) eventlog.Store {
			u := newDatabase(t)
			s := open(t, u, WithRetention(r))
			urls[s] = u
			return s
		},
		Reopen: func(t *testing.T, s eventlog.Store, r eventlog.Retention) eventlog.Store {
			u := urls[s]
			s.Close()
			s2 := open(t, u, WithRetention(r))
			urls[s2] = u
			return s2
		},
	})
}

// TestProcesses: 4 processes × 250 appends to one stream get exactly seqs
// 1..1000, each once, in each writer's order.
func TestProcesses(t *testing.T) {
	var u string
	if !storetest.InChild() {
		u = newDatabase(t)
	}
	storetest.Processes(t, u, func(t *testing.T, shared string) eventlog.Store { return open(t, shared) }, 4, 250)
}
