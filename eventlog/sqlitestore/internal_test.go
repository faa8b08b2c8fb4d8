package sqlitestore

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/eventlog"
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
	if b, err := s.Bounds(ctx, "b"); err != nil || b.Head != n {
		t.Fatalf("Bounds(b) = %+v, %v", b, err)
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

// TestDecide is the table test of the pure decision of a commit: each
// request's fate, given the streams' rows at the start of the batch.
func TestDecide(t *testing.T) {
	type want struct {
		seq uint64
		err error
	}
	live := func(head uint64, st eventlog.State) *local {
		return &local{info: info{head: head, first: 1, state: st}, exists: true}
	}
	tests := []struct {
		name   string
		rows   map[string]*local
		batch  []request
		want   []want
		writes int
	}{
		{"appends take consecutive seqs", map[string]*local{"a": live(4, eventlog.Active)},
			[]request{{kind: kindAppend, stream: "a"}, {kind: kindAppend, stream: "a"}},
			[]want{{seq: 5}, {seq: 6}}, 2},
		{"new stream starts at 1", map[string]*local{"n": {info: info{first: 1, state: eventlog.Created}}},
			[]request{{kind: kindAppend, stream: "n"}},
			[]want{{seq: 1}}, 1},
		{"ended rejects appends, not Ended again", map[string]*local{"e": live(2, eventlog.Ended)},
			[]request{{kind: kindAppend, stream: "e"}, {kind: kindState, stream: "e", state: eventlog.Active}, {kind: kindState, stream: "e", state: eventlog.Ended}},
			[]want{{err: eventlog.ErrStreamEnded}, {err: eventlog.ErrStreamEnded}, {}}, 0},
		{"state then append in one batch", map[string]*local{"a": live(0, eventlog.Created)},
			[]request{{kind: kindState, stream: "a", state: eventlog.Ended}, {kind: kindAppend, stream: "a"}},
			[]want{{}, {err: eventlog.ErrStreamEnded}}, 0},
		{"delete, then the id is dead in the same batch", map[string]*local{"d": live(3, eventlog.Active)},
			[]request{{kind: kindDelete, stream: "d"}, {kind: kindAppend, stream: "d"}, {kind: kindDelete, stream: "d"}},
			[]want{{}, {err: eventlog.ErrStreamDeleted}, {err: eventlog.ErrStreamDeleted}}, 1},
		{"delete of an unknown id", map[string]*local{"u": {info: info{first: 1, state: eventlog.Created}}},
			[]request{{kind: kindDelete, stream: "u"}},
			[]want{{err: eventlog.ErrUnknownStream}}, 0},
		{"a tombstone stays", map[string]*local{"x": {deleted: true}},
			[]request{{kind: kindState, stream: "x", state: eventlog.Active}},
			[]want{{err: eventlog.ErrStreamDeleted}}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			batch := make([]*request, len(tt.batch))
			for i := range tt.batch {
				batch[i] = &tt.batch[i]
			}
			ws := decide(batch, tt.rows, map[string]int64{}, 100)
			if len(ws) != tt.writes {
				t.Fatalf("%d writes, want %d", len(ws), tt.writes)
			}
			for i, r := range batch {
				w := tt.want[i]
				if r.seq != w.seq || (w.err == nil) != (r.err == nil) || (w.err != nil && !errors.Is(r.err, w.err)) {
					t.Fatalf("request %d: seq %d err %v, want seq %d err %v", i, r.seq, r.err, w.seq, w.err)
				}
			}
		})
	}
}

// TestCountFirst is the table test of count retention's arithmetic.
func TestCountFirst(t *testing.T) {
	for _, c := range []struct {
		max         int
		first, head uint64
		want        uint64
	}{
		{0, 1, 100, 1},   // no bound
		{10, 1, 5, 1},    // fewer than the bound
		{10, 1, 10, 1},   // exactly the bound
		{10, 1, 11, 2},   // one over
		{10, 50, 55, 50}, // already pruned further (age)
		{10, 1, 0, 1},    // empty stream
	} {
		if got := countFirst(c.max, c.first, c.head); got != c.want {
			t.Errorf("countFirst(%d, %d, %d) = %d, want %d", c.max, c.first, c.head, got, c.want)
		}
	}
}
