package pgstore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/steadfast-go/steadfast/eventlog"
)

// dbName returns the database name of a URL made by newDatabase.
func dbName(u string) string {
	u = u[strings.LastIndex(u, "/")+1:]
	if i := strings.IndexByte(u, '?'); i >= 0 {
		u = u[:i]
	}
	return u
}

func execOn(t *testing.T, u, sql string, args ...any) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func TestSchemaFromANewerVersionIsRefused(t *testing.T) {
	u := newDatabase(t)
	open(t, u).Close()
	execOn(t, u, `UPDATE eventlog_meta SET schema_version = $1`, SchemaVersion+1)
	s, err := Open(context.Background(), u)
	if !errors.Is(err, ErrSchemaTooNew) {
		if s != nil {
			s.Close()
		}
		t.Fatalf("Open of a newer schema: %v, want ErrSchemaTooNew", err)
	}
	if !strings.Contains(err.Error(), fmt.Sprint(SchemaVersion+1)) {
		t.Fatalf("error %q does not name the version found", err)
	}
}

// Processes that open a fresh database at once all succeed, create the
// schema once and agree on one epoch.
func TestConcurrentOpenCreatesTheSchemaOnce(t *testing.T) {
	u := newDatabase(t)
	const n = 6
	epochs := make([]string, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			s, err := Open(context.Background(), u, WithMaxConns(1))
			if err != nil {
				errs[i] = err
				return
			}
			defer s.Close()
			epochs[i], errs[i] = s.Epoch(context.Background())
		})
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("Open %d: %v", i, errs[i])
		}
		if epochs[i] != epochs[0] {
			t.Fatalf("epochs differ: %q", epochs)
		}
	}
	s := open(t, u)
	defer s.Close()
	if e, _ := s.Epoch(context.Background()); e != epochs[0] {
		t.Fatalf("a later Open changed the epoch: %q -> %q", epochs[0], e)
	}
}

// A dump restored into a new database holds the same rows, but it is not
// the same history (anything acknowledged after the dump is gone), so it
// must get a new epoch: old cursors are Unrecoverable, never positions.
func TestRestoredDumpGetsANewEpoch(t *testing.T) {
	if _, err := exec.LookPath("pg_dump"); err != nil {
		t.Skip("pg_dump not installed")
	}
	src := newDatabase(t)
	s := open(t, src)
	l := eventlog.New(eventlog.WithStore(s))
	var last eventlog.Cursor
	for i := range 5 {
		c, err := l.Append(context.Background(), "chat", fmt.Appendf(nil, "m%d", i))
		if err != nil {
			t.Fatal(err)
		}
		last = c
	}
	l.Close()

	dst := newDatabase(t)
	dump := exec.Command("pg_dump", "--no-owner", "--dbname", src)
	restore := exec.Command("psql", "-q", "-v", "ON_ERROR_STOP=1", "--dbname", dst)
	pipe, err := dump.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	restore.Stdin = pipe
	var out strings.Builder
	restore.Stdout, restore.Stderr = &out, &out
	if err := dump.Start(); err != nil {
		t.Fatal(err)
	}
	if err := restore.Run(); err != nil {
		t.Fatalf("restore: %v: %s", err, out.String())
	}
	if err := dump.Wait(); err != nil {
		t.Fatalf("pg_dump: %v", err)
	}

	r := open(t, dst)
	rl := eventlog.New(eventlog.WithStore(r))
	defer rl.Close()
	ctx := context.Background()
	e, err := rl.Epoch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if e == last.Epoch {
		t.Fatalf("restored database kept epoch %q", e)
	}
	res, err := rl.Replay(ctx, "chat", eventlog.Cursor{Epoch: last.Epoch, Seq: 3}, eventlog.DefaultGapCap)
	if err != nil || res.Outcome != eventlog.Unrecoverable || res.Reason != eventlog.WrongEpoch {
		t.Fatalf("old cursor on the restore: %+v, %v; want Unrecoverable/WrongEpoch", res, err)
	}
	if h, err := rl.Head(ctx, "chat"); err != nil || h.Seq != 5 || h.Epoch != e {
		t.Fatalf("restored head %v, %v", h, err)
	}
}

