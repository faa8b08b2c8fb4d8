package failover

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var errDown = errors.New("test: node down")

// mode is a fake target's behaviour for the next checks.
type mode int

const (
	up       mode = iota
	down          // returns an error at once
	slow          // blocks until its context ends (honours the timeout)
	hang          // blocks on the fake's gate, ignoring its context
	panicker      // panics
)

// fake is a programmable check over targets 0..n-1.
type fake struct {
	mu          sync.Mutex
	modes       []mode
	heads       []uint64
	calls       []int
	times       [][]time.Duration // call times since start, per target
	start       time.Time
	gate        chan struct{} // hung checks wait for it to close
	releaseOnce sync.Once
	dls         []time.Duration
}

func newFake(n int) *fake {
	return &fake{
		modes: make([]mode, n),
		heads: make([]uint64, n),
		calls: make([]int, n),
		times: make([][]time.Duration, n),
		start: time.Now(),
		gate:  make(chan struct{}),
	}
}

func (f *fake) set(i int, m mode) {
	f.mu.Lock()
	f.modes[i] = m
	f.mu.Unlock()
}

func (f *fake) setHead(i int, h uint64) {
	f.mu.Lock()
	f.heads[i] = h
	f.mu.Unlock()
}

func (f *fake) callCount(i int) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls[i]
}

func (f *fake) release() { f.releaseOnce.Do(func() { close(f.gate) }) }

func (f *fake) check(ctx context.Context, i int) (Health, error) {
	f.mu.Lock()
	m, h := f.modes[i], f.heads[i]
	f.calls[i]++
	f.times[i] = append(f.times[i], time.Since(f.start))
	if dl, ok := ctx.Deadline(); ok {
		f.dls = append(f.dls, time.Until(dl))
	}
	f.mu.Unlock()
	switch m {
	case down:
		return Health{}, errDown
	case slow:
		<-ctx.Done()
		return Health{}, ctx.Err()
	case hang:
		<-f.gate
		return Health{Head: h}, nil
	case panicker:
		panic("boom")
	}
	return Health{Head: h}, nil
}

func (m mode) String() string {
	return [...]string{"up", "down", "slow", "hang", "panic"}[m]
}

func targets(n int) []int {
	t := make([]int, n)
	for i := range t {
		t[i] = i
	}
	return t
}

func mustNew(t testing.TB, f *fake, opts ...Option) *Group[int] {
	t.Helper()
	g, err := New(targets(len(f.modes)), f.check, opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	// On a failed test, do not leave goroutines behind (synctest and goleak
	// would report them instead of the failure).
	t.Cleanup(func() {
		f.releaseOnce.Do(func() { close(f.gate) })
		_ = g.Close()
	})
	return g
}

// wantLatest receives the change a new subscriber gets first (the latest
// one before it subscribed) and compares its indexes, reason and Seq.
func wantLatest(t testing.TB, ch <-chan Change[int], want Change[int]) {
	t.Helper()
	c := <-ch
	if c.FromIndex != want.FromIndex || c.ToIndex != want.ToIndex || c.To != want.ToIndex ||
		c.Reason != want.Reason || c.Seq != want.Seq || c.Coalesced != 0 {
		t.Fatalf("first change after Subscribe = %+v, want %+v", c, want)
	}
}

func closeGroup(t testing.TB, g *Group[int]) {
	t.Helper()
	if err := g.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}

func wantPick(t testing.TB, g *Group[int], wantI int, wantOK bool) {
	t.Helper()
	i, ok := g.PickIndex()
	v, ok2 := g.Pick()
	if i != wantI || ok != wantOK || v != wantI || ok2 != wantOK {
		t.Fatalf("Pick = (%d, %v), PickIndex = (%d, %v); want (%d, %v)", v, ok2, i, ok, wantI, wantOK)
	}
}

// waitPick advances fake time in 1 ms steps until PickIndex returns want, and
// returns how long that took. It fails after limit.
func waitPick(t testing.TB, g *Group[int], want int, limit time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		synctest.Wait()
		if i, ok := g.PickIndex(); i == want && ok {
			return time.Since(start)
		}
		if time.Since(start) > limit {
			t.Fatalf("selection did not move to %d within %v; status %+v", want, limit, g.Status())
		}
		time.Sleep(time.Millisecond)
	}
}

func TestNewErrors(t *testing.T) {
	check := func(context.Context, int) (Health, error) { return Health{}, nil }
	if g, err := New(nil, check); !errors.Is(err, ErrNoTargets) || g != nil {
		t.Errorf("New(nil) = %v, %v, want ErrNoTargets", g, err)
	}
}

