package proxy

import "testing"

func TestHeadTrackerSuppressesRepeatsAndKeepsReorgs(t *testing.T) {
	var h headTracker
	if !h.accept(10, "a") || !h.accept(11, "b") {
		t.Fatal("new heads refused")
	}
	if h.accept(11, "b") {
		t.Fatal("the same hash at the same height delivered twice")
	}
	if !h.accept(11, "b2") {
		t.Fatal("a reorged head (new hash at a known height) suppressed")
	}
	if !h.accept(9, "z") { // an older height the client never got
		t.Fatal("unseen older head refused")
	}
	if h.lastNum != 11 {
		t.Fatalf("lastNum %d, want 11 (older heads do not lower it)", h.lastNum)
	}
}

func TestHeadTrackerGap(t *testing.T) {
	var h headTracker
	if _, ok := h.gap(50, 64); ok {
		t.Fatal("gap before any head")
	}
	h.accept(10, "a")
	for _, tc := range []struct {
		num   uint64
		limit int
		from  uint64
		ok    bool
	}{
		{11, 64, 0, false},  // the next head: nothing missing
		{10, 64, 0, false},  // the same head again
		{5, 64, 0, false},   // behind: nothing to fill
		{15, 64, 11, true},  // 11..14 missing
		{100, 64, 36, true}, // only the newest 64 of 11..99
		{15, 0, 0, false},   // filling off
	} {
		from, ok := h.gap(tc.num, tc.limit)
		if from != tc.from || ok != tc.ok {
			t.Errorf("gap(%d, %d) = %d, %v; want %d, %v", tc.num, tc.limit, from, ok, tc.from, tc.ok)
		}
	}
}

func TestHeadTrackerForgetsOldHeights(t *testing.T) {
	var h headTracker
	for n := uint64(1); n <= 10*maxSeenHeads; n++ {
		h.accept(n, "h")
	}
	if len(h.seen) > 2*maxSeenHeads+1 {
		t.Fatalf("tracker holds %d heights", len(h.seen))
	}
	if h.accept(10*maxSeenHeads, "h") {
		t.Fatal("recent head forgotten")
	}
}
