package replayqueue_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"pgregory.net/rapid"

	"github.com/steadfast-go/steadfast/replayqueue"
)

// refQueue is the reference: the documented behaviour of a Queue (the
// package doc, Send, Connect, Disconnect, Fail, AddReplay, HandleReply) as
// slices and counters, with no goroutines, locks or clocks. Items are
// "m<nnn>" plus 0-4 "+" of padding, each created once; replayed items are
// "r|<key>|<id>". The size of an item is its length in bytes.
type refQueue struct {
	policy   replayqueue.Overflow
	maxItems int
	maxBytes int  // math.MaxInt without a byte bound
	noBytes  bool // no WithMaxBytes: the queue's unsized fast path

	connected  bool
	closed     bool
	gen        uint64
	seq        uint64
	buf        []string
	replays    []string
	wantLog    []string
	wantDrop   []string
	wantCalls  []string
	pending    map[replayqueue.ReplayID]string // id -> key
	answered   []replayqueue.ReplayID          // ids no longer pending
	stale      uint64
	created    []string
	rejected   []string
	handedBack []string
	next       int
}

// queueModel drives a Queue[string] and the reference side by side: each
// action applies an operation to both, and Check compares what the queue
// did (below) with what the reference says it must have done.
type queueModel struct {
	refQueue
	q *replayqueue.Queue[string, string]

	// What the queue actually did.
	log       []string // everything every connection was sent, in order
	remaining int      // successes left on the current connection; <0 unlimited
	dropped   []string
	cbMu      sync.Mutex // reply callbacks may run on timer goroutines
	callbacks []string   // reply callbacks, formatted
}

func (m *queueModel) send(v string) error {
	if m.remaining == 0 {
		return errBroken
	}
	if m.remaining > 0 {
		m.remaining--
	}
	m.log = append(m.log, v)
	return nil
}

func fmtReply(r replayqueue.Reply[string]) string {
	kind := "ok"
	switch {
	case r.Err == nil:
	case errors.Is(r.Err, replayqueue.ErrClosed):
		kind = "closed"
	case errors.Is(r.Err, replayqueue.ErrDisconnected):
		kind = "disconnected"
	case errors.Is(r.Err, replayqueue.ErrReplayTimeout):
		kind = "timeout"
	default:
		kind = "unexpected " + r.Err.Error()
	}
	return fmt.Sprintf("%s %s %s %q", r.Key, r.ID, kind, r.Value)
}

func (m *queueModel) size(s string) int { return len(s) }

func (m *queueModel) onReply(r replayqueue.Reply[string]) {
	m.cbMu.Lock()
	m.callbacks = append(m.callbacks, fmtReply(r))
	m.cbMu.Unlock()
}

func (m *refQueue) bufBytes() int {
	n := 0
	for _, s := range m.buf {
		n += len(s)
	}
	return n
}

func (m *refQueue) fits(n int) bool {
	return len(m.buf) < m.maxItems && (m.noBytes || m.bufBytes()+n <= m.maxBytes)
}

// failPending is the model of a connection going away with kind.
func (m *refQueue) failPending(kind string) {
	ids := make([]replayqueue.ReplayID, 0, len(m.pending))
	for id := range m.pending {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b replayqueue.ReplayID) int { return int(a.Seq) - int(b.Seq) })
	for _, id := range ids {
		m.wantCalls = append(m.wantCalls, fmt.Sprintf("%s %s %s %q", m.pending[id], id, kind, ""))
		delete(m.pending, id)
		m.answered = append(m.answered, id)
	}
}

func (m *refQueue) disconnect() {
	m.connected = false
	m.gen++
	m.failPending("disconnected")
}

func (m *queueModel) wantErr(t *rapid.T, op string, got, want error) {
	if want == nil && got != nil || want != nil && !errors.Is(got, want) {
		t.Fatalf("%s: error %v, want %v", op, got, want)
	}
}

// newItem draws a fresh item of 4 to 8 bytes.
func (m *queueModel) newItem(t *rapid.T) string {
	return fmt.Sprintf("m%03d", m.next) + strings.Repeat("+", rapid.IntRange(0, 4).Draw(t, "pad"))
}

