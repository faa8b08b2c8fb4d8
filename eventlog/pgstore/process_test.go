package pgstore

import (
	"bufio"
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/steadfast-go/steadfast/eventlog"
)

// The environment of a child process (see runChild).
const (
	envRole  = "PGSTORE_TEST_ROLE"
	envURL   = "PGSTORE_TEST_URL"
	envCount = "PGSTORE_TEST_COUNT"
)

// startChild re-executes the test binary as a child process in role, on
// the database at u, and returns its stdout lines. The child is killed and
// reaped in t.Cleanup.
func startChild(t *testing.T, role, u string, count int) (*exec.Cmd, <-chan string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), envRole+"="+role, envURL+"="+u, envCount+"="+strconv.Itoa(count))
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 1024)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd, lines
}

// expect returns the next line of a child, failing after timeout.
func expect(t *testing.T, lines <-chan string, timeout time.Duration) string {
	t.Helper()
	select {
	case l, ok := <-lines:
		if !ok {
			t.Fatal("child ended early")
		}
		return l
	case <-time.After(timeout):
		t.Fatalf("no line from the child within %v", timeout)
	}
	return ""
}

// runChild is the body of a child process; it returns the exit status.
func runChild(role string) int {
	ctx := context.Background()
	s, err := Open(ctx, os.Getenv(envURL))
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	defer s.Close()
	n, _ := strconv.Atoi(os.Getenv(envCount))
	switch role {
	case "killed-writer":
		testHookAfterSeq = func(stream string, seq uint64) {
			fmt.Printf("took %d\n", seq)
			<-time.After(time.Hour) // until the parent kills this process
		}
		_, err = s.Append(ctx, "k", "", []byte("half"))
	case "tail":
		err = tail(ctx, s, n)
	default:
		err = fmt.Errorf("unknown role %q", role)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "child:", err)
		return 1
	}
	return 0
}

// tail subscribes to stream "tail" and prints "seq N" for each event until
// it has seen n, or the outcome of any result that is not Events.
func tail(ctx context.Context, s *Store, n int) error {
	l := eventlog.New(eventlog.WithStore(s))
	defer l.Close()
	sub, err := l.Subscribe(ctx, "tail", eventlog.Cursor{}, eventlog.SubscribeOptions{})
	if err != nil {
		return err
	}
	defer sub.Close()
	fmt.Println("ready")
	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for seen := 0; seen < n; {
		res, err := sub.Next(ctx)
		if err != nil {
			return err
		}
		if res.Outcome != eventlog.Events {
			fmt.Fprintf(w, "outcome %v\n", res.Outcome)
			return nil
		}
		for _, ev := range res.Events {
			fmt.Fprintf(w, "seq %d\n", ev.Seq)
			seen++
		}
		w.Flush()
	}
	fmt.Fprintln(w, "done")
	return nil
}

// TestKilledWriterLeavesNoGap: a writer SIGKILLed after it took a seq (and
// holds the stream's row lock) but before it committed leaves no gap and no
// half event: the next append, which waited for the lock, gets head+1.
func TestKilledWriterLeavesNoGap(t *testing.T) {
	u := newDatabase(t)
	s := open(t, u)
	defer s.Close()
	ctx := context.Background()
	for i := 1; i <= 3; i++ {
		if _, err := s.Append(ctx, "k", "", []byte(strconv.Itoa(i))); err != nil {
			t.Fatal(err)
		}
	}
	cmd, lines := startChild(t, "killed-writer", u, 0)
	if l := expect(t, lines, 30*time.Second); l != "took 4" {
		t.Fatalf("child: %q, want it to take seq 4", l)
	}
	type result struct {
		c   eventlog.Cursor
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := s.Append(ctx, "k", "", []byte("after"))
		done <- result{c, err}
	}()
	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	var r result
	select {
	case r = <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the next append still waits 30 s after the writer holding the row lock was killed")
	}
	if r.err != nil || r.c.Seq != 4 {
		t.Fatalf("next append = %v, %v; want seq 4 (head+1)", r.c, r.err)
	}
	evs, err := s.ReadAfter(ctx, "k", eventlog.Cursor{}, -1, nil)
	if err != nil || len(evs) != 4 {
		t.Fatalf("stream: %d events, %v; want 4", len(evs), err)
	}
	for i, want := range []string{"1", "2", "3", "after"} {
		if evs[i].Seq != uint64(i+1) || string(evs[i].Data) != want {
			t.Fatalf("event %d = %d %q, want %d %q (no half event, no gap)", i, evs[i].Seq, evs[i].Data, i+1, want)
		}
	}
}