// Impossible arguments are programming errors: New panics with the
// package prefix, as the standard library does.
func TestNewPanicsOnInvalidOptions(t *testing.T) {
	check := func(context.Context, int) (Health, error) { return Health{}, nil }
	bad := map[string]func(){
		"nil check":        func() { _, _ = New([]int{1}, nil) },
		"interval":         func() { _, _ = New([]int{1}, check, WithInterval(0)) },
		"timeout":          func() { _, _ = New([]int{1}, check, WithTimeout(-1)) },
		"timeout>interval": func() { _, _ = New([]int{1}, check, WithTimeout(time.Hour)) },
		"rise":             func() { _, _ = New([]int{1}, check, WithRise(0)) },
		"fall":             func() { _, _ = New([]int{1}, check, WithFall(0)) },
		"dwell":            func() { _, _ = New([]int{1}, check, WithMinDwell(-1)) },
		"backoff":          func() { _, _ = New([]int{1}, check, WithMaxBackoff(-1)) },
		"buffer":           func() { _, _ = New([]int{1}, check, WithSubscriberBuffer(0)) },
	}
	for name, f := range bad {
		func() {
			defer func() {
				msg, _ := recover().(string)
				if !strings.HasPrefix(msg, "failover: ") {
					t.Errorf("%s: panic %q, want one starting with \"failover: \"", name, msg)
				}
			}()
			f()
		}()
	}
}

func TestUnknownIsNotHealthy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(2)
		f.set(0, hang)
		f.set(1, hang)
		g := mustNew(t, f)
		synctest.Wait()
		// No check has returned: nothing may be treated as healthy.
		wantPick(t, g, 0, false)
		for _, s := range g.Status() {
			if s.State != Unknown || !s.Checking {
				t.Fatalf("before any result: %+v, want Unknown and checking", s)
			}
		}
		f.release()
		synctest.Wait()
		wantPick(t, g, 0, true)
		if s := g.Status()[1]; s.State != Healthy {
			t.Fatalf("after a success target 1 is %v", s.State)
		}
		closeGroup(t, g)
	})
}

func TestInitialSelectionSkipsFailingPrimary(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(3)
		f.set(0, down)
		g := mustNew(t, f)
		synctest.Wait()
		wantPick(t, g, 1, true)
		if s := g.Status()[0]; s.State != Unhealthy || !errors.Is(s.LastErr, errDown) {
			t.Fatalf("primary status %+v", s)
		}
		closeGroup(t, g)
	})
}

// The current target stops answering (worst case: it hangs until the
// timeout, just after a successful round): the selection must leave it
// within fall×interval + timeout.
func TestFailoverWithinBound(t *testing.T) {
	for _, m := range []mode{down, slow, hang} {
		t.Run(fmt.Sprint(m), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				f := newFake(2)
				interval, timeout, fall := 500*time.Millisecond, 400*time.Millisecond, 3
				g := mustNew(t, f, WithInterval(interval), WithTimeout(timeout), WithFall(fall))
				synctest.Wait()
				wantPick(t, g, 0, true)
				time.Sleep(time.Millisecond) // just after round 0: the worst phase
				f.set(0, m)
				took := waitPick(t, g, 1, 10*time.Second)
				if bound := time.Duration(fall)*interval + timeout; took > bound {
					t.Fatalf("failover took %v, bound %v", took, bound)
				}
				// Hysteresis: fall-1 failures are not enough.
				if took < time.Duration(fall-1)*interval {
					t.Fatalf("failover after %v: faster than fall=%d rounds allow", took, fall)
				}
				f.release()
				closeGroup(t, g)
			})
		})
	}
}

// The proxy incident: after the primary recovered, traffic stayed on the
// backup for three hours because the monitor only switched when the current
// node failed.
func TestIncident_TrafficStayedOnBackupAfterPrimaryRecovered(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(3)
		g := mustNew(t, f) // defaults: the 2 s goal must hold
		synctest.Wait()
		wantPick(t, g, 0, true)
		changes, cancel := g.Subscribe()
		defer cancel()
		wantLatest(t, changes, Change[int]{FromIndex: -1, ToIndex: 0, Reason: Initial, Seq: 1})
		f.set(0, down)
		waitPick(t, g, 1, 5*time.Second)
		if c := <-changes; c.FromIndex != 0 || c.ToIndex != 1 || c.Reason != CurrentUnhealthy {
			t.Fatalf("failover change %+v", c)
		}
		// The backup stays healthy; the primary comes back at the worst
		// phase (just after a round).
		time.Sleep(time.Hour)
		synctest.Wait()
		wantPick(t, g, 1, true)
		time.Sleep(time.Millisecond)
		f.set(0, up)
		took := waitPick(t, g, 0, 10*time.Second)
		if took > 2*time.Second {
			t.Fatalf("failback took %v, want <= 2s", took)
		}
		if bound := DefaultRise*DefaultInterval + DefaultTimeout; took > bound {
			t.Fatalf("failback took %v, documented bound %v", took, bound)
		}
		if c := <-changes; c.FromIndex != 1 || c.ToIndex != 0 || c.Reason != BetterAvailable {
			t.Fatalf("failback change %+v", c)
		}
		closeGroup(t, g)
	})
}

// Failback bound with a custom configuration, also while another target's
// check hangs until its timeout.
func TestFailbackWithinConfiguredBound(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(3)
		interval, timeout, rise := 200*time.Millisecond, 150*time.Millisecond, 4
		g := mustNew(t, f, WithInterval(interval), WithTimeout(timeout), WithRise(rise), WithFall(1))
		synctest.Wait()
		f.set(0, down)
		waitPick(t, g, 1, time.Second)
		f.set(2, slow)
		time.Sleep(10 * time.Second)
		time.Sleep(time.Millisecond)
		f.set(0, up)
		took := waitPick(t, g, 0, 10*time.Second)
		if bound := time.Duration(rise)*interval + timeout; took > bound {
			t.Fatalf("failback took %v, bound %v", took, bound)
		}
		if took < time.Duration(rise-1)*interval {
			t.Fatalf("failback after %v: faster than rise=%d rounds allow", took, rise)
		}
		closeGroup(t, g)
	})
}

