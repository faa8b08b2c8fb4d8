package sendqueue

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"sync"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"pgregory.net/rapid"
)

// stepSink is a send function driven one attempt at a time by the test:
// each call parks until the test hands it an outcome (or its context ends).
type stepSink struct {
	mu       sync.Mutex
	pending  *Item[int]     // the attempt waiting for an outcome
	attempts []string       // key of every attempt, in order
	okAt     map[string]int // attempt index at which a key succeeded
	executed map[string]int // executions by a server that dedupes by key
	reply    chan error
}

func newStepSink() *stepSink {
	return &stepSink{okAt: map[string]int{}, executed: map[string]int{}, reply: make(chan error)}
}

func (s *stepSink) send(ctx context.Context, it Item[int]) error {
	s.mu.Lock()
	s.pending = &it
	s.attempts = append(s.attempts, it.Key)
	s.mu.Unlock()
	var err error
	select {
	case err = <-s.reply:
	case <-ctx.Done():
		err = ctx.Err()
	}
	s.mu.Lock()
	s.pending = nil
	s.mu.Unlock()
	return err
}

// outcome of one attempt, as the test decides it.
type outcome int

const (
	okReply  outcome = iota // executed, response received
	lostResp                // executed, response lost (looks like a network error)
	retryErr                // not executed, 503
	dropErr                 // not executed, 400
	pauseErr                // not executed, connection down
)

func (o outcome) err() error {
	switch o {
	case lostResp:
		return &net.OpError{Op: "read", Net: "tcp", Err: syscall.ECONNRESET}
	case retryErr:
		return &HTTPError{StatusCode: 503}
	case dropErr:
		return &HTTPError{StatusCode: 400}
	case pauseErr:
		return fmt.Errorf("post: %w", ErrDisconnected)
	}
	return nil
}

type constBackOff struct{ d time.Duration }

func (b constBackOff) NextBackOff() time.Duration { return b.d }
func (constBackOff) Reset()                       {}

const modelBackOff = time.Second

type loopState int

const (
	idle loopState = iota
	sending
	backingOff
)

type mItem struct {
	key      string
	policy   Policy
	size     int
	attempts int
	ticket   *Ticket
}

type mReport struct {
	key    string
	reason error
}

// refQueue is the reference: the documented behaviour of a Queue (see the
// package doc and Push, Pause, Resume, Close) as a slice of items and a few
// flags. It has no goroutines, channels, clocks or real queue; each method
// is one documented transition.
type refQueue struct {
	capacity    int
	maxBytes    int64
	overflow    Overflow
	maxAttempts int

	queue        []*mItem // queued items, head first
	bytes        int64
	state        loopState
	paused       bool
	resumedInFlt bool // Resume called while an attempt was in flight
	closed       bool
	delivered    []string // keys, in delivery order
	wantReports  []mReport
	pushed       []*mItem // every accepted item, in push order
	settled      map[string]error
}

// queueModel drives the real queue and the reference side by side: each
// action applies an operation to both and Check compares what the queue
// shows (lengths, tickets, reports, the sink's attempts) with the
// reference.
type queueModel struct {
	refQueue
	q    *Queue[int]
	sink *stepSink

	repMu   sync.Mutex
	reports []Report[int] // what the queue reported
	next    int
}

func newQueueModel(t *rapid.T) *queueModel {
	m := &queueModel{sink: newStepSink(), refQueue: refQueue{
		capacity:    rapid.IntRange(1, 5).Draw(t, "capacity"),
		overflow:    Overflow(rapid.IntRange(0, 1).Draw(t, "overflow")),
		maxAttempts: rapid.SampledFrom([]int{0, 0, 1, 2, 3}).Draw(t, "maxAttempts"),
		settled:     map[string]error{},
	}}
	opts := []Option[int]{
		WithCapacity[int](m.capacity),
		WithOverflow[int](m.overflow),
		WithMaxAttempts[int](m.maxAttempts),
		WithBackOff[int](constBackOff{modelBackOff}),
		WithReport(func(r Report[int]) {
			m.repMu.Lock()
			m.reports = append(m.reports, r)
			m.repMu.Unlock()
		}),
	}
	if rapid.Bool().Draw(t, "byteCap") {
		m.maxBytes = int64(rapid.IntRange(5, 20).Draw(t, "maxBytes"))
		opts = append(opts, WithMaxBytes(m.maxBytes, func(v int) int { return v }))
	}
	m.q = New(m.sink.send, opts...)
	return m
}