// When the identity a store was created under changes (a standby promoted
// onto a new timeline looks like this to a running process), the next
// connection rotates the epoch, and answers carry the new one.
func TestChangedIdentityRotatesTheEpoch(t *testing.T) {
	u := newDatabase(t)
	s := open(t, u, WithMaxConns(1))
	l := eventlog.New(eventlog.WithStore(s))
	defer l.Close()
	ctx := context.Background()
	old, err := l.Append(ctx, "chat", []byte("before"))
	if err != nil {
		t.Fatal(err)
	}
	execOn(t, u, `UPDATE eventlog_meta SET identity = 'another/history/0'`)
	// Drop the store's pooled connection so the next one checks again.
	execOn(t, u, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE datname = $1 AND pid <> pg_backend_pid() AND application_name <> $2`, dbName(u), listenApp)
	var cur eventlog.Cursor
	for range 5 { // the first use of the terminated connection may fail
		if cur, err = l.Append(ctx, "chat", []byte("after")); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	if cur.Epoch == old.Epoch {
		t.Fatalf("epoch %q survived an identity change", cur.Epoch)
	}
	res, err := l.Replay(ctx, "chat", old, eventlog.DefaultGapCap)
	if err != nil || res.Outcome != eventlog.Unrecoverable || res.Reason != eventlog.WrongEpoch {
		t.Fatalf("old cursor after the change: %+v, %v", res, err)
	}
}

// cutProxy forwards 127.0.0.1 connections to PostgreSQL and can cut them
// all and refuse new ones, like a database that went away.
type cutProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	down   bool
	conns  map[net.Conn]bool
	wg     sync.WaitGroup
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target, conns: map[net.Conn]bool{}}
	p.wg.Go(p.accept)
	t.Cleanup(func() {
		ln.Close()
		p.cut(true)
		p.wg.Wait()
	})
	return p
}

func (p *cutProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.down {
			p.mu.Unlock()
			c.Close()
			continue
		}
		up, err := net.Dial("tcp", p.target)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns[c], p.conns[up] = true, true
		p.mu.Unlock()
		p.wg.Go(func() { io.Copy(up, c); up.Close(); c.Close() })
		p.wg.Go(func() { io.Copy(c, up); up.Close(); c.Close() })
	}
}

// cut closes every connection and, while down, refuses new ones.
func (p *cutProxy) cut(down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = down
	if down {
		for c := range p.conns {
			c.Close()
		}
		clear(p.conns)
	}
}

// PostgreSQL unreachable for 10 s during appends: Append returns an error,
// never a false ack, and afterwards the stream reads contiguous, with every
// acknowledged event at the seq its ack named.
func TestDatabaseUnavailableNeverAcksFalsely(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: takes 10 s")
	}
	direct := newDatabase(t)
	open(t, direct).Close() // schema and epoch, over a direct connection
	p := newCutProxy(t, "127.0.0.1:5432")
	via := strings.Replace(direct, "127.0.0.1:5432", p.ln.Addr().String(), 1)
	if via == direct {
		t.Skip("STEADFAST_POSTGRES does not point at 127.0.0.1:5432")
	}
	s := open(t, via, WithMaxConns(4), WithReconnectDelay(100*time.Millisecond))
	defer s.Close()

	acked := map[uint64]string{} // seq -> data, from successful Appends
	var mu sync.Mutex
	failures := 0
	appendOne := func(i int) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		data := fmt.Sprintf("e%d", i)
		c, err := s.Append(ctx, "s", "", []byte(data))
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			failures++
			return
		}
		if prev, dup := acked[c.Seq]; dup {
			t.Errorf("seq %d acknowledged twice (%s, %s)", c.Seq, prev, data)
		}
		acked[c.Seq] = data
	}
	i := 0
	for ; i < 50; i++ {
		appendOne(i)
	}
	p.cut(true)
	deadline := time.Now().Add(10 * time.Second)
	for ; time.Now().Before(deadline); i++ {
		appendOne(i) // each fails within its 2 s timeout at the latest
	}
	p.cut(false)
	recovered := false
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end) && !recovered; i++ {
		before := len(acked)
		appendOne(i)
		recovered = len(acked) > before
	}
	if !recovered {
		t.Fatal("no append succeeded within 30 s after the database came back")
	}
	if failures == 0 {
		t.Fatal("no append failed while the database was unreachable")
	}
	checkContiguous(t, direct, acked)
}

// checkContiguous reads stream "s" through a fresh store and checks that
// it holds seqs 1..head with no gap and every acknowledged event in place.
func checkContiguous(t *testing.T, u string, acked map[uint64]string) {
	t.Helper()
	r := open(t, u)
	defer r.Close()
	ctx := context.Background()
	b, err := r.Bounds(ctx, "s")
	if err != nil {
		t.Fatal(err)
	}
	head := b.Head
	evs, err := r.ReadAfter(ctx, "s", eventlog.Cursor{}, -1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if uint64(len(evs)) != head {
		t.Fatalf("read %d events, head %d", len(evs), head)
	}
	for i, ev := range evs {
		if ev.Seq != uint64(i+1) {
			t.Fatalf("event %d has seq %d: a gap", i, ev.Seq)
		}
		if want, ok := acked[ev.Seq]; ok && string(ev.Data) != want {
			t.Fatalf("seq %d holds %q, its ack said %q", ev.Seq, ev.Data, want)
		}
	}
	for seq := range acked {
		if seq > head {
			t.Fatalf("acknowledged seq %d is past head %d: a false ack", seq, head)
		}
	}
}

// Delete is a tombstone across stores: while another store (another
// process, as far as PostgreSQL can tell) keeps appending, a Delete ends the
// stream for both, and the id never restarts at seq 1 in this epoch.
func TestDeleteWhileAnotherStoreAppends(t *testing.T) {
	u := newDatabase(t)
	a, b := open(t, u), open(t, u)
	defer a.Close()
	defer b.Close()
	ctx := context.Background()
	if _, err := a.Append(ctx, "s", "", []byte("first")); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var afterDelete []error
	wg.Go(func() {
		deleted := false
		for i := 0; i < 2000; i++ {
			select {
			case <-stop:
				deleted = true
			default:
			}
			c, err := b.Append(ctx, "s", "", []byte("x"))
			if deleted {
				afterDelete = append(afterDelete, err)
				if len(afterDelete) == 20 {
					return
				}
			}
			if err == nil && c.Seq == 1 {
				t.Errorf("the stream restarted at seq 1")
				return
			}
		}
	})
	for range 20 { // let b append a little first
		if _, err := a.Append(ctx, "s", "", []byte("a")); err != nil {
			t.Fatal(err)
		}
	}
	if err := a.Delete(ctx, "s"); err != nil {
		t.Fatal(err)
	}
	close(stop)
	wg.Wait()
	if len(afterDelete) == 0 {
		t.Fatal("the other store stopped before the delete")
	}
	for _, err := range afterDelete {
		if !errors.Is(err, eventlog.ErrStreamDeleted) {
			t.Fatalf("Append after Delete (other store): %v, want a DeletedError", err)
		}
	}
	if _, err := a.Append(ctx, "s", "", []byte("again")); !errors.Is(err, eventlog.ErrStreamDeleted) {
		t.Fatalf("Append after Delete: %v", err)
	}
}