// The proxy incident: health checks had no timeout, so one unresponsive
// node stalled the monitor.
func TestIncident_CheckWithoutTimeoutStalledTheMonitor(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(2)
		f.set(0, slow)
		timeout := 300 * time.Millisecond
		g := mustNew(t, f, WithTimeout(timeout), WithInterval(time.Second), WithFall(1))
		synctest.Wait()
		// The check has a deadline of exactly the timeout...
		f.mu.Lock()
		dls := append([]time.Duration(nil), f.dls...)
		f.mu.Unlock()
		if len(dls) != 2 || dls[0] != timeout || dls[1] != timeout {
			t.Fatalf("check deadlines %v, want [%v %v]", dls, timeout, timeout)
		}
		// ...and when it runs out the target is failed, the backup chosen.
		start := time.Now()
		waitPick(t, g, 1, 5*time.Second)
		if took := time.Since(start); took != timeout {
			t.Fatalf("hung primary failed after %v, want %v", took, timeout)
		}
		if s := g.Status()[0]; s.State != Unhealthy || !errors.Is(s.LastErr, ErrTimeout) {
			t.Fatalf("primary status %+v, want unhealthy with ErrTimeout", s)
		}
		closeGroup(t, g)
	})
}

// The proxy incident: the monitor held a write lock during health-check
// I/O and starved every reader. Here a check hangs forever, ignoring its
// context; Pick, Status and the operator API must still return, in real
// time.
func TestIncident_LockHeldDuringCheckIOStarvedReaders(t *testing.T) {
	f := newFake(2)
	started := make(chan struct{})
	var once sync.Once
	check := func(ctx context.Context, i int) (Health, error) {
		if i == 0 {
			once.Do(func() { close(started) })
			<-f.gate // hangs, ignoring ctx
		}
		return Health{}, nil
	}
	g, err := New(targets(2), check, WithInterval(10*time.Millisecond), WithTimeout(5*time.Millisecond), WithFall(1))
	if err != nil {
		t.Fatal(err)
	}
	changes, cancel := g.Subscribe()
	defer cancel()
	<-started
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 1000 {
			g.Pick()
			g.Status()
		}
		_ = g.Drain(1)
		_ = g.Undrain(1)
	}()
	guard := time.NewTimer(10 * time.Second) // failure guard only
	defer guard.Stop()
	select {
	case <-done:
	case <-guard.C:
		f.release() // so a regressed group can still be closed
		t.Fatal("Pick/Status/Drain blocked while a check hangs")
	}
	// The hung primary is failed by the timeout and the backup chosen.
	for {
		select {
		case c := <-changes:
			if c.ToIndex == 1 {
				goto switched
			}
		case <-guard.C:
			f.release()
			t.Fatal("no failover away from a hung primary")
		}
	}
switched:
	if s := g.Status()[0]; !s.Checking || !errors.Is(s.LastErr, ErrTimeout) {
		t.Fatalf("primary status %+v", s)
	}
	f.release()
	if err := g.Close(); err != nil {
		t.Fatalf("Close after release: %v", err)
	}
}

func TestHungCheckDoesNotBlockOthersOrClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(3)
		f.set(0, hang)
		interval, timeout := 500*time.Millisecond, 400*time.Millisecond
		g := mustNew(t, f, WithInterval(interval), WithTimeout(timeout), WithFall(2))
		synctest.Wait()
		// Target 0 never returned; the others were applied at the timeout.
		time.Sleep(timeout)
		synctest.Wait()
		wantPick(t, g, 1, true)
		time.Sleep(10*interval - timeout)
		synctest.Wait()
		// Eleven rounds (t=0..5s): the others were checked every round;
		// the hung one only once (no pile-up of stuck calls).
		if c0, c1, c2 := f.callCount(0), f.callCount(1), f.callCount(2); c0 != 1 || c1 != 11 || c2 != 11 {
			t.Fatalf("check calls = %d, %d, %d; want 1, 11, 11", c0, c1, c2)
		}
		s := g.Status()[0]
		if s.State != Unhealthy || !s.Checking || !errors.Is(s.LastErr, ErrTimeout) || s.Failures != 11 {
			t.Fatalf("hung target status %+v", s)
		}
		// Close does not wait forever for a check that ignores its context.
		start := time.Now()
		err := g.Close()
		if !errors.Is(err, ErrChecksAbandoned) {
			t.Fatalf("Close error %v, want ErrChecksAbandoned", err)
		}
		if took := time.Since(start); took != timeout {
			t.Fatalf("Close took %v, want the check timeout %v", took, timeout)
		}
		wantPick(t, g, 1, true) // still answers after Close
		f.release()
		synctest.Wait()
		if s := g.Status()[0]; s.Checking {
			t.Fatal("released check still marked in flight")
		}
	})
}

