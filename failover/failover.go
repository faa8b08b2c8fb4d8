package failover

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Errors returned by this package. Errors recorded for a target (see
// TargetStatus.LastErr) wrap ErrTimeout, ErrLagging or ErrCheckPanicked when
// the group produced them, or are the check's own error (or the error given
// to ReportFailure) otherwise.
var (
	// ErrNoTargets is returned by New when the target list is empty.
	ErrNoTargets = errors.New("failover: no targets")
	// ErrTimeout is recorded when a check did not return within the timeout,
	// or was still running from an earlier round.
	ErrTimeout = errors.New("failover: check timed out")
	// ErrLagging is recorded when a check succeeded but reported a head too
	// far behind the highest head of its round (see WithMaxLag).
	ErrLagging = errors.New("failover: target lags behind the highest head")
	// ErrCheckPanicked is recorded when a check panicked; the panic is
	// recovered and counts as a failure.
	ErrCheckPanicked = errors.New("failover: check panicked")
	// ErrTargetDown, wrapped in an error passed to ReportFailure (see
	// Down), demotes the target at once instead of counting one failure.
	ErrTargetDown = errors.New("failover: target down")
	// ErrIndex is returned when a target index is out of range.
	ErrIndex = errors.New("failover: target index out of range")
	// ErrClosed is returned by methods called after Close.
	ErrClosed = errors.New("failover: group closed")
	// ErrChecksAbandoned is returned by Close when some check calls ignored
	// cancellation and were still running after the grace period.
	ErrChecksAbandoned = errors.New("failover: checks still running after close")
)

// Down returns an error that wraps both ErrTargetDown and err, for
// ReportFailure: the caller has proof that the target is down (for example
// its dial was refused), so the target is demoted at once rather than after
// Fall failures. Down(nil) returns ErrTargetDown.
func Down(err error) error {
	if err == nil {
		return ErrTargetDown
	}
	return fmt.Errorf("%w: %w", ErrTargetDown, err)
}

// Health is what a check reports about a healthy target.
type Health struct {
	// Head is the target's progress, for a chain node its head block
	// number. It is only used when lag checking is on (WithMaxLag).
	Head uint64
}

// CheckFunc checks one target. It must honour ctx, which carries the check
// timeout and is cancelled by Close; a nil error means the target answered.
// The group calls it from its own goroutines with no lock held, concurrently
// for different targets but never twice at once for the same target, and
// recovers a panic as a failure wrapping ErrCheckPanicked. It may call the
// Group's methods other than Close (which would wait for it).
type CheckFunc[T any] func(ctx context.Context, target T) (Health, error)

// State is a target's health as the group sees it.
type State uint8

const (
	// Unknown: no check or failure report has completed yet. An Unknown
	// target is never selected as healthy.
	Unknown State = iota
	// Healthy: the target may be selected.
	Healthy
	// Unhealthy: the target failed Fall times in a row (or was reported
	// down) and has not yet succeeded Rise times in a row.
	Unhealthy
)

// String returns "unknown", "healthy" or "unhealthy".
func (s State) String() string {
	switch s {
	case Unknown:
		return "unknown"
	case Healthy:
		return "healthy"
	case Unhealthy:
		return "unhealthy"
	}
	return fmt.Sprintf("State(%d)", uint8(s))
}

// Reason says why the selection changed.
type Reason uint8

const (
	// Initial: the first selection made by the checks (Change.FromIndex is
	// -1). A first selection made by Force or Drain has reason Manual.
	Initial Reason = iota
	// CurrentUnhealthy: the selected target became unhealthy.
	CurrentUnhealthy
	// BetterAvailable: a higher-priority target is healthy again
	// (failback), and the minimum dwell time has passed.
	BetterAvailable
	// Manual: Drain, Undrain, Force or Unforce moved the selection.
	Manual
)

// String returns the reason in snake case, suitable as a metric label.
func (r Reason) String() string {
	switch r {
	case Initial:
		return "initial"
	case CurrentUnhealthy:
		return "current_unhealthy"
	case BetterAvailable:
		return "better_available"
	case Manual:
		return "manual"
	}
	return fmt.Sprintf("Reason(%d)", uint8(r))
}

// Change is one change of the selected target, as delivered to subscribers.
// Consecutive changes delivered to one subscriber chain: each From is the
// previous To.
type Change[T any] struct {
	// From is the target selected before the change (the zero T for the
	// first change); To is the target selected now.
	From, To T
	// FromIndex and ToIndex are the indexes of From and To in the list
	// given to New; FromIndex is -1 for the first change.
	FromIndex, ToIndex int
	// Reason says why the selection moved.
	Reason Reason
	// Seq numbers the changes of a group 1, 2, 3...; it is the Seq of the
	// newest change merged into this one.
	Seq uint64
	// Coalesced counts the changes merged into this one because the
	// subscriber was slow (0 normally). Reason is then the newest one's,
	// and From may equal To if the selection came back.
	Coalesced int
	// At is when the change happened.
	At time.Time
}

// TargetStatus is a snapshot of one target, for metrics and operators.
type TargetStatus[T any] struct {
	Index    int   // position in the list given to New (0 is the primary)
	Target   T     // the target itself
	State    State // health as the group sees it
	Selected bool  // Pick returns this target
	Drained  bool  // excluded from selection by Drain until Undrain
	Forced   bool  // the selection is pinned here by Force
	Checking bool  // a check call is in flight
	// Successes and Failures are the current consecutive counts (one of
	// them is 0).
	Successes, Failures int
	// Head is the last head reported by a successful check; Lag is how far
	// it was behind the highest head of that round (0 when lag checking is
	// off).
	Head, Lag uint64
	LastErr   error     // nil after a success
	LastCheck time.Time // when the last check result was recorded
}

type targetState struct {
	state     State
	succ      int
	fail      int
	head      uint64
	lag       uint64
	lastErr   error
	lastCheck time.Time
	drained   bool
	inflight  bool
}

// Group selects the highest-priority healthy target among a fixed list and
// keeps it current with periodic health checks.
//
// Targets are identified by their index in the list given to New; index 0
// is the primary. The group checks every target concurrently once per
// interval, each call under its own timeout, applies the round's results
// together, and then reselects:
//
//   - A target starts Unknown; its first result (check or ReportFailure)
//     makes it Healthy or Unhealthy. After that, Fall consecutive failures
//     make a Healthy target Unhealthy and Rise consecutive successes make an
//     Unhealthy target Healthy. Failures are failed checks, timeouts, lagging
//     heads and ReportFailure calls; a check still running from an earlier
//     round (one that ignores its context) counts one more timeout per
//     round, and no second call is started for that target meanwhile.
//   - The selection is the first Healthy, non-drained target. It moves back
//     to a higher-priority target as soon as that one is Healthy again
//     (failback); with a MinDwell, at the first round after MinDwell has
//     passed since the last change. Leaving an unhealthy or drained target
//     is never delayed.
//   - When no target is eligible the selection stays where it was (or on
//     the primary if nothing was ever selected) and Pick reports ok=false.
//     Checks continue; the pause between rounds doubles up to MaxBackoff
//     while no check succeeds, and returns to the interval as soon as one
//     does, so a recovering target reaches Rise at the normal pace.
//   - Force pins the selection to one target regardless of health until
//     Unforce.
//
// Lag: with WithMaxLag(n), each successful check of a round is compared to
// the highest head reported in that round. A target more than n below it
// counts as a failed check (with an error wrapping ErrLagging), so of two
// targets that disagree by more than n the one ahead is chosen. The highest
// head is trusted: a node can fall behind, but a chain node cannot invent
// blocks. A check that can tell a head is absurd (from another chain, or
// beyond what the clock allows) should return an error instead of that
// head: it is then a failed check and the others are judged without it.
//
// A Group is safe for concurrent use. Pick is lock-free and allocation-free.
// No lock is held while a check runs: a check that hangs delays neither Pick,
// nor the other checks, nor Close. There is no usable zero value: use New,
// and share the returned pointer (a Group must not be copied). Subscribers
// receive changes in the order they happened.
type Group[T any] struct {
	targets []T
	check   CheckFunc[T]
	cfg     config
	cancel  context.CancelFunc

	// sel is the published selection: (index+1)<<1 | ok.
	sel atomic.Uint64

	wg sync.WaitGroup // scheduler and subscriber goroutines

	mu         sync.Mutex // protects all fields below
	st         []targetState
	cur        int // selected index, -1 before the first selection
	forced     int // -1 when not forced
	lastChange time.Time
	seq        uint64
	last       Change[T] // the change numbered seq, valid when seq > 0
	subs       map[*subscriber[T]]struct{}
	closed     bool
	running    int           // check calls that have not returned
	checksDone chan struct{} // closed when running reaches 0 after Close

	closeDone chan struct{} // closed when the first Close returns
}

// New creates a group over targets, listed in priority order (primary
// first), and starts checking them at once (nil options are ignored). It
// does not wait for the first round: until a target has reported, Pick
// returns the primary with ok=false; Subscribe right after New still sees
// the first change (see Subscribe).
//
// New returns ErrNoTargets when targets is empty. It panics, with a message
// starting "failover: ", if check is nil, if an option's value is out of
// range, or if the timeout is longer than the interval: those are
// programming errors, not conditions to handle at run time.
func New[T any](targets []T, check CheckFunc[T], opts ...Option) (*Group[T], error) {
	if len(targets) == 0 {
		return nil, ErrNoTargets
	}
	if check == nil {
		invalid("nil check func")
	}
	cfg := defaultConfig()
	for _, o := range opts {
		if o != nil {
			o.apply(&cfg)
		}
	}
	if cfg.timeout > cfg.interval {
		invalid("timeout %v longer than interval %v", cfg.timeout, cfg.interval)
	}
	ctx, cancel := context.WithCancel(context.Background())
	g := &Group[T]{
		targets: slices.Clone(targets),
		check:   check,
		cfg:     cfg,
		cancel:  cancel,
		st:      make([]targetState, len(targets)),
		cur:     -1,
		forced:  -1,
		subs:    make(map[*subscriber[T]]struct{}),

		closeDone: make(chan struct{}),
	}
	g.wg.Add(1)
	go g.run(ctx)
	return g, nil
}

// Len returns the number of targets.
func (g *Group[T]) Len() int { return len(g.targets) }

// Target returns the target at index i. It panics if i is out of range
// (use Len; every index Pick, Status and Change report is in range).
func (g *Group[T]) Target(i int) T {
	if i < 0 || i >= len(g.targets) {
		panic(fmt.Sprintf("failover: Target(%d) out of range [0, %d)", i, len(g.targets)))
	}
	return g.targets[i]
}

// Pick returns the selected target and whether it is healthy. When ok is
// false no target is eligible and Pick returns the last selected target (or
// the primary if none was ever selected): callers may still try it, or fail
// fast. Pick never blocks and does not allocate.
func (g *Group[T]) Pick() (target T, ok bool) {
	i, ok := g.PickIndex()
	return g.targets[i], ok
}

// PickIndex is like Pick but returns the target's index.
func (g *Group[T]) PickIndex() (index int, ok bool) {
	v := g.sel.Load()
	i := int(v>>1) - 1
	if i < 0 {
		i = 0
	}
	return i, v&1 == 1
}

// ReportFailure records a failed request against target i, seen by the
// caller outside of health checks (passive checking). It counts as one
// failed check towards the fall threshold, so a target failing requests is
// demoted before its next check. If err wraps ErrTargetDown (see Down) the
// target is demoted at once: whether an error proves a target down is the
// caller's policy, never guessed from the error. A nil err counts as a
// plain failure. Successes are only ever learned from checks.
//
// ReportFailure returns an error wrapping ErrIndex if i is out of range, or
// ErrClosed after Close.
func (g *Group[T]) ReportFailure(i int, err error) error {
	if i < 0 || i >= len(g.targets) {
		return fmt.Errorf("%w: %d", ErrIndex, i)
	}
	if err == nil {
		err = errors.New("failover: request failed")
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return ErrClosed
	}
	s := &g.st[i]
	if errors.Is(err, ErrTargetDown) {
		s.succ = 0
		s.fail = max(s.fail+1, g.cfg.fall)
		s.state = Unhealthy
		s.lastErr = err
	} else {
		g.record(i, err, time.Time{})
	}
	g.reselect(time.Now(), false)
	return nil
}

// Drain excludes target i from selection (it is still checked) until
// Undrain. If i is selected, the selection moves at once with reason Manual.
// Drain returns an error wrapping ErrIndex if i is out of range, or
// ErrClosed after Close.
func (g *Group[T]) Drain(i int) error { return g.setDrained(i, true) }

// Undrain makes target i eligible again; if it is healthy and has a higher
// priority than the selection, the selection moves to it at once with reason
// Manual. Errors are as for Drain.
func (g *Group[T]) Undrain(i int) error { return g.setDrained(i, false) }

func (g *Group[T]) setDrained(i int, d bool) error {
	if i < 0 || i >= len(g.targets) {
		return fmt.Errorf("%w: %d", ErrIndex, i)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return ErrClosed
	}
	g.st[i].drained = d
	g.reselect(time.Now(), true)
	return nil
}

// Force pins the selection to target i, healthy or not, until Unforce or
// another Force; Pick's ok still reports whether i is healthy. Force returns
// an error wrapping ErrIndex if i is out of range, or ErrClosed after Close.
func (g *Group[T]) Force(i int) error {
	if i < 0 || i >= len(g.targets) {
		return fmt.Errorf("%w: %d", ErrIndex, i)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return ErrClosed
	}
	g.forced = i
	g.reselect(time.Now(), true)
	return nil
}

// Unforce ends a Force: the selection returns to the normal rule at once
// (reason Manual if it moves). It returns ErrClosed after Close.
func (g *Group[T]) Unforce() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return ErrClosed
	}
	g.forced = -1
	g.reselect(time.Now(), true)
	return nil
}

