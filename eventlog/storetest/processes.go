package storetest

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/eventlog"
)

// Environment of a child process started by Processes.
const (
	envChild  = "STEADFAST_STORETEST_CHILD"  // the child's index
	envShared = "STEADFAST_STORETEST_SHARED" // the shared store's name
	envAppend = "STEADFAST_STORETEST_APPENDS"
)

// InChild reports whether this process is a child started by Processes: a
// test that calls Processes skips its own setup (creating the shared
// database) when it is.
func InChild() bool { return os.Getenv(envChild) != "" }

// Processes is the multi-process mode of the suite, for stores that several
// processes share: n processes, each appending m events to one stream in
// order, must get exactly the seqs 1..n*m, each once, and each process's
// acknowledged seqs must increase in the order it appended them; the stream
// then holds each event under the seq its writer was told.
//
// Call it from a top-level test function, with shared naming the store
// (for example a database URL) and open opening it in this process. In the
// parent it re-executes the test binary n times, running only the calling
// test, and checks the result; in a child (see InChild) it opens the store,
// appends, reports its acknowledgements and returns.
func Processes(t *testing.T, shared string, open func(t *testing.T, shared string) eventlog.Store, n, m int) {
	if InChild() {
		child(t, open)
		return
	}
	s := open(t, shared)
	defer s.Close()
	acks := make([][]uint64, n)
	cmds := make([]*exec.Cmd, n)
	outs := make([]*bufio.Scanner, n)
	for i := range n {
		cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$", "-test.count=1")
		cmd.Env = append(os.Environ(), envChild+"="+strconv.Itoa(i), envShared+"="+shared, envAppend+"="+strconv.Itoa(m))
		cmd.Stderr = os.Stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
		cmds[i], outs[i] = cmd, bufio.NewScanner(out)
	}
	for i := range n {
		for outs[i].Scan() {
			var seq uint64
			if _, err := fmt.Sscanf(outs[i].Text(), "ack %d", &seq); err == nil {
				acks[i] = append(acks[i], seq)
			}
		}
		if err := cmds[i].Wait(); err != nil {
			t.Fatalf("child %d: %v", i, err)
		}
	}
	checkProcesses(t, s, acks, m)
}

// checkProcesses checks the acknowledgements of every process against the
// stream.
func checkProcesses(t *testing.T, s eventlog.Store, acks [][]uint64, m int) {
	t.Helper()
	owner := map[uint64]string{}
	for i, a := range acks {
		if len(a) != m {
			t.Fatalf("child %d acknowledged %d appends, want %d", i, len(a), m)
		}
		for k, seq := range a {
			if k > 0 && seq <= a[k-1] {
				t.Fatalf("child %d: ack %d is seq %d after %d: a process's appends must keep their order", i, k, seq, a[k-1])
			}
			if prev, dup := owner[seq]; dup {
				t.Fatalf("seq %d acknowledged twice (%s and p%d-%d)", seq, prev, i, k)
			}
			owner[seq] = fmt.Sprintf("p%d-%d", i, k)
		}
	}
	total := uint64(len(acks) * m)
	evs, err := s.ReadAfter(context.Background(), "multi", eventlog.Cursor{}, -1, nil)
	if err != nil {
		t.Fatal(err)
	}
	if uint64(len(evs)) != total {
		t.Fatalf("stream holds %d events, want %d", len(evs), total)
	}
	for i, ev := range evs {
		if ev.Seq != uint64(i)+1 || string(ev.Data) != owner[ev.Seq] {
			t.Fatalf("event %d: seq %d data %q, want seq %d data %q", i, ev.Seq, ev.Data, i+1, owner[ev.Seq])
		}
	}
}

// child is the body of a child process: append, and print one "ack <seq>"
// line per acknowledged append.
func child(t *testing.T, open func(t *testing.T, shared string) eventlog.Store) {
	id := os.Getenv(envChild)
	m, _ := strconv.Atoi(os.Getenv(envAppend))
	s := open(t, os.Getenv(envShared))
	defer s.Close()
	w := bufio.NewWriter(os.Stdout)
	defer w.Flush()
	for k := range m {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		c, err := s.Append(ctx, "multi", "", []byte("p"+id+"-"+strconv.Itoa(k)))
		cancel()
		if err != nil {
			t.Fatalf("child %s: append %d: %v", id, k, err)
		}
		fmt.Fprintf(w, "ack %d\n", c.Seq)
	}
}