func TestCloseWaitsForChecksThatHonourContext(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(2)
		f.set(0, slow)
		f.set(1, slow)
		g := mustNew(t, f)
		synctest.Wait()
		start := time.Now()
		if err := g.Close(); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if time.Since(start) != 0 {
			t.Fatal("Close waited although checks honour cancellation")
		}
		if err := g.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		for _, s := range g.Status() {
			if s.Checking {
				t.Fatalf("check still running after Close: %+v", s)
			}
		}
		if err := g.Drain(0); !errors.Is(err, ErrClosed) {
			t.Fatalf("Drain after Close: %v", err)
		}
		if err := g.ReportFailure(0, nil); !errors.Is(err, ErrClosed) {
			t.Fatalf("ReportFailure after Close: %v", err)
		}
		if err := g.Force(0); !errors.Is(err, ErrClosed) {
			t.Fatalf("Force after Close: %v", err)
		}
		if err := g.Unforce(); !errors.Is(err, ErrClosed) {
			t.Fatalf("Unforce after Close: %v", err)
		}
		ch, cancel := g.Subscribe()
		if _, open := <-ch; open {
			t.Fatal("Subscribe after Close returned an open channel")
		}
		cancel()
	})
}

func TestCheckPanicIsAFailure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(2)
		f.set(0, panicker)
		g := mustNew(t, f)
		synctest.Wait()
		wantPick(t, g, 1, true)
		if s := g.Status()[0]; !errors.Is(s.LastErr, ErrCheckPanicked) {
			t.Fatalf("LastErr = %v, want ErrCheckPanicked", s.LastErr)
		}
		closeGroup(t, g)
	})
}

// A flapping primary (up one round, down the next) must not move the
// selection more often than the dwell time allows.
func TestFlappingStaysWithinDwell(t *testing.T) {
	run := func(t *testing.T, dwell time.Duration) []Change[int] {
		var got []Change[int]
		synctest.Test(t, func(t *testing.T) {
			f := newFake(2)
			interval := 500 * time.Millisecond
			g := mustNew(t, f, WithInterval(interval), WithRise(1), WithFall(1), WithMinDwell(dwell))
			changes, cancel := g.Subscribe()
			defer cancel()
			done := make(chan struct{})
			go func() {
				defer close(done)
				for c := range changes {
					got = append(got, c)
				}
			}()
			synctest.Wait()
			for i := range 120 { // one minute
				f.set(0, mode(i%2)) // up, down, up, ...
				time.Sleep(interval)
				synctest.Wait()
			}
			closeGroup(t, g)
			<-done
		})
		return got
	}
	free := run(t, 0)
	if len(free) < 100 {
		t.Fatalf("without dwell the flapping primary caused only %d switches; test is not flapping", len(free))
	}
	dwell := 5 * time.Second
	got := run(t, dwell)
	for k := 1; k < len(got); k++ {
		if got[k].Reason == BetterAvailable && got[k].At.Sub(got[k-1].At) < dwell {
			t.Fatalf("switch %d back to a better target %v after the previous one, dwell %v", k, got[k].At.Sub(got[k-1].At), dwell)
		}
	}
	// At most one failback per dwell period, each followed by one failover.
	if limit := 2*int(time.Minute/dwell) + 2; len(got) > limit {
		t.Fatalf("%d switches in a minute with dwell %v, want <= %d", len(got), dwell, limit)
	}
}

func TestAllUnhealthyKeepsLastAndBacksOff(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(2)
		interval, maxBackoff := 100*time.Millisecond, 800*time.Millisecond
		g := mustNew(t, f, WithInterval(interval), WithTimeout(50*time.Millisecond), WithFall(1), WithMaxBackoff(maxBackoff))
		synctest.Wait()
		f.set(0, down)
		time.Sleep(interval)
		synctest.Wait()
		wantPick(t, g, 1, true)
		f.set(1, down)
		start := f.callCount(1)
		time.Sleep(10 * time.Second)
		synctest.Wait()
		// Keep the last selection and say it is not healthy.
		wantPick(t, g, 1, false)
		f.mu.Lock()
		times := append([]time.Duration(nil), f.times[1][start-1:]...)
		f.mu.Unlock()
		want := []time.Duration{interval, interval, 2 * interval, 4 * interval, 8 * interval, 8 * interval}
		for k := range want {
			if gap := times[k+1] - times[k]; gap != want[k] {
				t.Fatalf("gaps between rounds %v: gap %d = %v, want %v", times, k, gap, want[k])
			}
		}
		// Recovery: the first success already ends the backoff, so the Rise
		// (default 2) successes come one interval apart, not maxBackoff.
		f.set(1, up)
		before := f.callCount(1)
		took := waitPick(t, g, 1, maxBackoff+time.Second)
		f.mu.Lock()
		times = append([]time.Duration(nil), f.times[1][before:]...)
		f.mu.Unlock()
		if len(times) < 2 || times[1]-times[0] != interval {
			t.Fatalf("check times after recovery %v: want the second success one interval (%v) after the first", times, interval)
		}
		if bound := maxBackoff + (DefaultRise-1)*interval; took > bound {
			t.Fatalf("recovery from a total outage took %v, want <= %v", took, bound)
		}
		n := f.callCount(1)
		time.Sleep(10 * interval)
		synctest.Wait()
		if got := f.callCount(1) - n; got != 10 {
			t.Fatalf("%d rounds in 10 intervals after recovery, want 10", got)
		}
		closeGroup(t, g)
	})
}

