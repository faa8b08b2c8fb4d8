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
	ready := make(chan struct{})
	check := func(ctx context.Context, n *node) (failover.Health, error) {
		select { // only so the example subscribes before the first result
		case <-ready:
		case <-ctx.Done():
			return failover.Health{}, ctx.Err()
		}
		return failover.Health{}, n.ping(ctx)
	}
	g, err := failover.New([]*node{primary, backup}, check,
		failover.WithInterval(50*time.Millisecond), failover.WithTimeout(40*time.Millisecond))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer g.Close()
	changes, cancel := g.Subscribe()
	defer cancel()
	close(ready)

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
	if _, ok := g.Pick(); !ok {
		<-changes // wait for the first round
	}
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
	if _, ok := g.Pick(); !ok {
		<-changes // wait for the first round
	}
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

// A request to the selected target failed with connection refused: report
// it, and the next Pick already avoids that target.
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
	if _, ok := g.Pick(); !ok {
		<-changes // wait for the first round
	}
	i, _ := g.PickIndex()
	_ = g.ReportFailure(i, fmt.Errorf("dial %s: %w", g.Target(i), failover.ErrTargetDown))
	fmt.Println(g.Pick())
	// Output:
	// 10.0.0.2:8545 true
}