// Status returns a snapshot of every target, in priority order.
func (g *Group[T]) Status() []TargetStatus[T] {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]TargetStatus[T], len(g.targets))
	for i := range g.st {
		s := &g.st[i]
		out[i] = TargetStatus[T]{
			Index:     i,
			Target:    g.targets[i],
			State:     s.state,
			Selected:  i == g.cur || (g.cur < 0 && i == 0),
			Drained:   s.drained,
			Forced:    i == g.forced,
			Checking:  s.inflight,
			Successes: s.succ,
			Failures:  s.fail,
			Head:      s.head,
			Lag:       s.lag,
			LastErr:   s.lastErr,
			LastCheck: s.lastCheck,
		}
	}
	return out
}

// Subscribe returns a channel that receives the changes of the selected
// target, in order, and a cancel func that stops delivery and closes the
// channel (cancel is idempotent). If a selection has been made, the first
// value received is the latest change before Subscribe (its To is the
// current selection); every later change follows. So a subscriber never
// misses the current selection, however soon after New it subscribes, and
// the changes it receives chain: each From is the previous To.
//
// Delivery runs in a goroutine per subscriber, outside the group's locks, so
// a slow subscriber never blocks checks, Pick or other subscribers. Up to the
// subscriber buffer (WithSubscriberBuffer) changes wait for it; beyond that
// the newest pending change absorbs the incoming one (Change.Coalesced
// counts them), so the last change received always names the current
// selection. Close closes every subscription channel, discarding changes not
// yet received. After Close, Subscribe returns a closed channel.
func (g *Group[T]) Subscribe() (<-chan Change[T], func()) {
	out := make(chan Change[T])
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		close(out)
		return out, func() {}
	}
	s := &subscriber[T]{
		out:   out,
		wake:  make(chan struct{}, 1),
		done:  make(chan struct{}),
		limit: g.cfg.subBuffer,
	}
	if g.seq > 0 {
		s.push(g.last) // under g.mu: no change can slip in between
	}
	g.subs[s] = struct{}{}
	g.wg.Add(1)
	g.mu.Unlock()
	go s.deliver(&g.wg)
	return out, func() {
		g.mu.Lock()
		_, ok := g.subs[s]
		delete(g.subs, s)
		g.mu.Unlock()
		if ok {
			close(s.done)
		}
	}
}