func TestReportFailure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(3)
		g := mustNew(t, f, WithFall(3), WithInterval(time.Minute), WithTimeout(time.Second))
		synctest.Wait()
		wantPick(t, g, 0, true)
		// Plain failures count towards fall, without waiting for a check.
		for k := range 2 {
			if err := g.ReportFailure(0, errors.New("503")); err != nil {
				t.Fatal(err)
			}
			wantPick(t, g, 0, true)
			if s := g.Status()[0]; s.Failures != k+1 {
				t.Fatalf("after %d reports: %+v", k+1, s)
			}
		}
		if err := g.ReportFailure(0, nil); err != nil {
			t.Fatal(err)
		}
		wantPick(t, g, 1, true)
		// A refused connection is one failure like any other: the group
		// does not guess policies from errors.
		refused := fmt.Errorf("dial: %w", syscall.ECONNREFUSED)
		if err := g.ReportFailure(1, refused); err != nil {
			t.Fatal(err)
		}
		wantPick(t, g, 1, true)
		if s := g.Status()[1]; s.State != Healthy || s.Failures != 1 {
			t.Fatalf("target 1 after one refused request: %+v", s)
		}
		// The caller says it is down: demoted at once.
		if err := g.ReportFailure(1, Down(refused)); err != nil {
			t.Fatal(err)
		}
		wantPick(t, g, 2, true)
		if s := g.Status()[1]; s.State != Unhealthy || !errors.Is(s.LastErr, syscall.ECONNREFUSED) || !errors.Is(s.LastErr, ErrTargetDown) {
			t.Fatalf("target 1 status %+v", s)
		}
		if err := g.ReportFailure(2, fmt.Errorf("eof: %w", ErrTargetDown)); err != nil {
			t.Fatal(err)
		}
		wantPick(t, g, 2, false)
		if err := g.ReportFailure(3, nil); !errors.Is(err, ErrIndex) {
			t.Fatalf("ReportFailure(3) = %v, want ErrIndex", err)
		}
		if err := g.ReportFailure(-1, nil); !errors.Is(err, ErrIndex) {
			t.Fatalf("ReportFailure(-1) = %v, want ErrIndex", err)
		}
		closeGroup(t, g)
	})
}

func TestDrainAndForce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(3)
		f.set(2, down)
		g := mustNew(t, f, WithMinDwell(time.Hour))
		changes, cancel := g.Subscribe()
		defer cancel()
		synctest.Wait()
		next := func(from, to int, r Reason) {
			t.Helper()
			c := <-changes
			if c.FromIndex != from || c.ToIndex != to || c.Reason != r || c.From != max(from, 0) || c.To != to {
				t.Fatalf("change %+v, want %d -> %d (%v)", c, from, to, r)
			}
		}
		next(-1, 0, Initial)
		if err := g.Drain(0); err != nil {
			t.Fatal(err)
		}
		wantPick(t, g, 1, true)
		next(0, 1, Manual)
		// Manual actions ignore the dwell time.
		if err := g.Undrain(0); err != nil {
			t.Fatal(err)
		}
		wantPick(t, g, 0, true)
		next(1, 0, Manual)
		if err := g.Force(2); err != nil {
			t.Fatal(err)
		}
		wantPick(t, g, 2, false) // forced, and honest about its health
		next(0, 2, Manual)
		if s := g.Status()[2]; !s.Forced || !s.Selected {
			t.Fatalf("forced status %+v", s)
		}
		// Health changes do not move a forced selection.
		time.Sleep(time.Minute)
		wantPick(t, g, 2, false)
		if err := g.Unforce(); err != nil {
			t.Fatal(err)
		}
		wantPick(t, g, 0, true)
		next(2, 0, Manual)
		for _, err := range []error{g.Drain(3), g.Undrain(-1), g.Force(5)} {
			if !errors.Is(err, ErrIndex) {
				t.Fatalf("bad index error %v, want ErrIndex", err)
			}
		}
		// Draining every healthy target: keep the last, not ok.
		_ = g.Drain(0)
		_ = g.Drain(1)
		next(0, 1, Manual)
		wantPick(t, g, 1, false)
		closeGroup(t, g)
	})
}

func TestLagMarksBehindTargetUnhealthy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(3)
		f.setHead(0, 100) // the primary is stuck far behind
		f.setHead(1, 200)
		f.setHead(2, 205)
		g := mustNew(t, f, WithMaxLag(10))
		synctest.Wait()
		wantPick(t, g, 1, true)
		st := g.Status()
		if st[0].State != Unhealthy || !errors.Is(st[0].LastErr, ErrLagging) || st[0].Lag != 105 || st[0].Head != 100 {
			t.Fatalf("lagging primary status %+v", st[0])
		}
		if st[1].Lag != 5 || st[1].State != Healthy {
			t.Fatalf("target within the limit: %+v", st[1])
		}
		// The primary catches up: failback.
		f.setHead(0, 204)
		took := waitPick(t, g, 0, 5*time.Second)
		if took > 2*time.Second {
			t.Fatalf("failback after catching up took %v", took)
		}
		closeGroup(t, g)
	})
}

