package proxy

// What a WebSocket session writes to its client: one ordered outbox and one
// writer goroutine per session, so a slow client holds up only itself.
// Replies and notifications are appended in the order the session decides
// them (under session.mu), and written in that order. A notification of a
// shared subscription is kept as the client's id plus the result bytes
// the hub already holds: the message is put together only in the writer's
// own buffer, so fanning one head out to many clients copies nothing per
// client until it is written.

import (
	"context"
	"encoding/json"
	"strconv"
	"sync"

	"github.com/coder/websocket"

	"github.com/steadfast-go/steadfast/examples/proxy/jsonrpc"
)

// outItem is one message for the client: msg, or a notification of
// subscription sub carrying result.
type outItem struct {
	msg    []byte
	sub    string
	result json.RawMessage
}

func (it outItem) size() int { return len(it.msg) + len(it.sub) + len(it.result) }

// outbox holds what waits to be written to the client, in order.
type outbox struct {
	mu       sync.Mutex
	items    []outItem
	bytes    int
	limit    int
	wake     chan struct{} // capacity 1: the writer has something to do
	stopping bool          // write what is queued, then stop
	overflow bool          // the client fell more than limit bytes behind
	dead     bool          // the connection failed or overflowed: drop everything
	// dropped counts messages that will never be written, by reason.
	dropped func(reason string, n int)
}

func newOutbox(limit int, dropped func(reason string, n int)) *outbox {
	return &outbox{limit: limit, wake: make(chan struct{}, 1), dropped: dropped}
}

// push appends it. It never blocks: a client that falls more than the
// limit behind is disconnected (the writer closes it with 1013, "try again
// later"), and what it had not been sent yet is counted as dropped.
func (o *outbox) push(it outItem) {
	o.mu.Lock()
	if o.dead || o.stopping {
		o.mu.Unlock()
		o.dropped(dropClientGone, 1)
		return
	}
	if o.bytes+it.size() > o.limit && len(o.items) > 0 {
		n := len(o.items) + 1
		o.overflow, o.dead = true, true
		o.items, o.bytes = nil, 0
		o.mu.Unlock()
		o.signal()
		o.dropped(dropSlowClient, n)
		return
	}
	o.items = append(o.items, it)
	o.bytes += it.size()
	o.mu.Unlock()
	o.signal()
}

func (o *outbox) signal() {
	select {
	case o.wake <- struct{}{}:
	default:
	}
}

// stop makes the writer return once it has written what is queued.
func (o *outbox) stop() {
	o.mu.Lock()
	o.stopping = true
	o.mu.Unlock()
	o.signal()
}

// take hands the writer everything queued, swapping in spare (emptied) as
// the new queue, so the two slices are reused and a steady flow allocates
// nothing. done is true when the writer should return after this batch.
func (o *outbox) take(spare []outItem) (batch []outItem, done, overflow bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	batch = o.items
	o.items, o.bytes = spare[:0], 0
	return batch, o.dead || (o.stopping && len(batch) == 0), o.overflow
}

// kill drops what is queued and refuses the rest (the connection failed).
// It reports how many messages were dropped.
func (o *outbox) kill() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := len(o.items)
	o.items, o.bytes, o.dead = nil, 0, true
	o.signal()
	return n
}

// writeLoop is the session's one writer to the client. It returns when
// the outbox is stopped and empty, or when the connection failed or the
// client fell too far behind; on return, done is closed.
func (s *session) writeLoop(done chan<- struct{}) {
	defer close(done)
	var buf []byte
	var spare []outItem
	for {
		batch, last, overflow := s.out.take(spare)
		for i, it := range batch {
			b := it.msg
			if b == nil {
				buf = jsonrpc.AppendNotification(buf[:0], it.sub, it.result)
				b = buf
			}
			// Not s.ctx: on proxy shutdown the session still tells the client why.
			ctx, cancel := context.WithTimeout(context.Background(), clientWriteTimeout)
			err := s.cc.Write(ctx, websocket.MessageText, b)
			cancel()
			if err != nil {
				s.out.dropped(dropClientGone, len(batch)-i+s.out.kill())
				s.cancel()
				return
			}
			batch[i] = outItem{} // let the result bytes go
		}
		if overflow {
			s.log.Warn("client too slow: disconnected", "limit_bytes", s.out.limit)
			s.cancel()
			_ = s.cc.Close(websocket.StatusTryAgainLater, "client too slow: more than "+
				strconv.Itoa(s.out.limit)+" bytes waiting to be sent")
			return
		}
		if last {
			return
		}
		spare = batch
		if len(batch) == 0 {
			// Wait only when nothing was queued: a batch taken after the
			// last signal (stop's included) must be followed by another
			// take, or the writer would sleep on a signal already used.
			<-s.out.wake
		}
	}
}
