package eventlog_test

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/steadfast-go/steadfast/eventlog"
)

// naiveLog is the obvious alternative: one mutex over a map of growing
// slices, data cloned per append, no retention.
type naiveLog struct {
	mu      sync.Mutex
	streams map[string][]eventlog.Event
}

func (n *naiveLog) append(stream string, data []byte) uint64 {
	n.mu.Lock()
	defer n.mu.Unlock()
	evs := n.streams[stream]
	seq := uint64(len(evs) + 1)
	n.streams[stream] = append(evs, eventlog.Event{Seq: seq, Data: bytes.Clone(data)})
	return seq
}

func (n *naiveLog) readAfter(stream string, after uint64, limit int) []eventlog.Event {
	n.mu.Lock()
	defer n.mu.Unlock()
	evs := n.streams[stream]
	end := min(uint64(len(evs)), after+uint64(limit))
	return append([]eventlog.Event(nil), evs[after:end]...)
}

var benchData = []byte(`{"type":"delta","text":"hello, world"}`)

func BenchmarkAppend(b *testing.B) {
	ctx := context.Background()
	b.Run("eventlog", func(b *testing.B) {
		l := eventlog.New()
		defer l.Close()
		b.ReportAllocs()
		for b.Loop() {
			l.Append(ctx, "s", benchData)
		}
	})
	b.Run("naive", func(b *testing.B) {
		n := &naiveLog{streams: map[string][]eventlog.Event{}}
		b.ReportAllocs()
		for b.Loop() {
			n.append("s", benchData)
		}
	})
}

func BenchmarkAppendParallel(b *testing.B) {
	ctx := context.Background()
	streams := make([]string, 64)
	for i := range streams {
		streams[i] = fmt.Sprint("stream-", i)
	}
	b.Run("eventlog", func(b *testing.B) {
		l := eventlog.New()
		defer l.Close()
		var next atomic.Uint32
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := next.Add(17)
			for pb.Next() {
				l.Append(ctx, streams[i%64], benchData)
				i++
			}
		})
	})
	b.Run("naive", func(b *testing.B) {
		n := &naiveLog{streams: map[string][]eventlog.Event{}}
		var next atomic.Uint32
		b.ReportAllocs()
		b.RunParallel(func(pb *testing.PB) {
			i := next.Add(17)
			for pb.Next() {
				n.append(streams[i%64], benchData)
				i++
			}
		})
	})
}

func BenchmarkReplay200(b *testing.B) {
	ctx := context.Background()
	b.Run("eventlog", func(b *testing.B) {
		l := eventlog.New()
		defer l.Close()
		for range 1000 {
			l.Append(ctx, "s", benchData)
		}
		buf := make([]eventlog.Event, 0, 200)
		from := at(l, 800)
		b.ReportAllocs()
		for b.Loop() {
			res, _ := l.ReplayInto(ctx, "s", from, 200, buf)
			if len(res.Events) != 200 {
				b.Fatal(len(res.Events))
			}
		}
	})
	b.Run("naive", func(b *testing.B) {
		n := &naiveLog{streams: map[string][]eventlog.Event{}}
		for range 1000 {
			n.append("s", benchData)
		}
		b.ReportAllocs()
		for b.Loop() {
			if len(n.readAfter("s", 800, 200)) != 200 {
				b.Fatal()
			}
		}
	})
}

func BenchmarkSubscribeFanout(b *testing.B) {
	// One appender, 8 subscribers reading live: cost per appended event.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l := eventlog.New()
	defer l.Close()
	if err := l.SetState(ctx, "s", eventlog.Active); err != nil {
		b.Fatal(err)
	}
	var wg sync.WaitGroup
	for range 8 {
		sub, err := l.Subscribe(ctx, "s", eventlog.Cursor{}, eventlog.SubscribeOptions{MaxLag: 1 << 30})
		if err != nil {
			b.Fatal(err)
		}
		wg.Go(func() {
			defer sub.Close()
			for {
				if _, err := sub.Next(ctx); err != nil {
					return
				}
			}
		})
	}
	b.ReportAllocs()
	for b.Loop() {
		l.Append(ctx, "s", benchData)
	}
	cancel()
	wg.Wait()
}