// The proxy's most common deployment is two upstreams. A primary 50 blocks
// behind its backup kept serving with a lag of 0, because a reference head
// needed two targets that agree and two that disagree never formed one.
func TestIncident_TwoTargetsThatDisagreeNeverLagged(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(2)
		f.setHead(0, 1000) // the primary is stuck
		f.setHead(1, 1050)
		g := mustNew(t, f, WithMaxLag(10))
		synctest.Wait()
		wantPick(t, g, 1, true)
		st := g.Status()
		if st[0].State != Unhealthy || st[0].Lag != 50 || !errors.Is(st[0].LastErr, ErrLagging) {
			t.Fatalf("primary 50 behind: %+v", st[0])
		}
		if st[1].State != Healthy || st[1].Lag != 0 {
			t.Fatalf("backup ahead: %+v", st[1])
		}
		closeGroup(t, g)
	})
}

// The highest head is trusted; a check that can tell a head is absurd
// rejects it, and the others are then judged without it.
func TestCheckThatRejectsAbsurdHeadKeepsOthersHealthy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(3)
		f.setHead(0, 1000)
		f.setHead(1, 1002)
		f.setHead(2, 1<<62) // a broken node far above everyone
		errAbsurd := errors.New("head beyond the chain's clock")
		check := func(ctx context.Context, i int) (Health, error) {
			h, err := f.check(ctx, i)
			if err == nil && h.Head > 1<<40 {
				return Health{}, errAbsurd
			}
			return h, err
		}
		g, err := New(targets(3), check, WithMaxLag(10))
		if err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		time.Sleep(5 * time.Second)
		synctest.Wait()
		wantPick(t, g, 0, true)
		st := g.Status()
		for _, s := range st[:2] {
			if s.State != Healthy || s.Lag > 2 {
				t.Fatalf("target judged against the absurd head: %+v", s)
			}
		}
		if st[2].State != Unhealthy || !errors.Is(st[2].LastErr, errAbsurd) {
			t.Fatalf("absurd target: %+v", st[2])
		}
		closeGroup(t, g)
	})
}

func TestHighestHeadIsTrusted(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(3)
		f.setHead(0, 1000)
		f.setHead(1, 1002)
		f.setHead(2, 1<<62)
		g := mustNew(t, f, WithMaxLag(10))
		synctest.Wait()
		wantPick(t, g, 2, true)
		closeGroup(t, g)
	})
}

func TestSubscribersInOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(4)
		g := mustNew(t, f, WithSubscriberBuffer(1000))
		synctest.Wait()
		a, cancelA := g.Subscribe()
		b, cancelB := g.Subscribe()
		defer cancelB()
		initial := Change[int]{FromIndex: -1, ToIndex: 0, Reason: Initial, Seq: 1}
		wantLatest(t, a, initial)
		wantLatest(t, b, initial)
		const n = 200
		for k := range n {
			if err := g.Force((k + 1) % 4); err != nil {
				t.Fatal(err)
			}
		}
		for _, ch := range []<-chan Change[int]{a, b} {
			prev := 0
			var seq uint64
			for range n {
				c := <-ch
				if c.FromIndex != prev || c.Coalesced != 0 || (seq != 0 && c.Seq != seq+1) {
					t.Fatalf("out of order: %+v after to=%d seq=%d", c, prev, seq)
				}
				prev, seq = c.ToIndex, c.Seq
			}
		}
		cancelA()
		synctest.Wait()
		if _, open := <-a; open {
			t.Fatal("cancelled subscription still open")
		}
		cancelA() // idempotent
		closeGroup(t, g)
		if _, open := <-b; open {
			t.Fatal("subscription open after Close")
		}
	})
}

