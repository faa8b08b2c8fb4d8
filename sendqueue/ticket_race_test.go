package sendqueue

import (
	"context"
	"sync"
	"testing"
	"testing/synctest"
)

// Done and settle hand the Done channel over without a lock. Callers of
// Done racing with delivery must always get a channel that closes: if one
// were missed, the waiting goroutines would block forever and synctest
// would report the deadlock.
func TestTicketDoneRacesWithSettle(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		q := New(func(context.Context, Item[int]) error { return nil })
		var wg sync.WaitGroup
		for round := range 200 {
			tk, err := q.Push(Item[int]{Value: round})
			if err != nil {
				t.Fatal(err)
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
		wg.Wait()
		if _, err := q.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
	})
}
