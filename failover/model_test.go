package failover

import (
	"errors"
	"fmt"
	"syscall"

	"testing"
	"testing/synctest"
	"time"

	"pgregory.net/rapid"
)

// model is the Group's documented behaviour in its plainest form, written
// from the docs rather than from the implementation: per target a state and
// two consecutive counts; a selection that moves to its goal (the forced
// target, or else the first eligible one) when the docs allow it.
type model struct {
	rise, fall int
	dwell      time.Duration
	maxLag     uint64
	state      []State
	succ, fail []int // consecutive successes and failures (one of them is 0)
	drained    []bool
	lag        []uint64 // lag recorded by the last successful check
	up         []bool   // result of the next checks
	heads      []uint64 // head reported by the next successful checks
	cur        int      // -1 before the first selection
	forced     int      // -1 when not forced
	now        time.Duration
	lastChange time.Duration
	changes    []Change[int] // changes subscribers must still receive (At as an offset from start)
}

// result records one check result or failure report: the first result
// decides an Unknown target, Rise successes in a row make it Healthy, Fall
// failures in a row make it Unhealthy.
func (m *model) result(i int, ok bool) {
	if ok {
		m.succ[i], m.fail[i] = m.succ[i]+1, 0
	} else {
		m.succ[i], m.fail[i] = 0, m.fail[i]+1
	}
	switch {
	case m.state[i] == Unknown && ok, m.succ[i] >= m.rise:
		m.state[i] = Healthy
	case m.state[i] == Unknown, m.fail[i] >= m.fall:
		m.state[i] = Unhealthy
	}
}

// down is ReportFailure(i, Down(err)): unhealthy at once, with at least
// Fall failures counted.
func (m *model) down(i int) {
	m.succ[i], m.fail[i] = 0, max(m.fail[i]+1, m.fall)
	m.state[i] = Unhealthy
}

// round is one round of checks: with lag checking, a success more than
// maxLag below the highest successful head of the round is a failure.
func (m *model) round() {
	var top uint64
	for i := range m.up {
		if m.up[i] {
			top = max(top, m.heads[i])
		}
	}
	for i := range m.up {
		ok := m.up[i]
		if ok && m.maxLag > 0 {
			m.lag[i] = top - m.heads[i]
			ok = m.lag[i] <= m.maxLag
		}
		m.result(i, ok)
	}
	m.settle(false)
}

func (m *model) eligible(i int) bool { return m.state[i] == Healthy && !m.drained[i] }

// settle moves the selection to its goal when the docs allow it: always
// when forced, on an operator action, for the first selection, or away
// from an ineligible target; for failback only once MinDwell has passed.
func (m *model) settle(manual bool) {
	goal := m.forced
	for i := range m.state {
		if goal < 0 && m.eligible(i) {
			goal = i
		}
	}
	if goal < 0 || goal == m.cur {
		return
	}
	curOK := m.cur >= 0 && m.eligible(m.cur)
	if curOK && !manual && m.forced < 0 && m.now-m.lastChange < m.dwell {
		return
	}
	reason := BetterAvailable
	switch {
	case manual || m.forced >= 0:
		reason = Manual
	case m.cur < 0:
		reason = Initial
	case !curOK:
		reason = CurrentUnhealthy
	}
	m.changes = append(m.changes, Change[int]{From: max(m.cur, 0), To: goal, FromIndex: m.cur, ToIndex: goal, Reason: reason, At: time.Time{}.Add(m.now)})
	m.cur, m.lastChange = goal, m.now
}

// pick is what Pick must return.
func (m *model) pick() (int, bool) {
	if m.cur < 0 {
		return 0, false
	}
	return m.cur, m.state[m.cur] == Healthy && (m.cur == m.forced || !m.drained[m.cur])
}

