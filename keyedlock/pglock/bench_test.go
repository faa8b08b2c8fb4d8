package pglock

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/steadfast-go/steadfast/keyedlock"
)

// BenchmarkLockUnlock: an uncontended Lock+Unlock through pglock, beside a
// bare pg_advisory_lock/pg_advisory_unlock pair on one connection (the
// floor: two round trips) and keyedlock.Map in process.
//
//	STEADFAST_POSTGRES=... go test -run '^$' -bench . -benchmem -count 6 ./keyedlock/pglock/
func BenchmarkLockUnlock(b *testing.B) {
	ctx := context.Background()
	b.Run("pglock", func(b *testing.B) {
		l := open(b, newDatabase(b))
		for b.Loop() {
			ls, err := l.Lock(ctx, "k")
			if err != nil {
				b.Fatal(err)
			}
			if err := ls.Unlock(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("bare-advisory-lock", func(b *testing.B) {
		conn, err := pgx.Connect(ctx, newDatabase(b))
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close(ctx)
		for b.Loop() {
			if _, err := conn.Exec(ctx, `SELECT pg_advisory_lock(42)`); err != nil {
				b.Fatal(err)
			}
			if _, err := conn.Exec(ctx, `SELECT pg_advisory_unlock(42)`); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("keyedlock-in-process", func(b *testing.B) {
		var m keyedlock.Map[string]
		for b.Loop() {
			if err := m.Lock(ctx, "k"); err != nil {
				b.Fatal(err)
			}
			m.Unlock("k")
		}
	})
}

// BenchmarkHandOff: two Lockers (two processes, as far as PostgreSQL can
// tell) take turns on one key; the time from one's Unlock to the other's
// grant is reported as p50/p99.
func BenchmarkHandOff(b *testing.B) {
	u := newDatabase(b)
	ctx := context.Background()
	a, c := open(b, u), open(b, u)
	lat := handOff(b, ctx, a, c)
	reportPercentiles(b, lat)
}

func handOff(b *testing.B, ctx context.Context, a, c *Locker) []float64 {
	lat := make([]float64, 0, b.N)
	first, err := a.Lock(ctx, "k")
	if err != nil {
		b.Fatal(err)
	}
	holders := [2]*Locker{a, c}
	cur := first
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		next := holders[(i+1)%2]
		got := make(chan *Lease, 1)
		go func() {
			ls, err := next.Lock(ctx, "k")
			if err != nil {
				b.Error(err)
			}
			got <- ls
		}()
		waitWaiting(b, cur)
		start := nanotime()
		if err := cur.Unlock(); err != nil {
			b.Fatal(err)
		}
		cur = <-got
		if cur == nil {
			b.FailNow()
		}
		lat = append(lat, float64(nanotime()-start)/1e3)
	}
	b.StopTimer()
	cur.Unlock()
	return lat
}

func nanotime() int64 { return time.Now().UnixNano() }

// waitWaiting polls (bounded) until another Locker's request for cur's key
// waits in PostgreSQL, so that the hand-off measures a real hand-off.
func waitWaiting(b *testing.B, cur *Lease) {
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); {
		st, err := cur.l.Status(context.Background(), cur.key)
		if err != nil {
			b.Fatal(err)
		}
		if st.Waiters > 0 {
			return
		}
	}
	b.Fatal("the next holder never queued")
}

func reportPercentiles(b *testing.B, lat []float64) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(lat[len(lat)/2], "p50-µs")
	b.ReportMetric(lat[len(lat)*99/100], "p99-µs")
}
