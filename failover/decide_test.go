package failover

import (
	"errors"
	"testing"
)

func TestDecide(t *testing.T) {
	cases := []struct {
		name       string
		c          choice
		next       int
		reason     Reason
		wantChange bool
	}{
		{"nothing eligible yet", choice{cur: -1, forced: -1, best: -1}, -1, 0, false},
		{"first selection", choice{cur: -1, forced: -1, best: 1}, 1, Initial, true},
		{"first selection by an operator", choice{cur: -1, forced: -1, best: 1, manual: true}, 1, Manual, true},
		{"current is the best", choice{cur: 0, forced: -1, best: 0, curEligible: true}, 0, 0, false},
		{"nothing eligible: stay", choice{cur: 1, forced: -1, best: -1}, 1, 0, false},
		{"current unhealthy", choice{cur: 0, forced: -1, best: 1}, 1, CurrentUnhealthy, true},
		{"current drained by an operator", choice{cur: 0, forced: -1, best: 1, manual: true}, 1, Manual, true},
		{"failback", choice{cur: 1, forced: -1, best: 0, curEligible: true, dwellOver: true}, 0, BetterAvailable, true},
		{"failback within dwell: stay", choice{cur: 1, forced: -1, best: 0, curEligible: true}, 1, 0, false},
		{"undrain ignores dwell", choice{cur: 1, forced: -1, best: 0, curEligible: true, manual: true}, 0, Manual, true},
		{"leaving an unhealthy target ignores dwell", choice{cur: 1, forced: -1, best: 0}, 0, CurrentUnhealthy, true},
		{"forced", choice{cur: 0, forced: 2, best: 0, curEligible: true}, 2, Manual, true},
		{"forced before any result", choice{cur: -1, forced: 1, best: -1}, 1, Manual, true},
		{"forced and already there", choice{cur: 2, forced: 2, best: 0, curEligible: true, dwellOver: true}, 2, 0, false},
	}
	for _, tc := range cases {
		next, reason := decide(tc.c)
		if next != tc.next || (next != tc.c.cur) != tc.wantChange || (tc.wantChange && reason != tc.reason) {
			t.Errorf("%s: decide(%+v) = (%d, %v), want (%d, %v), change %v", tc.name, tc.c, next, reason, tc.next, tc.reason, tc.wantChange)
		}
	}
}

func TestJudge(t *testing.T) {
	down := errors.New("down")
	ok := func(i int, head uint64) result { return result{i: i, h: Health{Head: head}} }
	cases := []struct {
		name    string
		results []result
		maxLag  uint64
		lags    []uint64
		lagging []bool
	}{
		{"lag checking off", []result{ok(0, 1), ok(1, 1000)}, 0, []uint64{0, 0}, []bool{false, false}},
		{"two that disagree: the one behind lags", []result{ok(0, 1000), ok(1, 1050)}, 10, []uint64{50, 0}, []bool{true, false}},
		{"within the limit", []result{ok(0, 100), ok(1, 105)}, 10, []uint64{5, 0}, []bool{false, false}},
		{"exactly at the limit", []result{ok(0, 90), ok(1, 100)}, 10, []uint64{10, 0}, []bool{false, false}},
		{"one alone never lags", []result{ok(0, 7)}, 10, []uint64{0}, []bool{false}},
		{"a failed check is no reference", []result{ok(0, 100), {i: 1, h: Health{Head: 1 << 62}, err: down}}, 10, []uint64{0, 0}, []bool{false, false}},
		{"highest of three", []result{ok(0, 100), ok(1, 200), ok(2, 201)}, 10, []uint64{101, 1, 0}, []bool{true, false, false}},
		{"small heads: no underflow", []result{ok(0, 0), ok(1, 3)}, 10, []uint64{3, 0}, []bool{false, false}},
	}
	for _, tc := range cases {
		v := judge(tc.results, tc.maxLag)
		for k, r := range tc.results {
			if r.err != nil {
				if v[k].err != r.err {
					t.Errorf("%s: result %d: error %v, want the check's own %v", tc.name, k, v[k].err, r.err)
				}
				continue
			}
			if v[k].lag != tc.lags[k] || errors.Is(v[k].err, ErrLagging) != tc.lagging[k] || (v[k].err != nil && !tc.lagging[k]) {
				t.Errorf("%s: result %d: %+v, want lag %d lagging %v", tc.name, k, v[k], tc.lags[k], tc.lagging[k])
			}
		}
	}
}
