package sendqueue

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
)

// Done makes its channel lazily while the delivery goroutine may be
// settling the ticket. Callers of Done racing with delivery must always get
// a channel that closes: if one were missed, the waiting goroutines would
// block forever and synctest would report the deadlock.
//
// The queue's capacity covers every round: the test pushes without waiting
// for delivery, and an earlier version overfilled the default cap of 100
// (Push failed with ErrFull about one run in six, and the failure then
// showed up as a synctest deadlock).
func TestTicketDoneRacesWithSettle(t *testing.T) {
	const rounds = 200
	synctest.Test(t, func(t *testing.T) {
		q := New(func(context.Context, Item[int]) error { return nil }, WithCapacity[int](rounds))
		var wg sync.WaitGroup
		for round := range rounds {
			tk, err := q.Push(Item[int]{Value: round})
			if err != nil {
				t.Errorf("Push %d: %v", round, err)
				break
			}
			for range 3 {
				wg.Go(func() {
					<-tk.Done()
					if tk.Status() != Delivered || tk.Err() != nil {
						t.Errorf("ticket %s: %v %v", tk.Key(), tk.Status(), tk.Err())
					}
				})
			}
		}
		if err := q.Flush(context.Background()); err != nil {
			t.Error(err)
		}
		wg.Wait()
		if err := q.Close(); err != nil {
			t.Fatal(err)
		}
	})
}