// Close stops checking, closes every subscription channel and waits for the
// group's goroutines. Check calls still running are cancelled through their
// context; Close waits for them for at most the check timeout and then
// returns an error wrapping ErrChecksAbandoned if a check ignores its
// context: those calls finish in the background and their results are
// discarded. Pick keeps returning the last selection after Close. Close is
// idempotent: later calls, concurrent ones included, wait until the first
// has returned and then return nil.
func (g *Group[T]) Close() error {
	g.mu.Lock()
	if g.closed {
		g.mu.Unlock()
		<-g.closeDone
		return nil
	}
	g.closed = true
	defer close(g.closeDone)
	subs := g.subs
	g.subs = nil
	if g.running > 0 {
		g.checksDone = make(chan struct{})
	}
	checksDone := g.checksDone
	g.mu.Unlock()

	g.cancel()
	for s := range subs {
		close(s.done)
	}
	g.wg.Wait()
	if checksDone == nil {
		return nil
	}
	t := time.NewTimer(g.cfg.timeout)
	defer t.Stop()
	select {
	case <-checksDone:
		return nil
	case <-t.C:
		g.mu.Lock()
		n := g.running
		g.mu.Unlock()
		return fmt.Errorf("%w: %d check call(s) ignored cancellation", ErrChecksAbandoned, n)
	}
}