func TestModel(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		rapid.SyncTest(rt, func(rt *rapid.T) {
			n := rapid.IntRange(1, 4).Draw(rt, "targets")
			interval := 100 * time.Millisecond
			m := &model{
				rise:    rapid.IntRange(1, 3).Draw(rt, "rise"),
				fall:    rapid.IntRange(1, 3).Draw(rt, "fall"),
				dwell:   time.Duration(rapid.IntRange(0, 3).Draw(rt, "dwell")) * interval,
				state:   make([]State, n),
				succ:    make([]int, n),
				fail:    make([]int, n),
				drained: make([]bool, n),
				up:      make([]bool, n),
				heads:   make([]uint64, n),
				lag:     make([]uint64, n),
				maxLag:  uint64(rapid.IntRange(0, 3).Draw(rt, "maxLag")),
				cur:     -1,
				forced:  -1,
			}
			f := newFake(n)
			for i := range n {
				m.up[i] = rapid.Bool().Draw(rt, fmt.Sprintf("up%d", i))
				if !m.up[i] {
					f.set(i, down)
				}
			}
			g, err := New(targets(n), f.check,
				WithInterval(interval), WithTimeout(interval/2),
				WithRise(m.rise), WithFall(m.fall), WithMinDwell(m.dwell),
				WithMaxLag(m.maxLag),
				WithMaxBackoff(0)) // rounds stay on the interval
			if err != nil {
				rt.Fatal(err)
			}
			defer func() {
				if err := g.Close(); err != nil {
					rt.Error(err)
				}
			}()
			synctest.Wait() // round 0
			m.round()
			start := time.Now()
			// Subscribe after round 0: the subscriber first gets the latest
			// change so far, then every later change, in order.
			changes, cancel := g.Subscribe()
			defer cancel()
			if n := len(m.changes); n > 1 {
				m.changes = m.changes[n-1:]
			}
			var lastSeq uint64

			idx := rapid.IntRange(0, n-1)
			rt.Repeat(map[string]func(*rapid.T){
				"setResults": func(rt *rapid.T) {
					for i := range n {
						up := rapid.Bool().Draw(rt, fmt.Sprintf("up%d", i))
						head := uint64(rapid.IntRange(0, 12).Draw(rt, fmt.Sprintf("head%d", i)))
						m.up[i], m.heads[i] = up, head
						f.setHead(i, head)
						if up {
							f.set(i, 0)
						} else {
							f.set(i, down)
						}
					}
				},
				"rounds": func(rt *rapid.T) {
					for range rapid.IntRange(1, 4).Draw(rt, "rounds") {
						time.Sleep(interval)
						synctest.Wait()
						m.now += interval
						m.round()
					}
				},
				"reportFailure": func(rt *rapid.T) {
					i, refused := idx.Draw(rt, "i"), rapid.Bool().Draw(rt, "refused")
					err := errors.New("request failed")
					if refused {
						err = Down(fmt.Errorf("dial: %w", syscall.ECONNREFUSED))
					}
					if err := g.ReportFailure(i, err); err != nil {
						rt.Fatal(err)
					}
					if refused {
						m.down(i)
					} else {
						m.result(i, false)
					}
					m.settle(false)
				},
				"drain": func(rt *rapid.T) {
					i := idx.Draw(rt, "i")
					if err := g.Drain(i); err != nil {
						rt.Fatal(err)
					}
					m.drained[i] = true
					m.settle(true)
				},
				"undrain": func(rt *rapid.T) {
					i := idx.Draw(rt, "i")
					if err := g.Undrain(i); err != nil {
						rt.Fatal(err)
					}
					m.drained[i] = false
					m.settle(true)
				},
				"force": func(rt *rapid.T) {
					i := idx.Draw(rt, "i")
					if err := g.Force(i); err != nil {
						rt.Fatal(err)
					}
					m.forced = i
					m.settle(true)
				},
				"unforce": func(rt *rapid.T) {
					if err := g.Unforce(); err != nil {
						rt.Fatal(err)
					}
					m.forced = -1
					m.settle(true)
				},
				"": func(rt *rapid.T) {
					if d := time.Since(start); d != m.now {
						rt.Fatalf("clock drift: fake %v, model %v", d, m.now)
					}
					wantI, wantOK := m.pick()
					if i, ok := g.PickIndex(); i != wantI || ok != wantOK {
						rt.Fatalf("PickIndex = (%d, %v), model (%d, %v); model %+v", i, ok, wantI, wantOK, m)
					}
					// Receive what was delivered so far: after synctest.Wait the
					// delivery goroutine is either blocked handing over a change
					// or idle.
					var got []Change[int]
					for more := true; more; {
						synctest.Wait()
						select {
						case c := <-changes:
							got = append(got, c)
						default:
							more = false
						}
					}
					if len(got) != len(m.changes) {
						rt.Fatalf("subscriber got %d changes %+v, model %d %+v", len(got), got, len(m.changes), m.changes)
					}
					for k, c := range got {
						w := m.changes[k]
						if c.FromIndex != w.FromIndex || c.ToIndex != w.ToIndex || c.From != w.From || c.To != w.To ||
							c.Reason != w.Reason || c.Coalesced != 0 || c.At.Sub(start) != w.At.Sub(time.Time{}) ||
							(lastSeq != 0 && c.Seq != lastSeq+1) {
							rt.Fatalf("change %d = %+v, model %+v (previous seq %d)", k, c, w, lastSeq)
						}
						lastSeq = c.Seq
					}
					m.changes = nil
					for i, s := range g.Status() {
						if s.State != m.state[i] || s.Successes != m.succ[i] || s.Failures != m.fail[i] || s.Drained != m.drained[i] || s.Lag != m.lag[i] {
							rt.Fatalf("target %d: %+v; model state %v succ %d fail %d drained %v lag %d",
								i, s, m.state[i], m.succ[i], m.fail[i], m.drained[i], m.lag[i])
						}
					}
				},
			})
		})
	})
}