// A subscriber that does not read must not block the checker, the operator
// API or other subscribers, and must not lose the latest state.
func TestSlowSubscriberCoalesces(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(3)
		g := mustNew(t, f, WithSubscriberBuffer(4), WithRise(1), WithFall(1))
		synctest.Wait()
		slowCh, cancelSlow := g.Subscribe()
		defer cancelSlow()
		fast, cancelFast := g.Subscribe()
		defer cancelFast()
		initial := Change[int]{FromIndex: -1, ToIndex: 0, Reason: Initial, Seq: 1}
		wantLatest(t, slowCh, initial)
		wantLatest(t, fast, initial)
		var fastGot []Change[int]
		done := make(chan struct{})
		go func() {
			defer close(done)
			for c := range fast {
				fastGot = append(fastGot, c)
			}
		}()
		const n = 101
		for k := range n {
			_ = g.Force((k + 1) % 3) // never blocks on the slow subscriber
			synctest.Wait()          // lets the fast one keep up
		}
		// Checks go on too: the primary fails, the checker keeps running.
		_ = g.Unforce()
		f.set(0, down)
		time.Sleep(time.Second)
		synctest.Wait()
		total := n + 2 // Unforce back to 0, then failover to 1
		wantPick(t, g, 1, true)
		var slowGot []Change[int]
		for len(slowGot) == 0 || slowGot[len(slowGot)-1].Seq != uint64(total)+1 {
			slowGot = append(slowGot, <-slowCh)
		}
		closeGroup(t, g)
		<-done
		if len(fastGot) != total {
			t.Fatalf("fast subscriber got %d changes, want %d", len(fastGot), total)
		}
		if len(slowGot) > 5 {
			t.Fatalf("slow subscriber got %d changes, want at most buffer+1", len(slowGot))
		}
		counted, prev := 0, 0
		for _, c := range slowGot {
			if c.FromIndex != prev {
				t.Fatalf("slow subscriber chain broken: %+v after %d", c, prev)
			}
			counted += 1 + c.Coalesced
			prev = c.ToIndex
		}
		if counted != total || prev != 1 {
			t.Fatalf("slow subscriber accounted for %d changes ending at %d, want %d ending at 1", counted, prev, total)
		}
	})
}

func TestStringers(t *testing.T) {
	for v, want := range map[fmt.Stringer]string{
		Unknown: "unknown", Healthy: "healthy", Unhealthy: "unhealthy", State(9): "State(9)",
		Initial: "initial", CurrentUnhealthy: "current_unhealthy", BetterAvailable: "better_available",
		Manual: "manual", Reason(9): "Reason(9)",
	} {
		if got := v.String(); got != want {
			t.Errorf("String() = %q, want %q", got, want)
		}
	}
}

// Many goroutines use a group while its checker flips health every
// millisecond: Pick is never torn, subscribers see an unbroken, gap-free
// chain of changes, and everything stops at Close. Run under -race.
func TestConcurrentUse(t *testing.T) {
	var flips sync.Map
	var rounds atomic.Int64
	check := func(ctx context.Context, i int) (Health, error) {
		if i == 2 {
			rounds.Add(1)
		}
		v, _ := flips.LoadOrStore(i, new(int))
		p := v.(*int)
		if i < 2 {
			// Only the checker goroutine of this round touches p for i.
			*p++
			if *p%3 == 0 {
				return Health{}, errDown
			}
		}
		return Health{}, nil
	}
	g, err := New(targets(3), check, WithInterval(time.Millisecond), WithTimeout(time.Millisecond),
		WithRise(1), WithFall(1), WithSubscriberBuffer(2))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 2 {
		ch, cancel := g.Subscribe()
		defer cancel()
		wg.Go(func() {
			var prevTo int
			var prevSeq uint64
			for c := range ch {
				if prevSeq != 0 && (c.FromIndex != prevTo || c.Seq != prevSeq+1+uint64(c.Coalesced)) {
					t.Errorf("change %+v after to=%d seq=%d", c, prevTo, prevSeq)
					return
				}
				if c.From != max(c.FromIndex, 0) || c.To != c.ToIndex {
					t.Errorf("torn change %+v", c)
					return
				}
				prevTo, prevSeq = c.ToIndex, c.Seq
			}
		})
	}
	var users sync.WaitGroup
	for range 4 {
		users.Go(func() {
			// At least 30 check rounds overlap the readers (bounded by 5 s).
			start := time.Now()
			for k := 0; k < 20000 || (rounds.Load() < 30 && time.Since(start) < 5*time.Second); k++ {
				i, ok := g.PickIndex()
				v, _ := g.Pick()
				if i < 0 || i > 2 || v < 0 || v > 2 {
					t.Errorf("Pick out of range: %d %v %d", i, ok, v)
					return
				}
			}
		})
	}
	users.Go(func() {
		for k := range 500 {
			_ = g.Drain(k % 3)
			_ = g.Undrain(k % 3)
			if k%50 == 0 {
				_ = g.Force(2)
				_ = g.Unforce()
			}
			_ = g.ReportFailure(k%3, errors.New("request failed"))
			_ = g.Status()
		}
	})
	users.Wait()
	if err := g.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
}

func TestTargetOutOfRangePanicsWithPrefix(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := mustNew(t, newFake(2))
		if g.Len() != 2 || g.Target(1) != 1 {
			t.Fatalf("Len %d, Target(1) %d", g.Len(), g.Target(1))
		}
		for _, i := range []int{-1, 2} {
			func() {
				defer func() {
					if r := recover(); r == nil || !strings.HasPrefix(fmt.Sprint(r), "failover: ") {
						t.Errorf("Target(%d) recovered %v, want a failover: panic", i, r)
					}
				}()
				g.Target(i)
			}()
		}
		closeGroup(t, g)
	})
}

// An operator action before the first check result makes the first
// selection: it is announced with FromIndex -1 and reason Manual.
func TestForceBeforeFirstResult(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(2)
		f.set(0, hang)
		f.set(1, hang)
		g := mustNew(t, f)
		changes, cancel := g.Subscribe()
		defer cancel()
		if err := g.Force(1); err != nil {
			t.Fatal(err)
		}
		wantPick(t, g, 1, false)
		if c := <-changes; c.FromIndex != -1 || c.ToIndex != 1 || c.From != 0 || c.Reason != Manual {
			t.Fatalf("first change %+v, want -1 -> 1 (manual)", c)
		}
		f.release()
		synctest.Wait()
		wantPick(t, g, 1, true)
		closeGroup(t, g)
	})
}