// run is the scheduler goroutine: one round per interval, with backoff while
// no target is healthy.
func (g *Group[T]) run(ctx context.Context) {
	defer g.wg.Done()
	timer := time.NewTimer(0) // first round at once
	defer timer.Stop()
	backoff := g.cfg.interval
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		start := time.Now()
		progress := g.round(ctx)
		if ctx.Err() != nil {
			return
		}
		next := g.cfg.interval
		if progress {
			backoff = g.cfg.interval
		} else {
			next = max(backoff, g.cfg.interval)
			backoff = double(backoff, g.cfg.maxBackoff)
		}
		timer.Reset(max(0, next-time.Since(start)))
	}
}

// double returns 2d capped at limit, without overflowing for a limit near
// the largest Duration.
func double(d, limit time.Duration) time.Duration {
	if d > limit/2 {
		return limit
	}
	return 2 * d
}

type result struct {
	i   int
	h   Health
	err error
}

// round runs one check per target concurrently and applies the results
// together. It reports whether any target is healthy afterwards or any
// check succeeded (a recovering target): only rounds without either back
// off, so the end of a total outage is acted on at the normal pace.
func (g *Group[T]) round(ctx context.Context) bool {
	results, launch, ok := g.startRound()
	if !ok {
		return false
	}
	cctx, cancel := context.WithTimeout(ctx, g.cfg.timeout)
	defer cancel()
	g.collect(cctx, results, launch)
	if ctx.Err() != nil {
		return false
	}
	return g.apply(results)
}