func (m *refQueue) inFlight() *mItem {
	if m.state == sending {
		return m.queue[0]
	}
	return nil
}

// admit is Push's decision: the error it must return for an item of size,
// or the Retry items (oldest first, never the one in flight) that
// DropOldest evicts to make room.
func (m *refQueue) admit(size int) (victims []*mItem, want error) {
	switch {
	case m.closed:
		return nil, ErrClosed // whatever the item
	case m.maxBytes > 0 && int64(size) > m.maxBytes:
		return nil, ErrTooLarge
	case len(m.queue) < m.capacity && (m.maxBytes == 0 || m.bytes+int64(size) <= m.maxBytes):
		return nil, nil
	case m.overflow == RejectNew:
		return nil, ErrFull
	}
	needN := len(m.queue) + 1 - m.capacity
	needB := int64(0)
	if m.maxBytes > 0 {
		needB = m.bytes + int64(size) - m.maxBytes
	}
	for _, it := range m.queue {
		if needN <= 0 && needB <= 0 {
			break
		}
		if it == m.inFlight() || it.policy != Retry {
			continue
		}
		victims = append(victims, it)
		needN--
		needB -= int64(it.size)
	}
	if needN > 0 || needB > 0 {
		return nil, ErrFull
	}
	return victims, nil
}

// accept queues an accepted item after evicting victims.
func (m *refQueue) accept(it *mItem, victims []*mItem) {
	for _, v := range victims {
		m.remove(v)
		m.fail(v, ErrEvicted)
	}
	m.queue = append(m.queue, it)
	m.bytes += int64(it.size)
	m.pushed = append(m.pushed, it)
	m.kick()
}

// kick moves an idle, runnable loop to sending, as the real loop does.
func (m *refQueue) kick() {
	if m.state == idle && !m.paused && !m.closed && len(m.queue) > 0 {
		m.state = sending
	}
}

func (m *queueModel) Push(t *rapid.T) {
	policy := Policy(rapid.IntRange(0, 1).Draw(t, "policy"))
	key := ""
	if rapid.Bool().Draw(t, "ownKey") {
		key = fmt.Sprintf("own-%d", m.next)
	}
	m.next++
	size := rapid.IntRange(0, 8).Draw(t, "size")
	msize := size // what the queue measures: nothing without a byte cap
	if m.maxBytes == 0 {
		msize = 0
	}
	tk, err := m.q.Push(Item[int]{Key: key, Policy: policy, Value: size})
	synctest.Wait()

	victims, want := m.admit(size)
	if !errors.Is(err, want) || (want == nil) != (err == nil) {
		t.Fatalf("Push: got error %v, want %v", err, want)
	}
	if err != nil {
		if tk != nil {
			t.Fatalf("Push failed with %v but returned a ticket", err)
		}
		return
	}
	if key != "" && tk.Key() != key {
		t.Fatalf("ticket key %q, want the caller's %q", tk.Key(), key)
	}
	if tk.Key() == "" {
		t.Fatalf("no key generated")
	}
	m.accept(&mItem{key: tk.Key(), policy: policy, size: msize, ticket: tk}, victims)
}

func (m *refQueue) remove(it *mItem) {
	i := slices.Index(m.queue, it)
	m.queue = slices.Delete(m.queue, i, i+1)
	m.bytes -= int64(it.size)
}

func (m *refQueue) fail(it *mItem, reason error) {
	m.wantReports = append(m.wantReports, mReport{it.key, reason})
	m.settled[it.key] = reason
}

func (m *queueModel) Reply(t *rapid.T) {
	if m.state != sending {
		t.Skip("nothing in flight")
	}
	o := outcome(rapid.IntRange(0, 4).Draw(t, "outcome"))
	head := m.queue[0]
	m.sink.mu.Lock()
	if o == okReply || o == lostResp {
		m.sink.executed[head.key]++
	}
	if o == okReply {
		m.sink.okAt[head.key] = len(m.sink.attempts) - 1
	}
	m.sink.mu.Unlock()
	m.sink.reply <- o.err()
	synctest.Wait()

	m.reply(o)
}

