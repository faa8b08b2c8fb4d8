package eventlog_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/steadfast-go/steadfast/eventlog"
	"github.com/steadfast-go/steadfast/eventlog/pgstore"
	"github.com/steadfast-go/steadfast/eventlog/sqlitestore"
)

// storeKind opens a fresh store, and a second handle on the same storage
// for the tail benchmark (nil where the storage is one process's own).
type storeKind struct {
	name string
	open func(b *testing.B) (eventlog.Store, func(b *testing.B) eventlog.Store)
}

var storeKinds = []storeKind{
	{"memory", func(b *testing.B) (eventlog.Store, func(*testing.B) eventlog.Store) {
		return eventlog.NewMemoryStore(eventlog.Retention{MaxEvents: bufferSize}), nil
	}},
	{"sqlite", func(b *testing.B) (eventlog.Store, func(*testing.B) eventlog.Store) {
		st, err := sqlitestore.Open(filepath.Join(b.TempDir(), "events.db"))
		if err != nil {
			b.Fatal(err)
		}
		return st, nil
	}},
	{"postgres", func(b *testing.B) (eventlog.Store, func(*testing.B) eventlog.Store) {
		u := pgDatabase(b)
		open := func(b *testing.B) eventlog.Store {
			st, err := pgstore.Open(context.Background(), u)
			if err != nil {
				b.Fatal(err)
			}
			return st
		}
		return open(b), open
	}},
}

// pgDatabase creates a database of its own on STEADFAST_POSTGRES (dropped
// in b.Cleanup) and returns its URL; it skips without the variable.
func pgDatabase(b *testing.B) string {
	base := os.Getenv("STEADFAST_POSTGRES")
	if base == "" {
		b.Skip("STEADFAST_POSTGRES is not set")
	}
	var r [6]byte
	rand.Read(r[:])
	name := "bench_" + hex.EncodeToString(r[:])
	admin := func(sql string) {
		ctx := context.Background()
		conn, err := pgx.Connect(ctx, base)
		if err != nil {
			b.Fatal(err)
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, sql); err != nil {
			b.Fatal(err)
		}
	}
	admin("CREATE DATABASE " + name)
	b.Cleanup(func() { admin("DROP DATABASE IF EXISTS " + name + " WITH (FORCE)") })
	u, err := url.Parse(base)
	if err != nil {
		b.Fatal(err)
	}
	u.Path = "/" + name
	return u.String()
}

// BenchmarkStores runs the same cases on the memory, SQLite and PostgreSQL
// stores: append throughput with 1 and 8 appenders on 1 and 64 streams
// (reported as appends/s), a replay of 200, and the tail latency from the
// start of an append to a subscriber's receipt (p50/p99). For PostgreSQL
// the subscriber's Log is on a second Store, with its own pool and LISTEN
// connection: the only path between the two is the database, as between
// two server processes.
func BenchmarkStores(b *testing.B) {
	for _, k := range storeKinds {
		b.Run(k.name, func(b *testing.B) {
			for _, c := range []struct{ appenders, streams int }{{1, 1}, {8, 1}, {1, 64}, {8, 64}} {
				b.Run(fmt.Sprintf("append/appenders=%d/streams=%d", c.appenders, c.streams), func(b *testing.B) {
					st, _ := k.open(b)
					l := eventlog.New(eventlog.WithStore(st))
					defer l.Close()
					benchAppends(b, l, c.appenders, c.streams)
				})
			}
			b.Run("replay-200", func(b *testing.B) {
				st, _ := k.open(b)
				l := eventlog.New(eventlog.WithStore(st))
				defer l.Close()
				benchReplay(b, l)
			})
			b.Run("tail", func(b *testing.B) {
				st, second := k.open(b)
				a := eventlog.New(eventlog.WithStore(st))
				defer a.Close()
				sub := a
				if second != nil {
					sub = eventlog.New(eventlog.WithStore(second(b)))
					defer sub.Close()
				}
				benchTail(b, a, sub)
			})
		})
	}
}

// benchAppends runs b.N appends from appenders goroutines, round-robin over
// streams.
func benchAppends(b *testing.B, l *eventlog.Log, appenders, streams int) {
	ctx := context.Background()
	names := make([]string, streams)
	for i := range names {
		names[i] = fmt.Sprintf("s%d", i)
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ReportAllocs()
	b.ResetTimer()
	for range appenders {
		wg.Go(func() {
			for {
				i := next.Add(1) - 1
				if i >= int64(b.N) {
					return
				}
				if _, err := l.Append(ctx, names[i%int64(streams)], payload); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "appends/s")
}

func benchReplay(b *testing.B, l *eventlog.Log) {
	ctx := context.Background()
	var head eventlog.Cursor
	for range 1000 {
		var err error
		if head, err = l.Append(ctx, "s", payload); err != nil {
			b.Fatal(err)
		}
	}
	from := eventlog.Cursor{Epoch: head.Epoch, Seq: 1000 - replayN}
	buf := make([]eventlog.Event, 0, replayN)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		res, err := l.ReplayInto(ctx, "s", from, replayN, buf)
		if err != nil || len(res.Events) != replayN {
			b.Fatalf("replay: %d events, %v", len(res.Events), err)
		}
	}
}

// benchTail appends one event at a time on a and waits for the subscriber
// on sub to receive it.
func benchTail(b *testing.B, a, sub *eventlog.Log) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := a.SetState(ctx, "tail", eventlog.Active); err != nil {
		b.Fatal(err)
	}
	s, err := sub.Subscribe(ctx, "tail", eventlog.Cursor{}, eventlog.SubscribeOptions{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	if _, err := s.Next(ctx); err != nil { // the (empty) replay
		b.Fatal(err)
	}
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for b.Loop() {
		start := time.Now()
		c, err := a.Append(ctx, "tail", payload)
		if err != nil {
			b.Fatal(err)
		}
		for got := false; !got; {
			res, err := s.Next(ctx)
			if err != nil || res.Outcome != eventlog.Events {
				b.Fatalf("tail: %v, %v", res.Outcome, err)
			}
			got = res.Resume.Seq >= c.Seq
		}
		lat = append(lat, time.Since(start))
	}
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}
