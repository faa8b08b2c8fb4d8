package sqlitestore

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/eventlog"
)

// TestCloseUnderLoadDoesNotDeadlock closes a store while appenders fill the
// writer's queue and readers look streams up. A reader used to take the
// closed flag's lock while holding the stream cache's lock; with Close
// waiting for an appender stuck on the full queue, and the writer waiting
// for the cache lock, the four waited on each other for ever.
func TestCloseUnderLoadDoesNotDeadlock(t *testing.T) {
	for round := range 6 {
		s, err := Open(filepath.Join(t.TempDir(), fmt.Sprintf("c%d.db", round)), WithMaxBatch(1))
		if err != nil {
			t.Fatal(err)
		}
		ctx := context.Background()
		if _, err := s.Append(ctx, "s", "", nil); err != nil {
			t.Fatal(err)
		}
		stop := make(chan struct{})
		var wg sync.WaitGroup
		for range 6 {
			wg.Go(func() {
				for {
					if _, err := s.Append(ctx, "s", "", []byte("x")); err != nil {
						if !errors.Is(err, eventlog.ErrClosed) {
							t.Errorf("Append during Close: %v, want ErrClosed", err)
						}
						return
					}
				}
			})
		}
		for range 8 {
			wg.Go(func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					if _, err := s.Bounds(ctx, "s"); err != nil {
						if !errors.Is(err, eventlog.ErrClosed) {
							t.Errorf("Bounds during Close: %v, want ErrClosed", err)
						}
						return
					}
					if _, err := s.ReadAfter(ctx, "s", eventlog.Cursor{Seq: 0}, 5, nil); err != nil && !errors.Is(err, eventlog.ErrClosed) && !errors.Is(err, eventlog.ErrCursorExpired) {
						t.Errorf("ReadAfter during Close: %v, want ErrClosed", err)
						return
					}
				}
			})
		}
		for s.taken.Load() < 20 { // let the load build up
			if _, err := s.Append(ctx, "s", "", nil); err != nil {
				t.Fatal(err)
			}
		}
		closed := make(chan error, 1)
		go func() { closed <- s.Close() }()
		// A watchdog, not synchronisation: Close normally returns within
		// milliseconds.
		select {
		case err := <-closed:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("round %d: Close deadlocked", round)
		}
		close(stop)
		wg.Wait()
	}
}