// reply applies the outcome of the attempt in flight: delivered, dropped,
// given up (fire-and-forget, or out of attempts), paused, or retried after
// the back-off (at once if Resume came during the attempt).
func (m *refQueue) reply(o outcome) {
	head := m.queue[0]
	head.attempts++
	resumed := m.resumedInFlt
	m.resumedInFlt = false
	m.state = idle
	var reason error
	switch {
	case o == okReply:
		m.remove(head)
		m.delivered = append(m.delivered, head.key)
		m.settled[head.key] = nil
		m.kick()
		return
	case o == dropErr:
		reason = ErrDropped
	case head.policy == FireAndForget:
		reason = ErrGaveUp
	case m.maxAttempts > 0 && head.attempts >= m.maxAttempts:
		reason = ErrGaveUp
	}
	if o == pauseErr && !resumed {
		m.paused = true
	}
	if reason != nil {
		m.remove(head)
		m.fail(head, reason)
		m.kick()
		return
	}
	if o == pauseErr || resumed {
		m.kick() // paused: stays idle; resumed meanwhile: retries at once
		return
	}
	m.state = backingOff
}

func (m *queueModel) Wait(t *rapid.T) {
	if m.state != backingOff {
		t.Skip("not backing off")
	}
	time.Sleep(modelBackOff)
	synctest.Wait()
	m.backOffEnded()
}

// backOffEnded retries the head.
func (m *refQueue) backOffEnded() {
	m.state = idle
	m.kick()
}

func (m *queueModel) Pause(t *rapid.T) {
	m.q.Pause()
	synctest.Wait()
	m.pause()
}

// pause stops delivery after the attempt in flight (a closed queue ignores it).
func (m *refQueue) pause() {
	if !m.closed {
		m.paused = true
	}
}

func (m *queueModel) Resume(t *rapid.T) {
	m.q.Resume()
	synctest.Wait()
	m.resume()
}

// resume restarts delivery; it cuts a back-off short, and an attempt in
// flight that fails with a pause error retries at once instead of pausing.
func (m *refQueue) resume() {
	if m.closed {
		return
	}
	m.paused = false
	switch m.state {
	case sending:
		m.resumedInFlt = true
	case backingOff:
		m.state = idle // Resume cuts the back-off short
	}
	m.kick()
}

func (m *queueModel) Close(t *rapid.T) {
	if m.closed {
		if err := m.q.Close(); err != nil {
			t.Fatalf("second Close: %v", err)
		}
		return
	}
	if rapid.IntRange(0, 3).Draw(t, "closeNow") != 0 {
		t.Skip("Close is rare")
	}
	m.close(t)
}

func (m *queueModel) close(t rapid.TB) {
	err := m.q.Close()
	synctest.Wait()
	if err != nil {
		t.Fatalf("Close: %v", err)
	}
	m.closeRef()
}

// closeRef is Close: the attempt in flight is canceled (a Retry item stays
// and is reported with the rest; one that cannot be retried gave up), and
// every queued item is reported with ErrClosed.
func (m *refQueue) closeRef() {
	if m.state == sending {
		// Close canceled the attempt: context.Canceled is classified
		// Retry, so a Retry item stays queued (and is reported below)
		// and a FireAndForget one (or one out of attempts) gave up.
		head := m.queue[0]
		head.attempts++
		if head.policy == FireAndForget || (m.maxAttempts > 0 && head.attempts >= m.maxAttempts) {
			m.remove(head)
			m.fail(head, ErrGaveUp)
		}
	}
	for _, it := range m.queue {
		m.fail(it, ErrClosed)
	}
	m.queue, m.bytes, m.state, m.closed = nil, 0, idle, true
}