func (m *queueModel) Send(t *rapid.T) {
	item := m.newItem(t)
	m.next++
	m.created = append(m.created, item)
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // only Block looks at it: it must give up at once
	sendOK := m.remaining != 0
	err := m.q.Send(ctx, item)

	var want error
	switch {
	case m.closed:
		want = replayqueue.ErrClosed
	case m.connected && sendOK:
		m.wantLog = append(m.wantLog, item)
	default:
		if m.connected { // the send fails: the queue disconnects
			m.disconnect()
		}
		n := len(item)
		switch {
		case n > m.maxBytes:
			want = replayqueue.ErrTooLarge
		case m.fits(n):
			m.buf = append(m.buf, item)
		case m.policy == replayqueue.RejectNew:
			want = replayqueue.ErrFull
		case m.policy == replayqueue.DropOldest:
			for !m.fits(n) {
				m.wantDrop = append(m.wantDrop, m.buf[0])
				m.buf = m.buf[1:]
			}
			m.buf = append(m.buf, item)
		case m.policy == replayqueue.Block:
			want = context.Canceled
		}
	}
	if want != nil {
		m.rejected = append(m.rejected, item)
	}
	m.wantErr(t, "Send("+item+")", err, want)
}

func (m *queueModel) Connect(t *rapid.T) {
	m.connect(t, rapid.IntRange(-1, len(m.replays)+len(m.buf)+2).Draw(t, "successes"))
}

// connect connects with a send function that succeeds successes times
// (<0: always) and checks the result against the model.
func (m *queueModel) connect(t *rapid.T, successes int) {
	m.remaining = successes
	remaining := successes
	gen, err := m.q.Connect(m.send)

	var want error
	switch {
	case m.closed:
		want = replayqueue.ErrClosed
	case m.connected:
		want = replayqueue.ErrConnected
	default:
		m.gen++
		if gen != m.gen {
			t.Fatalf("Connect returned generation %d, want %d", gen, m.gen)
		}
		want = errBroken
		ok := func() bool {
			for _, key := range m.replays {
				m.seq++
				id := replayqueue.ReplayID{Gen: m.gen, Seq: m.seq}
				m.pending[id] = key
				if remaining == 0 {
					return false
				}
				remaining--
				m.wantLog = append(m.wantLog, "r|"+key+"|"+id.String())
			}
			for len(m.buf) > 0 {
				if remaining == 0 {
					return false
				}
				remaining--
				m.wantLog = append(m.wantLog, m.buf[0])
				m.buf = m.buf[1:]
			}
			return true
		}()
		if ok {
			want = nil
			m.connected = true
		} else {
			m.disconnect()
		}
	}
	m.wantErr(t, "Connect", err, want)
}

// SendBlocked sends, under Block, an item that does not fit; the
// Send must block until a reconnect (then it is sent right after the
// flushed buffer) or a permanent failure (then it returns ErrClosed).
func (m *queueModel) SendBlocked(t *rapid.T) {
	item := m.newItem(t)
	if m.policy != replayqueue.Block || m.closed || m.connected || m.fits(len(item)) || len(item) > m.maxBytes {
		t.Skip("Send would not block")
	}
	m.next++
	m.created = append(m.created, item)
	done := make(chan error, 1)
	go func() { done <- m.q.Send(context.Background(), item) }()
	synctest.Wait()
	select {
	case err := <-done:
		t.Fatalf("Send into a full buffer returned %v instead of blocking", err)
	default:
	}
	if rapid.Bool().Draw(t, "fail") {
		m.Fail(t)
		if err := <-done; !errors.Is(err, replayqueue.ErrClosed) {
			t.Fatalf("blocked Send after Fail: %v", err)
		}
		m.rejected = append(m.rejected, item)
		return
	}
	m.connect(t, -1)
	if err := <-done; err != nil {
		t.Fatalf("blocked Send after Connect: %v", err)
	}
	m.wantLog = append(m.wantLog, item)
}

// Timeout lets the fake clock run past the replay timeout: every pending
// replay's callback receives ErrReplayTimeout.
func (m *queueModel) Timeout(t *rapid.T) {
	m.cbMu.Lock()
	n := len(m.callbacks)
	m.cbMu.Unlock()
	time.Sleep(modelReplayTimeout)
	synctest.Wait()
	wantN := len(m.wantCalls)
	m.failPending("timeout")
	// Timers fire on their own goroutines in no particular order.
	m.cbMu.Lock()
	slices.Sort(m.callbacks[n:])
	m.cbMu.Unlock()
	slices.Sort(m.wantCalls[wantN:])
}

func (m *queueModel) Disconnect(t *rapid.T) {
	ok := m.q.Disconnect(m.gen, errBroken)
	if ok != m.connected {
		t.Fatalf("Disconnect(current) = %v, connected %v", ok, m.connected)
	}
	if m.connected {
		m.disconnect()
	}
}

