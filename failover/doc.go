// Package failover keeps a service pointed at the best healthy target among
// a primary and its backups, and moves it back to the primary once the
// primary recovers.
//
// # Guarantees
//
//   - Targets are ordered by priority. Pick returns the highest-priority
//     healthy target from an atomic snapshot: no lock, no allocation.
//   - Failback: when a higher-priority target is healthy again the selection
//     moves back to it. With the defaults this happens at most 1.4 s after
//     the target starts answering checks again (rise 2 × interval 500 ms +
//     timeout 400 ms).
//   - Hysteresis: Rise consecutive successes to become healthy, Fall
//     consecutive failures to become unhealthy, and an optional MinDwell
//     that bounds how often a flapping target can win the selection back.
//   - Checks of all targets run concurrently, each under its own timeout,
//     with no lock held during the call. A check that hangs, even one that
//     ignores its context, delays neither Pick, nor the other checks, nor
//     Close.
//   - A target that never reported is Unknown, never healthy.
//   - When no target is healthy, Pick keeps returning the last selection
//     with ok=false; checks go on, backing off up to MaxBackoff while none
//     succeeds, and back at the normal interval as soon as one does.
//   - Optional lag checking: a check can report a head (for a chain node, its
//     block number; any monotonic progress counter works, and a plain
//     up/down check leaves it 0); a target too far behind the highest head
//     of its round is unhealthy, so of two nodes that disagree the one ahead
//     wins.
//   - Passive signals: ReportFailure counts a failed request against a
//     target before its next check; wrapping the error with Down (the
//     caller knows the target is down, e.g. its dial was refused) demotes
//     it at once.
//   - A subscriber never misses the current selection: it first receives
//     the latest change made before it subscribed.
//   - Subscribers learn changes of the selection, with their reasons, in
//     order, without ever blocking the checker. A subscriber that falls
//     behind its buffer gets consecutive changes merged into one (the
//     newest reason, with Change.Coalesced counting the merges), never a
//     stale or reordered one.
//   - Operators can Drain a target or Force one. Close waits for the group's
//     goroutines.
//
// # Usage
//
//	g, err := failover.New(nodes, func(ctx context.Context, n *Node) (failover.Health, error) {
//		head, err := n.BlockNumber(ctx)
//		return failover.Health{Head: head}, err
//	}, failover.WithMaxLag(10))
//	if err != nil {
//		return err
//	}
//	defer g.Close()
//
//	changes, cancel := g.Subscribe()
//	defer cancel()
//	go func() {
//		for c := range changes {
//			log.Printf("upstream %v -> %v (%v)", c.From, c.To, c.Reason)
//			reconnect(c.To)
//		}
//	}()
//
//	i, ok := g.PickIndex() // on every request: lock-free
//	if !ok {
//		// no healthy node: try g.Target(i) anyway, or fail fast
//	}
//	if err := g.Target(i).Call(req); err != nil {
//		if errors.Is(err, syscall.ECONNREFUSED) {
//			err = failover.Down(err) // nothing listens: demote at once
//		}
//		g.ReportFailure(i, err) // counts before the next check
//	}
//
// # The incident
//
// An Ethereum node proxy sent traffic to a primary node with backups. Its
// health checks had no timeout, so one unresponsive node stalled the whole
// monitor; the monitor held a write lock while it did network I/O, so every
// request that needed to read the current node waited behind it; and it only
// switched nodes when the current one failed, so after the primary came back
// traffic stayed on the backup for three hours.
package failover
