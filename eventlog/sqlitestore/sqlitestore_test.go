package sqlitestore_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/steadfast-go/steadfast/eventlog"
	"github.com/steadfast-go/steadfast/eventlog/sqlitestore"
	"github.com/steadfast-go/steadfast/eventlog/storetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// epochOf returns s's current epoch; it panics on error (tests only).
func epochOf(s eventlog.Store) string {
	e, err := s.Epoch(context.Background())
	if err != nil {
		panic(err)
	}
	return e
}

func TestConformance(t *testing.T) {
	var mu sync.Mutex
	paths := map[eventlog.Store]string{}
	storetest.Run(t, storetest.Factory{
		Open: func(t *testing.T, r eventlog.Retention) eventlog.Store {
			path := filepath.Join(t.TempDir(), "events.db")
			s, err := sqlitestore.Open(path, sqlitestore.WithRetention(r))
			if err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			paths[s] = path
			mu.Unlock()
			return s
		},
		Reopen: func(t *testing.T, s eventlog.Store, r eventlog.Retention) eventlog.Store {
			mu.Lock()
			path := paths[s]
			mu.Unlock()
			if err := s.Close(); err != nil {
				t.Fatal(err)
			}
			s2, err := sqlitestore.Open(path, sqlitestore.WithRetention(r))
			if err != nil {
				t.Fatal(err)
			}
			return s2
		},
	})
}

func TestCorruptFile(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.db")
	junk := make([]byte, 8192)
	for i := range junk {
		junk[i] = byte(i*7 + 3)
	}
	if err := os.WriteFile(garbage, junk, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := sqlitestore.Open(garbage); !errors.Is(err, sqlitestore.ErrCorrupt) {
		t.Fatalf("Open(garbage) err = %v, want ErrCorrupt", err)
	}

	// A valid database whose header page was then damaged.
	path := filepath.Join(dir, "damaged.db")
	s, err := sqlitestore.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 50 {
		if _, err := s.Append(context.Background(), "s", "", []byte(fmt.Sprint(i))); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	copy(b[:16], "not sqlite here!")
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := sqlitestore.Open(path); !errors.Is(err, sqlitestore.ErrCorrupt) {
		t.Fatalf("Open(damaged header) err = %v, want ErrCorrupt", err)
	}
}

func TestForeignSchema(t *testing.T) {
	// A SQLite database that is not an event log is reported as such, not
	// silently written into.
	path := filepath.Join(t.TempDir(), "other.db")
	db, err := sql.Open("sqlite", path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := db.Exec(`CREATE TABLE events (x INTEGER); INSERT INTO events VALUES (1)`); err != nil {
		t.Fatal(err)
	}
	db.Close()
	if _, err := sqlitestore.Open(path); !errors.Is(err, sqlitestore.ErrCorrupt) {
		t.Fatalf("Open(foreign schema) err = %v, want ErrCorrupt", err)
	}

	// An empty file is a valid empty database: it becomes a new log.
	empty := filepath.Join(t.TempDir(), "empty.db")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := sqlitestore.Open(empty)
	if err != nil {
		t.Fatalf("Open(empty file): %v", err)
	}
	s.Close()
}

func TestOpenBadPath(t *testing.T) {
	if _, err := sqlitestore.Open(""); err == nil {
		t.Fatal("Open(\"\") succeeded")
	}
	if _, err := sqlitestore.Open(":memory:"); err == nil {
		t.Fatal("Open(:memory:) succeeded")
	}
	if _, err := sqlitestore.Open(filepath.Join(t.TempDir(), "missing", "dir", "x.db")); err == nil || errors.Is(err, sqlitestore.ErrCorrupt) {
		t.Fatalf("Open(missing dir) err = %v, want a non-corruption error", err)
	}
}

func TestWipedStoreGetsNewEpoch(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "events.db")
	s, err := sqlitestore.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	old := epochOf(s)
	s.Close()
	for _, p := range []string{path, path + "-wal", path + "-shm"} {
		os.Remove(p)
	}
	s, err = sqlitestore.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if epochOf(s) == old {
		t.Fatalf("wiped database kept epoch %q: old cursors would be mistaken for positions", old)
	}
	l := eventlog.New(eventlog.WithStore(s))
	defer l.Close()
	if _, err := l.Append(context.Background(), "s", []byte("x")); err != nil {
		t.Fatal(err)
	}
	res, err := l.Replay(context.Background(), "s", eventlog.Cursor{Epoch: old, Seq: 1}, 0)
	if err != nil || res.Outcome != eventlog.Unrecoverable || res.Reason != eventlog.WrongEpoch {
		t.Fatalf("Replay(cursor from wiped history) = %+v, %v; want Unrecoverable/WrongEpoch", res, err)
	}
}

// TestOpenOddFileNames: the path is a file name, not a URI. '?', '#' and
// '%' used to cut or decode the name, so the events went to another file
// (for "a?b.db": "a", without WAL mode) and a restart pointed at the named
// file found an empty log with a new epoch.
func TestOpenOddFileNames(t *testing.T) {
	ctx := context.Background()
	for _, name := range []string{"a?b.db", "a#b.db", "a%20b.db", "a&_pragma=x.db"} {
		dir := t.TempDir()
		path := filepath.Join(dir, name)
		s, err := sqlitestore.Open(path)
		if err != nil {
			t.Fatalf("Open(%q): %v", name, err)
		}
		epoch := epochOf(s)
		if _, err := s.Append(ctx, "s", "", []byte("x")); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(path + "-wal"); err != nil {
			t.Errorf("%q: no WAL file beside it: %v", name, err)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(ents) != 1 || ents[0].Name() != name {
			var got []string
			for _, e := range ents {
				got = append(got, e.Name())
			}
			t.Fatalf("Open(%q) wrote the files %q", name, got)
		}
		s, err = sqlitestore.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		b, err := s.Bounds(ctx, "s")
		head := b.Head
		if err != nil || head != 1 || epochOf(s) != epoch {
			t.Fatalf("%q after reopen: head %d, %v, epoch %q (was %q)", name, head, err, epochOf(s), epoch)
		}
		s.Close()
	}
}