func (m *queueModel) DisconnectStale(t *rapid.T) {
	if m.gen == 0 {
		t.Skip("no older generation")
	}
	g := rapid.Uint64Range(0, m.gen-1).Draw(t, "gen")
	if m.q.Disconnect(g, errBroken) {
		t.Fatalf("Disconnect(stale %d) at generation %d reported true", g, m.gen)
	}
}

func (m *queueModel) BreakConnection(t *rapid.T) {
	m.remaining = 0 // the next send on this connection fails
}

var replayKeys = []string{"a", "b", "c", "d"}

func (m *queueModel) AddReplay(t *rapid.T) {
	key := rapid.SampledFrom(replayKeys).Draw(t, "key")
	err := m.q.AddReplay(key, func(id replayqueue.ReplayID) string { return "r|" + key + "|" + id.String() },
		m.onReply)
	var want error
	if m.closed {
		want = replayqueue.ErrClosed
	} else {
		m.replays = slices.DeleteFunc(m.replays, func(k string) bool { return k == key })
		m.replays = append(m.replays, key)
	}
	m.wantErr(t, "AddReplay", err, want)
}

func (m *queueModel) RemoveReplay(t *rapid.T) {
	key := rapid.SampledFrom(replayKeys).Draw(t, "key")
	had := slices.Contains(m.replays, key)
	if got := m.q.RemoveReplay(key); got != had {
		t.Fatalf("RemoveReplay(%s) = %v, want %v", key, got, had)
	}
	m.replays = slices.DeleteFunc(m.replays, func(k string) bool { return k == key })
}

func (m *queueModel) Reply(t *rapid.T) {
	if len(m.pending) == 0 {
		t.Skip("nothing pending")
	}
	ids := make([]replayqueue.ReplayID, 0, len(m.pending))
	for id := range m.pending {
		ids = append(ids, id)
	}
	slices.SortFunc(ids, func(a, b replayqueue.ReplayID) int { return int(a.Seq) - int(b.Seq) })
	id := rapid.SampledFrom(ids).Draw(t, "id")
	value := rapid.SampledFrom([]string{`"0x1"`, `{"error":"nope"}`}).Draw(t, "value")
	if !m.q.HandleReply(id.String(), value) {
		t.Fatalf("reply to pending %s was not consumed", id)
	}
	m.wantCalls = append(m.wantCalls, fmt.Sprintf("%s %s ok %q", m.pending[id], id, value))
	delete(m.pending, id)
	m.answered = append(m.answered, id)
}

func (m *queueModel) StaleReply(t *rapid.T) {
	if len(m.answered) == 0 {
		t.Skip("no answered id")
	}
	id := rapid.SampledFrom(m.answered).Draw(t, "id")
	if !m.q.HandleReply(id.String(), "late") {
		t.Fatalf("stale reply %s was not consumed", id)
	}
	m.stale++
}

func (m *queueModel) ClientReply(t *rapid.T) {
	id := rapid.SampledFrom([]string{"1", "0", "null", "steadfast", "m1", "a"}).Draw(t, "id")
	if m.q.HandleReply(id, "x") {
		t.Fatalf("client reply %q was consumed", id)
	}
}

func (m *queueModel) Fail(t *rapid.T) {
	got := m.q.Fail(errBroken)
	var want []string
	if !m.closed {
		want = m.buf
		m.handedBack = append(m.handedBack, m.buf...)
		m.buf = nil
		m.closed = true
		if m.connected {
			m.connected = false
			m.gen++
		}
		m.failPending("closed")
		m.replays = nil
	}
	if !slices.Equal(got, want) {
		t.Fatalf("Fail handed back %v, want %v", got, want)
	}
}