// startRound marks the targets whose check can start as in flight. A check
// that ignores its context may still be running from an earlier round: its
// result is another timeout, and no second call starts. It returns false
// after Close.
func (g *Group[T]) startRound() (results []result, launch []bool, ok bool) {
	results = make([]result, len(g.targets))
	launch = make([]bool, len(g.targets))
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil, nil, false
	}
	for i := range g.st {
		results[i].i = i
		if g.st[i].inflight {
			results[i].err = fmt.Errorf("%w: previous check still running", ErrTimeout)
			continue
		}
		g.st[i].inflight = true
		g.running++
		launch[i] = true
	}
	return results, launch, true
}

// collect runs the launched checks and waits for them until ctx ends; a
// check that has not answered by then gets a timeout as its result.
func (g *Group[T]) collect(ctx context.Context, results []result, launch []bool) {
	// Buffered so that a check returning after the round never blocks.
	ch := make(chan result, len(launch))
	pending := 0
	for i := range launch {
		if launch[i] {
			go g.runCheck(ctx, i, ch)
			pending++
		}
	}
	got := make([]bool, len(launch))
wait:
	for ; pending > 0; pending-- {
		select {
		case r := <-ch:
			results[r.i], got[r.i] = r, true
		case <-ctx.Done():
			break wait
		}
	}
	// Results that arrived at the same moment as the deadline still count.
	for ; pending > 0 && len(ch) > 0; pending-- {
		r := <-ch
		results[r.i], got[r.i] = r, true
	}
	for i := range launch {
		if launch[i] && !got[i] {
			results[i].err = fmt.Errorf("%w after %v", ErrTimeout, g.cfg.timeout)
		}
	}
}

