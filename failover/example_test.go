package failover_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/steadfast-go/steadfast/failover"
)

// node is a stand-in for an upstream server whose availability the example
// switches on and off.
type node struct {
	name string
	mu   sync.Mutex
	up   bool
}

func (n *node) setUp(up bool) {
	n.mu.Lock()
	n.up = up
	n.mu.Unlock()
}

func (n *node) ping(ctx context.Context) error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.up {
		return errors.New(n.name + " is down")
	}
	return ctx.Err()
}

// The primary fails, the group moves to the backup, and moves back once
// the primary has recovered.
func Example() {
	primary := &node{name: "primary", up: true}
	backup := &node{name: "backup", up: true}
	check := func(ctx context.Context, n *node) (failover.Health, error) {
		return failover.Health{}, n.ping(ctx)
	}
	g, err := failover.New([]*node{primary, backup}, check,
		failover.WithInterval(50*time.Millisecond), failover.WithTimeout(40*time.Millisecond))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer g.Close()
	// However late it subscribes, a subscriber first learns the latest
	// change, so it sees the initial selection.
	changes, cancel := g.Subscribe()
	defer cancel()

	show := func(c failover.Change[*node]) {
		from := "none"
		if c.FromIndex >= 0 {
			from = c.From.name
		}
		fmt.Printf("%s -> %s (%v)\n", from, c.To.name, c.Reason)
	}
	show(<-changes)
	primary.setUp(false)
	show(<-changes)
	primary.setUp(true)
	show(<-changes)
	n, ok := g.Pick()
	fmt.Println("serving from", n.name, ok)
	// Output:
	// none -> primary (initial)
	// primary -> backup (current_unhealthy)
	// backup -> primary (better_available)
	// serving from primary true
}

// Chain nodes report their head block; a node too far behind the others
// is not selected.
func ExampleWithMaxLag() {
	heads := map[string]uint64{"a": 1000, "b": 1100, "c": 1101}
	check := func(ctx context.Context, name string) (failover.Health, error) {
		return failover.Health{Head: heads[name]}, nil
	}
	g, err := failover.New([]string{"a", "b", "c"}, check, failover.WithMaxLag(16))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer g.Close()
	changes, cancel := g.Subscribe()
	defer cancel()
	<-changes // the first selection: the first round has run
	for _, s := range g.Status() {
		fmt.Printf("%s head=%d lag=%d %v\n", s.Target, s.Head, s.Lag, s.State)
	}
	name, _ := g.Pick()
	fmt.Println("selected", name)
	// Output:
	// a head=1000 lag=101 unhealthy
	// b head=1100 lag=1 healthy
	// c head=1101 lag=0 healthy
	// selected b
}

// Operators can take a target out of rotation, or pin one.
func ExampleGroup_Drain() {
	check := func(ctx context.Context, name string) (failover.Health, error) {
		return failover.Health{}, nil
	}
	g, err := failover.New([]string{"a", "b", "c"}, check)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer g.Close()
	changes, cancel := g.Subscribe()
	defer cancel()
	<-changes // the first selection: the first round has run
	_ = g.Drain(0)
	fmt.Println(g.Pick())
	_ = g.Force(2)
	fmt.Println(g.Pick())
	_ = g.Unforce()
	_ = g.Undrain(0)
	fmt.Println(g.Pick())
	// Output:
	// b true
	// c true
	// a true
}

// A request to the selected target failed. A plain error counts as one
// failure; wrapped with Down (the caller knows nothing listens there), it
// demotes the target at once, and the next Pick already avoids it.
func ExampleGroup_ReportFailure() {
	check := func(ctx context.Context, addr string) (failover.Health, error) {
		return failover.Health{}, nil
	}
	g, err := failover.New([]string{"10.0.0.1:8545", "10.0.0.2:8545"}, check)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer g.Close()
	changes, cancel := g.Subscribe()
	defer cancel()
	<-changes // the first selection: the first round has run
	i, _ := g.PickIndex()
	_ = g.ReportFailure(i, errors.New("HTTP 502"))
	fmt.Println(g.Pick())
	refused := fmt.Errorf("dial %s: connection refused", g.Target(i))
	_ = g.ReportFailure(i, failover.Down(refused))
	fmt.Println(g.Pick())
	// Output:
	// 10.0.0.1:8545 true
	// 10.0.0.2:8545 true
}

// A subscriber learns every change of the selection with its reason, in
// order, starting with the latest change before it subscribed.
func ExampleGroup_Subscribe() {
	check := func(ctx context.Context, name string) (failover.Health, error) {
		return failover.Health{}, nil
	}
	g, err := failover.New([]string{"primary", "backup"}, check)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer g.Close()
	changes, cancel := g.Subscribe()
	defer cancel()
	for _, op := range []func() error{
		func() error { return nil }, // the checks make the first selection
		func() error { return g.Drain(0) },
		func() error { return g.Undrain(0) },
	} {
		if err := op(); err != nil {
			fmt.Println(err)
			return
		}
		c := <-changes
		fmt.Printf("#%d %d -> %d (%v)\n", c.Seq, c.FromIndex, c.ToIndex, c.Reason)
	}
	// Output:
	// #1 -1 -> 0 (initial)
	// #2 0 -> 1 (manual)
	// #3 1 -> 0 (manual)
}

// Force pins the selection to a target, healthy or not; Pick's ok still
// tells whether it is healthy. Unforce returns to the normal rule.
func ExampleGroup_Force() {
	check := func(ctx context.Context, name string) (failover.Health, error) {
		if name == "backup" {
			return failover.Health{}, errors.New("maintenance")
		}
		return failover.Health{}, nil
	}
	g, err := failover.New([]string{"primary", "backup"}, check)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer g.Close()
	changes, cancel := g.Subscribe()
	defer cancel()
	<-changes // the first selection: the first round has run
	_ = g.Force(1)
	fmt.Println(g.Pick())
	_ = g.Unforce()
	fmt.Println(g.Pick())
	// Output:
	// backup false
	// primary true
}

// Status is a snapshot of every target, in priority order, for metrics
// and operators.
func ExampleGroup_Status() {
	check := func(ctx context.Context, name string) (failover.Health, error) {
		if name == "b" {
			return failover.Health{}, errors.New("connection reset")
		}
		return failover.Health{Head: 42}, nil
	}
	// One round a minute: nothing changes while the example prints.
	g, err := failover.New([]string{"a", "b"}, check, failover.WithInterval(time.Minute))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer g.Close()
	changes, cancel := g.Subscribe()
	defer cancel()
	<-changes // the first selection: the first round has run
	for _, s := range g.Status() {
		fmt.Printf("%s %v selected=%v failures=%d head=%d err=%v\n",
			s.Target, s.State, s.Selected, s.Failures, s.Head, s.LastErr)
	}
	// Output:
	// a healthy selected=true failures=0 head=42 err=<nil>
	// b unhealthy selected=false failures=1 head=0 err=connection reset
}