func (m *queueModel) Check(t *rapid.T) {
	st := m.q.Stats()
	wantBytes := m.bufBytes()
	if m.noBytes {
		wantBytes = 0 // nothing is sized without WithMaxBytes
	}
	if st.Buffered != len(m.buf) || st.Bytes != wantBytes {
		t.Fatalf("buffer: %d items %d bytes, model %v", st.Buffered, st.Bytes, m.buf)
	}
	if st.Buffered > m.maxItems || st.Bytes > m.maxBytes {
		t.Fatalf("bound exceeded: %d items (max %d), %d bytes (max %d)", st.Buffered, m.maxItems, st.Bytes, m.maxBytes)
	}
	if st.Generation != m.gen || m.q.Generation() != m.gen || m.q.Connected() != m.connected {
		t.Fatalf("generation %d connected %v, model %d %v", st.Generation, m.q.Connected(), m.gen, m.connected)
	}
	if (m.gen%2 == 1) != m.connected {
		t.Fatalf("generation %d parity disagrees with connected=%v", m.gen, m.connected)
	}
	if st.Pending != len(m.pending) || st.StaleReplies != m.stale || st.Dropped != uint64(len(m.wantDrop)) {
		t.Fatalf("stats %+v; model pending %d stale %d dropped %d", st, len(m.pending), m.stale, len(m.wantDrop))
	}
	if !slices.Equal(m.log, m.wantLog) {
		t.Fatalf("sent %v\nwant %v", m.log, m.wantLog)
	}
	if !slices.Equal(m.dropped, m.wantDrop) {
		t.Fatalf("dropped %v, want %v", m.dropped, m.wantDrop)
	}
	m.cbMu.Lock()
	calls := slices.Clone(m.callbacks)
	m.cbMu.Unlock()
	if !slices.Equal(calls, m.wantCalls) {
		t.Fatalf("reply callbacks %v\nwant %v", calls, m.wantCalls)
	}
	if keys := m.q.ReplayKeys(); !slices.Equal(keys, m.replays) && !(len(keys) == 0 && len(m.replays) == 0) {
		t.Fatalf("replay keys %v, want %v", keys, m.replays)
	}
	// Conservation: every item created is in exactly one place.
	where := map[string]int{}
	for _, s := range m.log {
		if strings.HasPrefix(s, "m") {
			where[s]++
		}
	}
	for _, list := range [][]string{m.buf, m.dropped, m.rejected, m.handedBack} {
		for _, s := range list {
			where[s]++
		}
	}
	for _, s := range m.created {
		if where[s] != 1 {
			t.Fatalf("item %s accounted for %d times (lost or duplicated)", s, where[s])
		}
	}
}

const modelReplayTimeout = time.Hour

// TestQueueMatchesModel runs random sequences of sends (connected,
// disconnected, into a full buffer under each overflow policy, blocking),
// connects that fail part-way, disconnects (current and stale), replay set
// changes, replies (pending, stale, client), replay timeouts on a fake
// clock, and permanent failure, checking after every step that the queue
// agrees with a plain model: the order on the wire is replay set, then
// buffer FIFO, then new items; every item is sent, buffered, rejected,
// reported dropped or handed back exactly once; the bounds always hold.
func TestQueueMatchesModel(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) { rapid.SyncTest(t, checkModel) })
}

func checkModel(t *rapid.T) {
	{
		m := &queueModel{refQueue: refQueue{
			policy:   rapid.SampledFrom([]replayqueue.Overflow{replayqueue.RejectNew, replayqueue.DropOldest, replayqueue.Block}).Draw(t, "policy"),
			maxItems: rapid.IntRange(1, 6).Draw(t, "maxItems"),
			maxBytes: rapid.IntRange(5, 30).Draw(t, "maxBytes"),
			pending:  map[replayqueue.ReplayID]string{},
		}, remaining: -1}
		byteBound := replayqueue.WithMaxBytes(m.maxBytes, m.size)
		if m.noBytes = rapid.Bool().Draw(t, "noBytes"); m.noBytes {
			m.maxBytes, byteBound = math.MaxInt, nil // New skips a nil Option
		}
		m.q = replayqueue.New[string, string](
			replayqueue.WithMaxItems[string](m.maxItems),
			byteBound,
			replayqueue.WithOverflow[string](m.policy),
			replayqueue.WithReplayTimeout[string](modelReplayTimeout),
			replayqueue.WithDropped(func(s string, reason error) {
				if !errors.Is(reason, replayqueue.ErrEvicted) {
					t.Fatalf("drop reason %v", reason)
				}
				m.dropped = append(m.dropped, s)
			}),
		)
		defer m.q.Fail(nil) // hands back, so nothing reaches the drop callback
		t.Repeat(map[string]func(*rapid.T){
			"":                m.Check,
			"Send":            m.Send,
			"Send2":           m.Send,
			"Connect":         m.Connect,
			"Disconnect":      m.Disconnect,
			"DisconnectStale": m.DisconnectStale,
			"BreakConnection": m.BreakConnection,
			"AddReplay":       m.AddReplay,
			"RemoveReplay":    m.RemoveReplay,
			"Reply":           m.Reply,
			"StaleReply":      m.StaleReply,
			"ClientReply":     m.ClientReply,
			"Fail":            m.Fail,
			"SendBlocked":     m.SendBlocked,
			"Timeout":         m.Timeout,
		})
	}
}