func (g *Group[T]) runCheck(ctx context.Context, i int, ch chan<- result) {
	r := result{i: i}
	defer func() {
		if p := recover(); p != nil {
			r.h, r.err = Health{}, fmt.Errorf("%w: %v", ErrCheckPanicked, p)
		}
		ch <- r
		g.mu.Lock()
		g.st[i].inflight = false
		g.running--
		if g.running == 0 && g.checksDone != nil {
			close(g.checksDone)
		}
		g.mu.Unlock()
	}()
	r.h, r.err = g.check(ctx, g.targets[i])
	if ctx.Err() != nil {
		// Whatever a check returns after its deadline is a timeout.
		if r.err == nil {
			r.err = ctx.Err()
		}
		r.err = fmt.Errorf("%w after %v: %w", ErrTimeout, g.cfg.timeout, r.err)
	}
}

// apply records a round's results and reselects. It reports whether the
// round made progress (see round).
func (g *Group[T]) apply(results []result) bool {
	verdicts := judge(results, g.cfg.maxLag)
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return false
	}
	now := time.Now()
	progress := false
	for k, r := range results {
		v := verdicts[k]
		if r.err == nil {
			g.st[r.i].head, g.st[r.i].lag = r.h.Head, v.lag
		}
		g.record(r.i, v.err, now)
		progress = progress || v.err == nil || g.st[r.i].state == Healthy
	}
	g.reselect(now, false)
	return progress
}

// verdict is what a round's result means for its target.
type verdict struct {
	err error  // nil for a success within the lag limit
	lag uint64 // how far the head is below the round's highest (0 when lag checking is off)
}

// judge decides each result of one round: a failed check keeps its error;
// with maxLag > 0, a success more than maxLag below the highest head among
// the round's successes becomes an ErrLagging failure. It is pure.
func judge(results []result, maxLag uint64) []verdict {
	var top uint64
	for _, r := range results {
		if r.err == nil {
			top = max(top, r.h.Head)
		}
	}
	out := make([]verdict, len(results))
	for k, r := range results {
		out[k].err = r.err
		if r.err != nil || maxLag == 0 {
			continue
		}
		out[k].lag = top - r.h.Head
		if out[k].lag > maxLag {
			out[k].err = fmt.Errorf("%w: head %d is %d behind head %d (max %d)",
				ErrLagging, r.h.Head, out[k].lag, top, maxLag)
		}
	}
	return out
}

// record applies one result to target i's counters. g.mu must be held.
// A zero now means a passive report, which does not set LastCheck.
func (g *Group[T]) record(i int, err error, now time.Time) {
	s := &g.st[i]
	if !now.IsZero() {
		s.lastCheck = now
	}
	s.lastErr = err
	if err == nil {
		s.succ++
		s.fail = 0
		if s.state == Unknown || (s.state == Unhealthy && s.succ >= g.cfg.rise) {
			s.state = Healthy
		}
		return
	}
	s.fail++
	s.succ = 0
	if s.state == Unknown || (s.state == Healthy && s.fail >= g.cfg.fall) {
		s.state = Unhealthy
	}
}