// Checks and subscribers may call back into the group: no lock is held
// while either runs (a regression deadlocks, and go test -timeout reports it).
func TestCallbacksMayCallBackIntoGroup(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var g *Group[int]
		ready := make(chan struct{})
		var reported atomic.Int64
		check := func(ctx context.Context, i int) (Health, error) {
			<-ready
			_ = g.Status()
			g.Pick()
			if i == 0 {
				reported.Add(1)
				if err := g.ReportFailure(0, errDown); err != nil {
					return Health{}, err
				}
			}
			return Health{}, nil
		}
		var err error
		g, err = New(targets(2), check, WithFall(1), WithRise(1))
		if err != nil {
			t.Fatal(err)
		}
		changes, cancel := g.Subscribe()
		defer cancel()
		close(ready)
		c := <-changes // from inside the subscriber's loop, operate the group
		if err := g.Drain(c.ToIndex); err != nil {
			t.Fatal(err)
		}
		if c2 := <-changes; c2.Reason != Manual || c2.FromIndex != c.ToIndex {
			t.Fatalf("change after Drain from the subscriber: %+v", c2)
		}
		time.Sleep(time.Second)
		synctest.Wait()
		if reported.Load() == 0 {
			t.Fatal("the check never ran")
		}
		closeGroup(t, g)
	})
}

// Pick is on every request's path: it must not allocate (the proxy adds as little as it can to a request).
func TestPickDoesNotAllocate(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		g := mustNew(t, newFake(3))
		synctest.Wait()
		if n := testing.AllocsPerRun(100, func() {
			g.Pick()
			g.PickIndex()
		}); n != 0 {
			t.Fatalf("Pick allocates %v times per call", n)
		}
		closeGroup(t, g)
	})
}

func TestBackoffDoublingDoesNotOverflow(t *testing.T) {
	for _, c := range []struct{ d, limit, want time.Duration }{
		{time.Second, 4 * time.Second, 2 * time.Second},
		{3 * time.Second, 4 * time.Second, 4 * time.Second},
		{time.Second, 0, 0}, // backoff disabled
		{math.MaxInt64/2 + 1, math.MaxInt64, math.MaxInt64},
		{math.MaxInt64, math.MaxInt64, math.MaxInt64},
	} {
		if got := double(c.d, c.limit); got != c.want {
			t.Errorf("double(%v, %v) = %v, want %v", c.d, c.limit, got, c.want)
		}
	}
}

// A second Close, while the first waits for a check that ignores its
// context, returns only once the first has finished.
func TestConcurrentCloseWaitsForTheFirst(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(2)
		f.set(0, hang)
		timeout := 400 * time.Millisecond
		g := mustNew(t, f, WithTimeout(timeout))
		changes, cancel := g.Subscribe()
		defer cancel()
		synctest.Wait()
		start := time.Now()
		first := make(chan error, 1)
		go func() { first <- g.Close() }()
		synctest.Wait() // the first Close waits for the hung check
		if err := g.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		if took := time.Since(start); took != timeout {
			t.Fatalf("second Close returned after %v, want after the first (%v)", took, timeout)
		}
		if err := <-first; !errors.Is(err, ErrChecksAbandoned) {
			t.Fatalf("first Close: %v", err)
		}
		for range changes { // closed by Close: the loop ends
		}
		f.release()
	})
}

// New starts checking at once, and changes used not to be replayed, so a
// subscriber added right after New could miss the first change and never
// learn the selection. A new subscriber now gets the latest change first,
// exactly once, and every later change after it.
func TestIncident_SubscriberAfterNewMissedTheFirstChange(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		f := newFake(2)
		g := mustNew(t, f, WithRise(1), WithFall(1))
		early, cancelEarly := g.Subscribe() // before the first round ran
		defer cancelEarly()
		synctest.Wait() // the first round made the Initial change
		late, cancelLate := g.Subscribe()
		defer cancelLate()
		initial := Change[int]{FromIndex: -1, ToIndex: 0, Reason: Initial, Seq: 1}
		wantLatest(t, early, initial)
		wantLatest(t, late, initial)

		f.set(0, down)
		time.Sleep(DefaultInterval)
		synctest.Wait()
		wantPick(t, g, 1, true)
		failover := Change[int]{FromIndex: 0, ToIndex: 1, Reason: CurrentUnhealthy, Seq: 2}
		wantLatest(t, early, failover)
		wantLatest(t, late, failover)
		// A subscriber after two changes gets only the latest.
		last, cancelLast := g.Subscribe()
		defer cancelLast()
		wantLatest(t, last, failover)
		synctest.Wait()
		for name, ch := range map[string]<-chan Change[int]{"early": early, "late": late, "last": last} {
			select {
			case c := <-ch:
				t.Fatalf("%s subscriber got an extra change %+v", name, c)
			default:
			}
		}
		closeGroup(t, g)
	})
}
