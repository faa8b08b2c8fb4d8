// Package eventlog_test compares steadfast's eventlog with
// tmaxmax/go-sse v0.12.0's FiniteReplayer, and measures the stores side by
// side (stores_bench_test.go).
//
//	go test -run '^$' -bench . -benchmem ./eventlog/
package eventlog_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"

	sse "github.com/tmaxmax/go-sse"

	"github.com/steadfast-go/steadfast/eventlog"
)

const (
	bufferSize = 4096 // events kept per stream by both implementations
	replayN    = 200
	nStreams   = 64
)

var payload = []byte(`{"type":"delta","text":"hello, world"}`)

// discard is a go-sse client that drops what it is sent.
type discard struct{ n int }

func (d *discard) Send(m *sse.Message) error { d.n++; return nil }
func (d *discard) Flush() error              { return nil }

// lockedReplayer is a go-sse FiniteReplayer with the lock its provider
// would hold around it (FiniteReplayer is not safe for concurrent use).
type lockedReplayer struct {
	mu sync.Mutex
	r  *sse.FiniteReplayer
}

func newReplayer(b *testing.B) *sse.FiniteReplayer {
	r, err := sse.NewFiniteReplayer(bufferSize, true)
	if err != nil {
		b.Fatal(err)
	}
	return r
}

func newLog() *eventlog.Log {
	return eventlog.New(eventlog.WithRetention(eventlog.Retention{MaxEvents: bufferSize}))
}

func BenchmarkEventLog(b *testing.B) {
	ctx := context.Background()
	topics := []string{"s"}
	text := string(payload)

	b.Run("append/steadfast", func(b *testing.B) {
		l := newLog()
		defer l.Close()
		b.ReportAllocs()
		for b.Loop() {
			if _, err := l.Append(ctx, "s", payload); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("append/gosse", func(b *testing.B) {
		r := newReplayer(b)
		b.ReportAllocs()
		for b.Loop() {
			m := &sse.Message{}
			m.AppendData(text)
			if _, err := r.Put(m, topics); err != nil {
				b.Fatal(err)
			}
		}
	})

	b.Run("replay-200/steadfast", func(b *testing.B) {
		l := newLog()
		defer l.Close()
		var head eventlog.Cursor
		for range 1000 {
			head, _ = l.Append(ctx, "s", payload)
		}
		from := eventlog.Cursor{Epoch: head.Epoch, Seq: 1000 - replayN}
		buf := make([]eventlog.Event, 0, replayN)
		var sink uint64
		b.ReportAllocs()
		for b.Loop() {
			res, err := l.ReplayInto(ctx, "s", from, replayN, buf)
			if err != nil || len(res.Events) != replayN {
				b.Fatalf("replay: %d events, %v", len(res.Events), err)
			}
			for i := range res.Events {
				sink += res.Events[i].Seq
			}
		}
		_ = sink
	})
	b.Run("replay-200/gosse", func(b *testing.B) {
		r := newReplayer(b)
		for range 1000 {
			m := &sse.Message{}
			m.AppendData(text)
			r.Put(m, topics)
		}
		// go-sse's auto ids start at 0: id 799 is the event before the last 200.
		sub := sse.Subscription{Client: &discard{}, LastEventID: sse.ID(strconv.Itoa(999 - replayN)), Topics: topics}
		d := sub.Client.(*discard)
		b.ReportAllocs()
		for b.Loop() {
			d.n = 0
			if err := r.Replay(sub); err != nil || d.n != replayN {
				b.Fatalf("replay: %d events, %v", d.n, err)
			}
		}
	})

	streams := make([]string, nStreams)
	for i := range streams {
		streams[i] = fmt.Sprintf("stream-%d", i)
	}
	b.Run("append-parallel/steadfast", func(b *testing.B) {
		l := newLog()
		defer l.Close()
		var next atomic.Uint32
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := next.Add(17)
			for pb.Next() {
				if _, err := l.Append(ctx, streams[i%nStreams], payload); err != nil {
					b.Error(err)
					return
				}
				i++
			}
		})
	})
	b.Run("append-parallel/gosse", func(b *testing.B) {
		rs := make([]*lockedReplayer, nStreams)
		for i := range rs {
			rs[i] = &lockedReplayer{r: newReplayer(b)}
		}
		tps := make([][]string, nStreams)
		for i := range tps {
			tps[i] = []string{streams[i]}
		}
		var next atomic.Uint32
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := next.Add(17)
			for pb.Next() {
				k := i % nStreams
				m := &sse.Message{}
				m.AppendData(text)
				r := rs[k]
				r.mu.Lock()
				_, err := r.r.Put(m, tps[k])
				r.mu.Unlock()
				if err != nil {
					b.Error(err)
					return
				}
				i++
			}
		})
	})
}
