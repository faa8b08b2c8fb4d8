package ring

import (
	"slices"
	"testing"

	"pgregory.net/rapid"
)

// TestBufferMatchesSlice checks Buffer against a plain slice used as a FIFO.
func TestBufferMatchesSlice(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		var r Buffer[int]
		var want []int
		next := 0
		for range rapid.IntRange(0, 200).Draw(t, "steps") {
			switch op := rapid.IntRange(0, 3).Draw(t, "op"); {
			case op <= 1:
				r.PushBack(next)
				want = append(want, next)
				next++
			case op == 2 && len(want) > 0:
				if got := r.PopFront(); got != want[0] {
					t.Fatalf("PopFront = %d, want %d", got, want[0])
				}
				want = want[1:]
			case op == 3:
				n := rapid.IntRange(0, len(want)).Draw(t, "keep")
				r.Truncate(n)
				want = want[:n]
			}
			if r.Len() != len(want) {
				t.Fatalf("Len = %d, want %d", r.Len(), len(want))
			}
			got := make([]int, r.Len())
			for i := range got {
				got[i] = *r.At(i)
			}
			if !slices.Equal(got, want) {
				t.Fatalf("contents %v, want %v", got, want)
			}
		}
	})
}

// TestRemovedSlotsAreZeroed: popped and truncated values must not stay
// reachable from the storage.
func TestRemovedSlotsAreZeroed(t *testing.T) {
	var r Buffer[*int]
	for i := range 20 {
		r.PushBack(&i)
	}
	r.PopFront()
	r.Truncate(10)
	live := 0
	for _, p := range r.buf {
		if p != nil {
			live++
		}
	}
	if live != 10 {
		t.Fatalf("%d non-nil slots, want 10", live)
	}
}

func TestPanics(t *testing.T) {
	for name, f := range map[string]func(){
		"pop empty":   func() { var r Buffer[int]; r.PopFront() },
		"at":          func() { var r Buffer[int]; r.PushBack(1); r.At(1) },
		"truncate":    func() { var r Buffer[int]; r.Truncate(1) },
		"at negative": func() { var r Buffer[int]; r.At(-1) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s: no panic", name)
				}
			}()
			f()
		}()
	}
}

// BenchmarkPushPop is the steady state of a queue that fills and drains:
// it must not allocate.
func BenchmarkPushPop(b *testing.B) {
	var r Buffer[int]
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		r.PushBack(i)
		r.PushBack(i)
		r.PopFront()
		r.PopFront()
	}
}
