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

// model is a plain restatement of the group's documented rules, driven by
// the same sequence of check results, passive reports and operator actions.
type model struct {
	rise, fall int
	dwell      time.Duration
	state      []State
	succ, fail []int
	drained    []bool
	up         []bool   // result of the next checks
	heads      []uint64 // head reported by the next successful checks
	maxLag     uint64
	lag        []uint64 // lag recorded by the last successful check
	cur        int
	forced     int
	now        time.Duration
	lastChange time.Duration
	changes    []Change[int] // changes subscribers must still receive (From/To, Reason, At as offset)
}

func (m *model) record(i int, ok bool) {
	if ok {
		m.succ[i]++
		m.fail[i] = 0
		if m.state[i] == Unknown || (m.state[i] == Unhealthy && m.succ[i] >= m.rise) {
			m.state[i] = Healthy
		}
		return
	}
	m.fail[i]++
	m.succ[i] = 0
	if m.state[i] == Unknown || (m.state[i] == Healthy && m.fail[i] >= m.fall) {
		m.state[i] = Unhealthy
	}
}

// round applies one round of checks: the reference head is the highest
// successful head; a success lagging more than maxLag is a failure.
func (m *model) round() {
	var ref uint64
	for i := range m.up {
		if m.up[i] {
			ref = max(ref, m.heads[i])
		}
	}
	for i := range m.up {
		if m.up[i] && m.maxLag > 0 {
			m.lag[i] = max(ref, m.heads[i]) - m.heads[i]
		}
		m.record(i, m.up[i] && (m.maxLag == 0 || m.heads[i]+m.maxLag >= ref))
	}
	m.reselect(false)
}

func (m *model) eligible(i int) bool { return m.state[i] == Healthy && !m.drained[i] }

func (m *model) reselect(manual bool) {
	next, reason := m.cur, Initial
	if m.forced >= 0 {
		next, reason = m.forced, Manual
	} else {
		best := -1
		for i := range m.state {
			if m.eligible(i) {
				best = i
				break
			}
		}
		if best >= 0 && best != m.cur {
			switch {
			case manual:
				next, reason = best, Manual
			case m.cur < 0:
				next, reason = best, Initial
			case !m.eligible(m.cur):
				next, reason = best, CurrentUnhealthy
			case m.now-m.lastChange >= m.dwell:
				next, reason = best, BetterAvailable
			}
		}
	}
	if next != m.cur {
		m.changes = append(m.changes, Change[int]{From: max(m.cur, 0), To: next, FromIndex: m.cur, ToIndex: next, Reason: reason, At: time.Time{}.Add(m.now)})
		m.cur, m.lastChange = next, m.now
	}
}

// pick is what Pick must return.
func (m *model) pick() (int, bool) {
	if m.cur < 0 {
		return 0, false
	}
	ok := m.state[m.cur] == Healthy && (m.cur == m.forced || !m.drained[m.cur])
	return m.cur, ok
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
						m.succ[i], m.fail[i] = 0, max(m.fail[i]+1, m.fall)
						m.state[i] = Unhealthy
					} else {
						m.record(i, false)
					}
					m.reselect(false)
				},
				"drain": func(rt *rapid.T) {
					i := idx.Draw(rt, "i")
					if err := g.Drain(i); err != nil {
						rt.Fatal(err)
					}
					m.drained[i] = true
					m.reselect(true)
				},
				"undrain": func(rt *rapid.T) {
					i := idx.Draw(rt, "i")
					if err := g.Undrain(i); err != nil {
						rt.Fatal(err)
					}
					m.drained[i] = false
					m.reselect(true)
				},
				"force": func(rt *rapid.T) {
					i := idx.Draw(rt, "i")
					if err := g.Force(i); err != nil {
						rt.Fatal(err)
					}
					m.forced = i
					m.reselect(true)
				},
				"unforce": func(rt *rapid.T) {
					if err := g.Unforce(); err != nil {
						rt.Fatal(err)
					}
					m.forced = -1
					m.reselect(true)
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
