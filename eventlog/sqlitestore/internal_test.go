package sqlitestore

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"
)

// TestGroupCommit: appends queued while the writer is busy are committed
// together in one transaction, not one transaction each.
func TestGroupCommit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "g.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	s.mu.Lock() // the writer stalls on the stream cache inside its first batch
	const n = 9
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if _, err := s.Append(ctx, "b", "", []byte{byte(i)}); err != nil {
				t.Error(err)
			}
		})
	}
	// Wait until every append is either in the writer's stalled batch or
	// queued behind it.
	deadline := time.Now().Add(10 * time.Second)
	for s.taken.Load()+int64(len(s.reqs)) != n && time.Now().Before(deadline) {
		runtime.Gosched()
	}
	queued := s.taken.Load() + int64(len(s.reqs))
	s.mu.Unlock()
	wg.Wait()
	if queued != n {
		t.Fatalf("%d of %d requests reached the writer", queued, n)
	}
	if c := s.commits.Load(); c > 2 || c < 1 {
		t.Fatalf("%d appends took %d transactions, want at most 2 (the stalled batch, then every queued append together)", n, c)
	}
	if _, head, err := s.Bounds(ctx, "b"); err != nil || head != n {
		t.Fatalf("Bounds(b) = %d, %v", head, err)
	}
	if _, err := os.Stat(path + "-wal"); err != nil {
		t.Fatalf("no write-ahead log next to the database: %v", err)
	}
}

// TestDeleteRemovesRows: Delete deletes the stream's event and stream rows
// (the database does not grow with every stream ever created) and keeps
// only the id, in the deleted table.
func TestDeleteRemovesRows(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "d.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	for range 30 {
		for _, id := range []string{"gone", "kept"} {
			if _, err := s.Append(ctx, id, "", []byte("x")); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := s.Delete(ctx, "gone"); err != nil {
		t.Fatal(err)
	}
	count := func(q string) int {
		var n int
		if err := s.db.QueryRowContext(ctx, q).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := count(`SELECT count(*) FROM events WHERE stream = 'gone'`); n != 0 {
		t.Fatalf("%d event rows of the deleted stream remain", n)
	}
	if n := count(`SELECT count(*) FROM streams WHERE id = 'gone'`); n != 0 {
		t.Fatalf("the deleted stream's row remains")
	}
	if n := count(`SELECT count(*) FROM events WHERE stream = 'kept'`); n != 30 {
		t.Fatalf("the other stream has %d rows, want 30", n)
	}
	if n := count(`SELECT count(*) FROM deleted WHERE id = 'gone'`); n != 1 {
		t.Fatalf("the deleted id is not recorded")
	}
	s.mu.RLock()
	_, cached := s.streams["gone"]
	s.mu.RUnlock()
	if cached {
		t.Fatal("the deleted stream is still cached in memory")
	}
}
