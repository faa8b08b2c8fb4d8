package router

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/examples/bot/agent"
	"github.com/steadfast-go/steadfast/examples/bot/chat"
	"github.com/steadfast-go/steadfast/examples/bot/store"
)

// nopPlatform discards output; done is signaled on every Send.
type nopPlatform struct{ done chan struct{} }

func (nopPlatform) Name() string                                      { return "nop" }
func (nopPlatform) Limit() int                                        { return 2000 }
func (nopPlatform) Run(ctx context.Context, h chat.Handler) error     { return nil }
func (nopPlatform) Typing(context.Context, string) error              { return nil }
func (nopPlatform) Waiting(context.Context, chat.Message, bool) error { return nil }
func (p nopPlatform) Send(_ context.Context, _ chat.Outgoing) error {
	if p.done != nil {
		p.done <- struct{}{}
	}
	return nil
}

func benchStore(b *testing.B, channels int) *store.Store {
	st, err := store.Open(filepath.Join(b.TempDir(), "s.json"))
	if err != nil {
		b.Fatal(err)
	}
	// Sessions exist already, as in steady state: no disk write per message.
	for c := range channels {
		st.Update(fmt.Sprint("ch", c), func(s *store.Session) { s.SessionID = "s" })
	}
	return st
}

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// BenchmarkRoutingOverhead measures one message's full trip through the
// router with the echo agent at zero delay: admission, worker start, lock,
// session lookup, typing refresher, agent call, chunking, send, unlock.
// One message at a time, so ns/op is the per-message routing overhead.
func BenchmarkRoutingOverhead(b *testing.B) {
	p := nopPlatform{done: make(chan struct{})}
	r := New(Config{Platform: p, Agent: &agent.Echo{}, Store: benchStore(b, 1), Logger: quietLogger()})
	m := chat.Message{Channel: "ch0", ID: "1", Text: "hello"}
	b.ReportAllocs()
	for b.Loop() {
		r.Handle(m)
		<-p.done
	}
	b.StopTimer()
	r.Drain(context.Background())
}

// BenchmarkThroughput100x100 admits 100 messages into each of 100 channels
// (interleaved, as they would arrive) and waits for all 10,000 replies.
// It reports messages per second and ns per message.
func BenchmarkThroughput100x100(b *testing.B) {
	const channels, perChannel = 100, 100
	st := benchStore(b, channels)
	names := make([]string, channels)
	for c := range names {
		names[c] = fmt.Sprint("ch", c)
	}
	b.ReportAllocs()
	start := time.Now()
	n := 0
	for b.Loop() {
		r := New(Config{Platform: nopPlatform{}, Agent: &agent.Echo{}, Store: st, Logger: quietLogger()})
		for i := range perChannel {
			for _, ch := range names {
				r.Handle(chat.Message{Channel: ch, ID: fmt.Sprint(i), Text: "hello"})
			}
		}
		if err := r.Drain(context.Background()); err != nil {
			b.Fatal(err)
		}
		n += channels * perChannel
	}
	el := time.Since(start)
	b.ReportMetric(float64(n)/el.Seconds(), "msgs/s")
	b.ReportMetric(float64(el.Nanoseconds())/float64(n), "ns/msg")
}
