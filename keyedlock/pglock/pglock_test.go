package pglock

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"
)

const (
	envRole = "PGLOCK_TEST_ROLE"
	envURL  = "PGLOCK_TEST_URL"
	envKeys = "PGLOCK_TEST_KEYS"
	envN    = "PGLOCK_TEST_N"
)

func TestMain(m *testing.M) {
	if role := os.Getenv(envRole); role != "" {
		os.Exit(runChild(role))
	}
	goleak.VerifyTestMain(m)
}

func serverURL(t testing.TB) string {
	t.Helper()
	u := os.Getenv("STEADFAST_POSTGRES")
	if u == "" {
		t.Skip("STEADFAST_POSTGRES is not set: no PostgreSQL to test against")
	}
	return u
}

func adminExec(t testing.TB, u, sql string, args ...any) {
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

// newDatabase creates a database for the test, dropped at cleanup.
func newDatabase(t testing.TB) string {
	t.Helper()
	base := serverURL(t)
	var b [6]byte
	rand.Read(b[:])
	name := "pglock_test_" + hex.EncodeToString(b[:])
	adminExec(t, base, "CREATE DATABASE "+name)
	t.Cleanup(func() { adminExec(t, base, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)") })
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	u.Path = "/" + name
	return u.String()
}

func open(t testing.TB, u string, opts ...Option) *Locker {
	t.Helper()
	l, err := Open(context.Background(), u, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func query[T any](t testing.TB, u, sql string, args ...any) T {
	t.Helper()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var v T
	if err := conn.QueryRow(ctx, sql, args...).Scan(&v); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return v
}

// lockRows counts key's advisory lock rows in pg_locks, granted or not.
func lockRows(t testing.TB, u, key string, granted bool) int {
	id := uint64(LockID(key))
	return query[int](t, u, `SELECT count(*)::int FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1
		AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND granted = $3
		AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`, int64(id>>32), int64(id&0xffffffff), granted)
}

// eventually polls cond for at most 10 s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("timed out waiting for %s", what)
}

func TestLockUnlockTokensAndStatus(t *testing.T) {
	u := newDatabase(t)
	l := open(t, u, WithMaxIdle(0))
	ctx := context.Background()
	var last int64
	for i := range 3 {
		ls, err := l.Lock(ctx, "k")
		if err != nil {
			t.Fatal(err)
		}
		if ls.Token() <= last {
			t.Fatalf("grant %d: token %d not above %d", i, ls.Token(), last)
		}
		last = ls.Token()
		if st, err := l.Status(ctx, "k"); err != nil || !st.Held || st.Waiters != 0 {
			t.Fatalf("Status while held: %+v %v", st, err)
		}
		if _, ok, err := l.TryLock(ctx, "k"); ok || err != nil {
			t.Fatalf("TryLock of a held key: %v %v", ok, err)
		}
		if err := ls.Unlock(); err != nil {
			t.Fatal(err)
		}
		if ls.Context().Err() == nil {
			t.Fatal("the lease's context outlived Unlock")
		}
		if err := ls.Unlock(); err == nil {
			t.Fatal("a second Unlock succeeded")
		}
	}
	// Idle keys leave nothing behind: no pg_locks row, no lock connection.
	if n := lockRows(t, u, "k", true) + lockRows(t, u, "k", false); n != 0 {
		t.Fatalf("%d pg_locks rows for an idle key", n)
	}
	if n := query[int](t, u, `SELECT count(*)::int FROM pg_stat_activity WHERE application_name = 'steadfast-pglock' AND datname = current_database()`); n != 0 {
		t.Fatalf("%d lock connections left open with WithMaxIdle(0)", n)
	}
	ls, ok, err := l.TryLock(ctx, "k")
	if !ok || err != nil || ls.Token() != last+1 {
		t.Fatalf("TryLock of a free key: %v %v token %d", ok, err, ls.Token())
	}
	if err := l.Do(ctx, "other", func(ctx context.Context, token int64) error {
		if ctx.Err() != nil || token != 1 {
			return fmt.Errorf("Do: ctx %v token %d", ctx.Err(), token)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	ls.Unlock()
}

// A waiter cancelled while it waits in PostgreSQL's queue leaves no row in
// pg_locks, never holds the key, and the holder's release goes to nobody.
func TestCanceledWaiterLeavesNoTrace(t *testing.T) {
	u := newDatabase(t)
	a, b := open(t, u), open(t, u)
	ctx := context.Background()
	held, err := a.Lock(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	res := make(chan error, 1)
	go func() {
		ls, err := b.Lock(wctx, "k")
		if err == nil {
			ls.Unlock()
		}
		res <- err
	}()
	eventually(t, "the waiter in pg_locks", func() bool { return lockRows(t, u, "k", false) == 1 })
	if st, _ := a.Status(ctx, "k"); !st.Held || st.Waiters != 1 {
		t.Fatalf("Status with a waiter in another Locker: %+v", st)
	}
	cancel()
	if err := <-res; !errors.Is(err, context.Canceled) {
		t.Fatalf("canceled Lock returned %v", err)
	}
	if n := lockRows(t, u, "k", false); n != 0 {
		t.Fatalf("%d waiting rows after the cancel returned", n)
	}
	if err := held.Unlock(); err != nil {
		t.Fatal(err)
	}
	if n := lockRows(t, u, "k", true); n != 0 {
		t.Fatalf("the key was granted to somebody after the holder left (%d rows)", n)
	}
	// The canceled Locker still works.
	ls, err := b.Lock(ctx, "k")
	if err != nil || ls.Token() != 2 {
		t.Fatalf("Lock after a cancel: %v, token %d", err, ls.Token())
	}
	ls.Unlock()
}

// Terminating the holder's backend ends the lease's context within the ping
// bound, with ErrLockLost as the cause.
func TestTerminatedBackendSignalsLostLock(t *testing.T) {
	u := newDatabase(t)
	l := open(t, u, WithPing(100*time.Millisecond, 500*time.Millisecond))
	ls, err := l.Lock(context.Background(), "k")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	adminExec(t, u, `SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid() AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`)
	select {
	case <-ls.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the lease's context did not end within 5 s of its backend's death")
	}
	if took := time.Since(start); took > 600*time.Millisecond+500*time.Millisecond {
		t.Fatalf("lost lock signalled after %v, bound is interval+timeout (600 ms) plus scheduling", took)
	}
	if !errors.Is(context.Cause(ls.Context()), ErrLockLost) {
		t.Fatalf("cause %v, want ErrLockLost", context.Cause(ls.Context()))
	}
	if err := ls.Unlock(); err == nil {
		t.Fatal("Unlock of a lost lock reported success")
	}
}

func TestSamePID(t *testing.T) {
	for _, c := range []struct {
		pids []int32
		want bool
	}{{[]int32{7, 7, 7}, true}, {[]int32{7, 8, 7}, false}, {[]int32{7}, true}} {
		if got := samePID(c.pids); got != c.want {
			t.Errorf("samePID(%v) = %v", c.pids, got)
		}
	}
}

// ---- real processes ----

// runChild is a child process: "worker" acquires each key N times,
// recording each hold in the recorder table with a logical clock;
// "holder" takes a key, prints its token and blocks until killed.
func runChild(role string) int {
	ctx := context.Background()
	u := os.Getenv(envURL)
	l, err := Open(ctx, u)
	if err != nil {
		fmt.Println("error", err)
		return 1
	}
	defer l.Close()
	switch role {
	case "holder":
		ls, err := l.Lock(ctx, os.Getenv(envKeys))
		if err != nil {
			fmt.Println("error", err)
			return 1
		}
		fmt.Println("held", ls.Token())
		select {} // until SIGKILL
	case "worker":
		rec, err := pgx.Connect(ctx, u)
		if err != nil {
			fmt.Println("error", err)
			return 1
		}
		defer rec.Close(ctx)
		n, _ := strconv.Atoi(os.Getenv(envN))
		keys := strings.Split(os.Getenv(envKeys), ",")
		for i := range n {
			for j := range keys {
				key := keys[(i+j)%len(keys)]
				err := l.Do(ctx, key, func(ctx context.Context, token int64) error {
					_, err := rec.Exec(ctx, `INSERT INTO rec (key, token, t0) VALUES ($1, $2, nextval('clock'))`, key, token)
					if err == nil {
						_, err = rec.Exec(ctx, `UPDATE rec SET t1 = nextval('clock') WHERE key = $1 AND token = $2`, key, token)
					}
					return err
				})
				if err != nil {
					fmt.Println("error", err)
					return 1
				}
			}
		}
		fmt.Println("done")
		return 0
	}
	return 2
}

func startChild(t *testing.T, role, u, keys string, n int) (*exec.Cmd, *bufio.Scanner) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envRole+"="+role, envURL+"="+u, envKeys+"="+keys, envN+"="+strconv.Itoa(n))
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd, bufio.NewScanner(out)
}

// Three processes take five keys 30 times each, in different orders: per
// key, no two holds overlap (by a logical clock taken inside each hold),
// and tokens increase in the order of the holds.
func TestExclusionAndTokenOrderAcrossProcesses(t *testing.T) {
	u := newDatabase(t)
	adminExec(t, u, `CREATE SEQUENCE clock`)
	adminExec(t, u, `CREATE TABLE rec (key text, token bigint, t0 bigint, t1 bigint, PRIMARY KEY (key, token))`)
	keys := "a,b,c,d,e"
	const procs, n = 3, 30
	var wg sync.WaitGroup
	for range procs {
		_, sc := startChild(t, "worker", u, keys, n)
		wg.Go(func() {
			for sc.Scan() {
				if line := sc.Text(); line != "done" {
					t.Errorf("worker: %s", line)
				}
			}
		})
	}
	wg.Wait()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, `SELECT key, token, t0, t1 FROM rec ORDER BY key, t0`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	type hold struct{ token, t0, t1 int64 }
	last := map[string]hold{}
	count := 0
	for rows.Next() {
		var k string
		var h hold
		if err := rows.Scan(&k, &h.token, &h.t0, &h.t1); err != nil {
			t.Fatal(err)
		}
		count++
		if p, ok := last[k]; ok {
			if h.t0 < p.t1 {
				t.Fatalf("key %s: hold of token %d started (%d) before token %d ended (%d)", k, h.token, h.t0, p.token, p.t1)
			}
			if h.token <= p.token {
				t.Fatalf("key %s: token %d after token %d", k, h.token, p.token)
			}
		}
		last[k] = h
	}
	if count != procs*n*5 {
		t.Fatalf("%d holds recorded, want %d", count, procs*n*5)
	}
}

// A holder SIGKILLed while it holds the key: the next waiter gets it (when
// PostgreSQL sees the backend end) with a larger token, and a write fenced
// with the old token is refused.
func TestKilledHolderNextWaiterGetsLargerToken(t *testing.T) {
	u := newDatabase(t)
	adminExec(t, u, `CREATE TABLE resource (id int PRIMARY KEY, value text, token bigint)`)
	adminExec(t, u, `INSERT INTO resource VALUES (1, '', 0)`)
	cmd, sc := startChild(t, "holder", u, "k", 0)
	if !sc.Scan() || !strings.HasPrefix(sc.Text(), "held ") {
		t.Fatalf("holder: %q", sc.Text())
	}
	old, _ := strconv.ParseInt(strings.TrimPrefix(sc.Text(), "held "), 10, 64)
	l := open(t, u)
	got := make(chan *Lease, 1)
	go func() {
		ls, err := l.Lock(context.Background(), "k")
		if err != nil {
			t.Error(err)
		}
		got <- ls
	}()
	eventually(t, "the waiter in pg_locks", func() bool { return lockRows(t, u, "k", false) == 1 })
	cmd.Process.Kill()
	var ls *Lease
	select {
	case ls = <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("the waiter did not get the key within 10 s of the holder's death")
	}
	if ls == nil {
		t.FailNow()
	}
	defer ls.Unlock()
	if ls.Token() <= old {
		t.Fatalf("new token %d not above the dead holder's %d", ls.Token(), old)
	}
	fenced := `UPDATE resource SET value = $1, token = $2 WHERE id = 1 AND token <= $2`
	adminExec(t, u, fenced, "new holder", ls.Token())
	adminExec(t, u, fenced, "stale holder", old)
	if v := query[string](t, u, `SELECT value FROM resource WHERE id = 1`); v != "new holder" {
		t.Fatalf("resource holds %q: the stale holder's write went through", v)
	}
}

// Waiters cancelled at random instants, some while the key is being handed
// over: every cancelled Lock returns the context's error, the survivors get
// the key in the order of their Lock calls, and no grant ever went to a
// cancelled caller (each grant takes a token, so the token count equals the
// number of holders).
func TestRandomCancellationsKeepOrderAndLeaveNoGrant(t *testing.T) {
	u := newDatabase(t)
	l := open(t, u)
	ctx := context.Background()
	first, err := l.Lock(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	const n = 12
	type result struct {
		i   int
		err error
	}
	var mu sync.Mutex
	var order []int
	results := make(chan result, n)
	cancels := make([]context.CancelFunc, n)
	for i := range n {
		wctx, cancel := context.WithCancel(ctx)
		cancels[i] = cancel
		go func() {
			ls, err := l.Lock(wctx, "k")
			if err == nil {
				mu.Lock()
				order = append(order, i)
				mu.Unlock()
				ls.Unlock()
			}
			results <- result{i, err}
		}()
		// Queue them in index order: wait until this one is counted.
		eventually(t, "the waiter queued", func() bool {
			st, err := l.Status(ctx, "k")
			return err == nil && st.Waiters == i+1
		})
	}
	// Cancel a random half, interleaved with the hand-offs.
	var b [n]byte
	rand.Read(b[:])
	canceled := map[int]bool{}
	first.Unlock()
	for i := range n {
		if b[i]%2 == 0 {
			cancels[i]()
			canceled[i] = true
		}
	}
	for range n {
		r := <-results
		if canceled[r.i] && r.err == nil {
			// Granted before its cancel took effect: a holder, as with
			// keyedlock, and counted among the survivors below.
			canceled[r.i] = false
		}
		if !canceled[r.i] && r.err != nil {
			t.Fatalf("waiter %d (not canceled) failed: %v", r.i, r.err)
		}
		if canceled[r.i] && !errors.Is(r.err, context.Canceled) {
			t.Fatalf("canceled waiter %d returned %v", r.i, r.err)
		}
	}
	for _, c := range cancels {
		c()
	}
	for i := 1; i < len(order); i++ {
		if order[i] < order[i-1] {
			t.Fatalf("survivors got the key out of order: %v", order)
		}
	}
	tokens := query[int64](t, u, `SELECT token FROM steadfast_pglock_tokens WHERE key = 'k'`)
	if tokens != int64(1+len(order)) {
		t.Fatalf("%d grants for %d holders: a cancelled caller was granted the key", tokens, 1+len(order))
	}
	if n := lockRows(t, u, "k", true) + lockRows(t, u, "k", false); n != 0 {
		t.Fatalf("%d pg_locks rows left", n)
	}
}
