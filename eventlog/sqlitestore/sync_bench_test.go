package sqlitestore

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
)

// BenchmarkSynchronous measures what synchronous=FULL (the setting this
// store uses) costs against NORMAL (the usual WAL setting, which a power
// loss can undo behind an unchanged epoch), with 1 and 8 appenders.
//
//	go test -run '^$' -bench Synchronous -benchmem -count 6 ./eventlog/sqlitestore/
func BenchmarkSynchronous(b *testing.B) {
	for _, mode := range []string{"FULL", "NORMAL"} {
		for _, appenders := range []int{1, 8} {
			b.Run(fmt.Sprintf("%s/appenders=%d", mode, appenders), func(b *testing.B) {
				old := syncMode
				syncMode = mode
				defer func() { syncMode = old }()
				s, err := Open(filepath.Join(b.TempDir(), "events.db"))
				if err != nil {
					b.Fatal(err)
				}
				defer s.Close()
				ctx := context.Background()
				data := make([]byte, 64)
				var next atomic.Int64
				var wg sync.WaitGroup
				b.ResetTimer()
				for range appenders {
					wg.Go(func() {
						for next.Add(1) <= int64(b.N) {
							if _, err := s.Append(ctx, "s", "", data); err != nil {
								b.Error(err)
								return
							}
						}
					})
				}
				wg.Wait()
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "appends/s")
			})
		}
	}
}