func (g *Group[T]) eligible(i int) bool {
	return g.st[i].state == Healthy && !g.st[i].drained
}

// reselect recomputes the selection, publishes it for Pick and notifies
// subscribers of a change. manual marks an operator action. g.mu must be
// held.
func (g *Group[T]) reselect(now time.Time, manual bool) {
	in := choice{
		cur:       g.cur,
		forced:    g.forced,
		best:      -1,
		manual:    manual,
		dwellOver: now.Sub(g.lastChange) >= g.cfg.minDwell,
	}
	for i := range g.st {
		if g.eligible(i) {
			in.best = i
			break
		}
	}
	in.curEligible = g.cur >= 0 && g.eligible(g.cur)
	next, reason := decide(in)
	ok := next >= 0 && g.st[next].state == Healthy && (next == g.forced || !g.st[next].drained)
	v := uint64(next+1) << 1
	if ok {
		v |= 1
	}
	g.sel.Store(v)
	if next != g.cur {
		g.announce(next, reason, now)
	}
}

// choice is what the selection rule looks at.
type choice struct {
	cur, forced int  // selected and forced index, -1 for none
	best        int  // first eligible (healthy, not drained) index, -1 for none
	curEligible bool // the selected target is eligible
	manual      bool // an operator action triggered the decision
	dwellOver   bool // MinDwell has passed since the last change
}

// decide returns the target to select and, if it differs from c.cur, why.
// It is the selection rule of Group's doc, and pure.
func decide(c choice) (next int, reason Reason) {
	switch {
	case c.forced >= 0:
		return c.forced, Manual
	case c.best < 0 || c.best == c.cur:
		return c.cur, Initial // nothing better: stay
	case c.manual:
		return c.best, Manual
	case c.cur < 0:
		return c.best, Initial
	case !c.curEligible:
		return c.best, CurrentUnhealthy
	case c.dwellOver:
		return c.best, BetterAvailable
	}
	return c.cur, Initial // better available, but within MinDwell
}

// announce records a change of the selection to next and queues it for
// every subscriber. g.mu must be held.
func (g *Group[T]) announce(next int, reason Reason, now time.Time) {
	g.seq++
	c := Change[T]{
		FromIndex: g.cur,
		ToIndex:   next,
		To:        g.targets[next],
		Reason:    reason,
		Seq:       g.seq,
		At:        now,
	}
	if g.cur >= 0 {
		c.From = g.targets[g.cur]
	}
	g.cur, g.lastChange, g.last = next, now, c
	for s := range g.subs {
		s.push(c)
	}
}

// subscriber is one Subscribe call's delivery queue.
type subscriber[T any] struct {
	out   chan Change[T]
	wake  chan struct{} // capacity 1: "queue is non-empty"
	done  chan struct{} // closed by cancel or Close
	limit int

	mu    sync.Mutex // protects queue
	queue []Change[T]
}

// push queues c without blocking, coalescing into the newest pending change
// when the queue is full.
func (s *subscriber[T]) push(c Change[T]) {
	s.mu.Lock()
	if n := len(s.queue); n >= s.limit {
		last := &s.queue[n-1]
		last.To, last.ToIndex = c.To, c.ToIndex
		last.Reason, last.Seq, last.At = c.Reason, c.Seq, c.At
		last.Coalesced += 1 + c.Coalesced
	} else {
		s.queue = append(s.queue, c)
	}
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *subscriber[T]) deliver(wg *sync.WaitGroup) {
	defer wg.Done()
	defer close(s.out)
	for {
		s.mu.Lock()
		if len(s.queue) == 0 {
			s.mu.Unlock()
			select {
			case <-s.wake:
				continue
			case <-s.done:
				return
			}
		}
		c := s.queue[0]
		var zero Change[T]
		s.queue[0] = zero
		s.queue = s.queue[1:]
		s.mu.Unlock()
		select {
		case s.out <- c:
		case <-s.done:
			return
		}
	}
}