// listenPIDs returns the backends of LISTEN connections on database db.
func listenPIDs(t *testing.T, conn *pgx.Conn, db string) []int32 {
	t.Helper()
	rows, err := conn.Query(context.Background(), `SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = $2`, db, listenApp)
	if err != nil {
		t.Fatal(err)
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		t.Fatal(err)
	}
	return pids
}

// waitListen waits (at most 20 s) until database db has a LISTEN backend
// other than old, and returns it.
func waitListen(t *testing.T, conn *pgx.Conn, db string, old int32) int32 {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(20 * time.Second)
	for {
		for _, p := range listenPIDs(t, conn, db) {
			if p != old {
				return p
			}
		}
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatal("no LISTEN connection within 20 s")
		}
	}
}

// TestTailAcrossProcessesSurvivesListenKill: a subscriber in another
// process receives every one of 5,000 appends, in order, exactly once and
// without Lagged, although its LISTEN backend is terminated twice during
// the burst (the notifications sent meanwhile are lost; the re-read after
// the reconnect covers them).
func TestTailAcrossProcessesSurvivesListenKill(t *testing.T) {
	const n = 5000
	u := newDatabase(t)
	s := open(t, u)
	defer s.Close()
	ctx := context.Background()
	if err := s.SetState(ctx, "tail", eventlog.Active); err != nil {
		t.Fatal(err)
	}
	admin, err := pgx.Connect(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	pu, _ := url.Parse(u)
	db := strings.TrimPrefix(pu.Path, "/")

	_, lines := startChild(t, "tail", u, n)
	if l := expect(t, lines, 30*time.Second); l != "ready" {
		t.Fatalf("child: %q", l)
	}
	pid := waitListen(t, admin, db, 0)
	kills := 0
	// Five bursts of n/5 appends by 8 writers; the LISTEN backend is
	// terminated after the first and the third.
	for burst := range 5 {
		appendConcurrently(t, s, "tail", 8, n/5)
		if burst == 0 || burst == 2 {
			if burst > 0 {
				pid = waitListen(t, admin, db, pid) // it reconnected
			}
			var ok bool
			if err := admin.QueryRow(ctx, `SELECT pg_terminate_backend($1)`, pid).Scan(&ok); err != nil || !ok {
				t.Fatalf("pg_terminate_backend(%d) = %v, %v", pid, ok, err)
			}
			kills++
		}
	}
	for want := 1; want <= n; want++ {
		l := expect(t, lines, 30*time.Second)
		if l != fmt.Sprintf("seq %d", want) {
			t.Fatalf("after %d of %d events the subscriber got %q (kills %d)", want-1, n, l, kills)
		}
	}
	if l := expect(t, lines, 30*time.Second); l != "done" {
		t.Fatalf("child: %q, want done", l)
	}
}

// appendConcurrently appends n events to stream from w goroutines.
func appendConcurrently(t *testing.T, s *Store, stream string, w, n int) {
	t.Helper()
	errs := make(chan error, w)
	for i := range w {
		go func() {
			var err error
			for k := i; k < n && err == nil; k += w {
				_, err = s.Append(context.Background(), stream, "", []byte("x"))
			}
			errs <- err
		}()
	}
	for range w {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
}