func (m *queueModel) Check(t *rapid.T) {
	if n := m.q.Len(); n != len(m.queue) || n > m.capacity {
		t.Fatalf("Len %d, model %d, cap %d", n, len(m.queue), m.capacity)
	}
	if b := m.q.Bytes(); b != m.bytes || (m.maxBytes > 0 && b > m.maxBytes) {
		t.Fatalf("Bytes %d, model %d, max %d", b, m.bytes, m.maxBytes)
	}
	if m.q.Paused() != m.paused && !m.closed {
		t.Fatalf("Paused %v, model %v", m.q.Paused(), m.paused)
	}
	m.sink.mu.Lock()
	pending := m.sink.pending
	attempts := slices.Clone(m.sink.attempts)
	executed := m.sink.executed
	m.sink.mu.Unlock()
	if (pending != nil) != (m.state == sending) {
		t.Fatalf("in flight %v, model state %v", pending != nil, m.state)
	}
	if pending != nil && pending.Key != m.queue[0].key {
		t.Fatalf("sending %q, but the head is %q: FIFO broken", pending.Key, m.queue[0].key)
	}

	// Delivered order is push order restricted to delivered items.
	var fifo []string
	for _, it := range m.pushed {
		if err, ok := m.settled[it.key]; ok && err == nil {
			fifo = append(fifo, it.key)
		}
	}
	if !slices.Equal(fifo, m.delivered) {
		t.Fatalf("delivery order %v, push order of delivered %v", m.delivered, fifo)
	}
	// At most once per successful attempt: no key is attempted again after
	// the attempt that succeeded. Exactly once with a deduplicating
	// receiver: every attempt carried the item's own key (checked above for
	// the attempt in flight), so a lost response followed by a retry is
	// executed once; a receiver keyed on it ran each delivered item once.
	for i, k := range attempts {
		if at, ok := m.sink.okAt[k]; ok && i > at {
			t.Fatalf("key %q attempted again (attempt %d) after it was delivered (attempt %d)", k, i, at)
		}
	}
	for _, k := range m.delivered {
		if executed[k] < 1 {
			t.Fatalf("delivered %q was never executed", k)
		}
	}

	// Reports: exactly the model's, in order, with the right reasons.
	m.repMu.Lock()
	reports := slices.Clone(m.reports)
	m.repMu.Unlock()
	if len(reports) != len(m.wantReports) {
		t.Fatalf("%d reports, want %d", len(reports), len(m.wantReports))
	}
	for i, r := range reports {
		w := m.wantReports[i]
		if r.Item.Key != w.key || !errors.Is(r.Err, w.reason) {
			t.Fatalf("report %d: %q %v, want %q %v", i, r.Item.Key, r.Err, w.key, w.reason)
		}
	}

	// Conservation: every accepted item is delivered, queued or reported,
	// and its ticket agrees.
	keys := map[string]bool{}
	for _, it := range m.pushed {
		if keys[it.key] {
			t.Fatalf("duplicate key %q", it.key)
		}
		keys[it.key] = true
		reason, done := m.settled[it.key]
		queued := slices.Contains(m.queue, it)
		switch {
		case done && queued, !done && !queued:
			t.Fatalf("item %q: settled %v, queued %v", it.key, done, queued)
		case !done:
			if st := it.ticket.Status(); st != Pending {
				t.Fatalf("queued item %q has status %v", it.key, st)
			}
		case reason == nil:
			if st := it.ticket.Status(); st != Delivered || it.ticket.Err() != nil {
				t.Fatalf("delivered item %q: %v %v", it.key, st, it.ticket.Err())
			}
		default:
			if st := it.ticket.Status(); st != Failed || !errors.Is(it.ticket.Err(), reason) {
				t.Fatalf("failed item %q: %v %v, want %v", it.key, st, it.ticket.Err(), reason)
			}
			select {
			case <-it.ticket.Done():
			default:
				t.Fatalf("failed item %q: Done not closed", it.key)
			}
		}
	}
}

func TestModel(t *testing.T) {
	rapid.Check(t, func(rt *rapid.T) {
		rapid.SyncTest(rt, func(rt *rapid.T) {
			m := newQueueModel(rt)
			defer func() {
				if !m.closed {
					m.close(rt)
				}
			}()
			rt.Repeat(rapid.StateMachineActions(m))
		})
	})
}
