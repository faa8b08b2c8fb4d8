package storetest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"

	"pgregory.net/rapid"

	"github.com/steadfast-go/steadfast/eventlog"
)

// modelStream is the plain model of one stream: every event ever appended
// (seq = index+1) and its state.
type modelStream struct {
	data    []string
	state   eventlog.State
	deleted bool
}

// logModel drives one Log and checks every answer against plain streams.
// Each rapid case uses stream ids of its own (ids), so cases can share one
// store: opening a PostgreSQL database per case would be too slow.
type logModel struct {
	log       *eventlog.Log
	maxEvents int
	ids       []string // sorted
	streams   map[string]*modelStream
	counter   int
}

// modelAt returns the cursor of seq in the Log's current epoch.
func modelAt(t *rapid.T, l *eventlog.Log, seq uint64) eventlog.Cursor {
	return eventlog.Cursor{Epoch: modelEpoch(t, l), Seq: seq}
}

func modelEpoch(t *rapid.T, l *eventlog.Log) string {
	e, err := l.Epoch(context.Background())
	if err != nil {
		t.Fatalf("Epoch: %v", err)
	}
	return e
}

func (m *logModel) first(s *modelStream) uint64 {
	head := uint64(len(s.data))
	if head > uint64(m.maxEvents) {
		return head - uint64(m.maxEvents) + 1
	}
	return 1
}

func (m *logModel) expectEvents(t *rapid.T, got []eventlog.Event, s *modelStream, after uint64, n int) {
	if len(got) != n {
		t.Fatalf("got %d events after %d, want %d", len(got), after, n)
	}
	for i, ev := range got {
		want := after + 1 + uint64(i)
		if ev.Seq != want || string(ev.Data) != s.data[want-1] {
			t.Fatalf("event %d = {%d %q}, want {%d %q}", i, ev.Seq, ev.Data, want, s.data[want-1])
		}
	}
}

func (m *logModel) append(t *rapid.T) {
	id := rapid.SampledFrom(m.ids).Draw(t, "stream")
	m.counter++
	data := fmt.Sprintf("%s#%d", id, m.counter)
	cur, err := m.log.Append(context.Background(), id, []byte(data))
	s := m.streams[id]
	if s != nil && s.deleted {
		if !errors.Is(err, eventlog.ErrStreamDeleted) {
			t.Fatalf("Append to deleted %q: err %v", id, err)
		}
		return
	}
	if s != nil && s.state == eventlog.Ended {
		if !errors.Is(err, eventlog.ErrStreamEnded) {
			t.Fatalf("Append to ended %q: err %v", id, err)
		}
		return
	}
	if err != nil {
		t.Fatalf("Append(%q): %v", id, err)
	}
	if s == nil {
		s = &modelStream{state: eventlog.Created}
		m.streams[id] = s
	}
	s.data = append(s.data, data)
	if want := modelAt(t, m.log, uint64(len(s.data))); cur != want {
		t.Fatalf("Append(%q) = %v, want %v", id, cur, want)
	}
}

func (m *logModel) setState(t *rapid.T) {
	id := rapid.SampledFrom(m.ids).Draw(t, "stream")
	st := eventlog.State(rapid.IntRange(int(eventlog.Created), int(eventlog.Ended)).Draw(t, "state"))
	err := m.log.SetState(context.Background(), id, st)
	s := m.streams[id]
	if s != nil && s.deleted {
		if !errors.Is(err, eventlog.ErrStreamDeleted) {
			t.Fatalf("SetState(deleted %q): err %v", id, err)
		}
		return
	}
	if s != nil && s.state == eventlog.Ended && st != eventlog.Ended {
		if !errors.Is(err, eventlog.ErrStreamEnded) {
			t.Fatalf("SetState(%q, %v) on ended stream: err %v", id, st, err)
		}
		return
	}
	if err != nil {
		t.Fatalf("SetState(%q, %v): %v", id, st, err)
	}
	if s == nil {
		s = &modelStream{}
		m.streams[id] = s
	}
	s.state = st
}

func (m *logModel) readAfter(t *rapid.T) {
	id := rapid.SampledFrom(m.ids).Draw(t, "stream")
	s := m.streams[id]
	var head uint64
	if s != nil {
		head = uint64(len(s.data))
	}
	after := rapid.Uint64Range(0, head+2).Draw(t, "after")
	limit := rapid.IntRange(1, 12).Draw(t, "limit")
	got, err := m.log.ReadAfter(context.Background(), id, eventlog.Cursor{Seq: after}, limit)
	switch {
	case s != nil && s.deleted:
		if !errors.Is(err, eventlog.ErrStreamDeleted) || !errors.Is(err, eventlog.ErrUnknownStream) {
			t.Fatalf("ReadAfter(deleted %q) err %v", id, err)
		}
	case s == nil:
		if !errors.Is(err, eventlog.ErrUnknownStream) {
			t.Fatalf("ReadAfter(unknown %q) err %v", id, err)
		}
	case after > head:
		if !errors.Is(err, eventlog.ErrCursorAhead) {
			t.Fatalf("ReadAfter(%q, %d > head %d) err %v", id, after, head, err)
		}
	case after+1 < m.first(s):
		if !errors.Is(err, eventlog.ErrCursorExpired) {
			t.Fatalf("ReadAfter(%q, %d < first %d) err %v", id, after, m.first(s), err)
		}
	default:
		if err != nil {
			t.Fatalf("ReadAfter(%q, %d): %v", id, after, err)
		}
		m.expectEvents(t, got, s, after, int(min(head-after, uint64(limit))))
	}
}

func (m *logModel) replay(t *rapid.T) {
	id := rapid.SampledFrom(m.ids).Draw(t, "stream")
	s := m.streams[id]
	var head uint64
	if s != nil {
		head = uint64(len(s.data))
	}
	epoch := rapid.SampledFrom([]string{modelEpoch(t, m.log), "stale0epoch", ""}).Draw(t, "epoch")
	from := eventlog.Cursor{Epoch: epoch, Seq: rapid.Uint64Range(0, head+2).Draw(t, "seq")}
	gapCap := rapid.IntRange(1, 10).Draw(t, "cap")
	res, err := m.log.Replay(context.Background(), id, from, gapCap)
	headC := modelAt(t, m.log, head)
	if s != nil && s.deleted {
		if !errors.Is(err, eventlog.ErrStreamDeleted) {
			t.Fatalf("Replay(deleted %q) err %v", id, err)
		}
		return
	}
	if s == nil {
		if !errors.Is(err, eventlog.ErrUnknownStream) {
			t.Fatalf("Replay(unknown %q) err %v", id, err)
		}
		return
	}
	if !from.IsZero() && from.Epoch != modelEpoch(t, m.log) {
		if err != nil || res.Outcome != eventlog.Unrecoverable || res.Reason != eventlog.WrongEpoch || res.Resume != headC {
			t.Fatalf("Replay(%v) = %+v, %v; want Unrecoverable/WrongEpoch", from, res, err)
		}
		return
	}
	if from.Seq > head {
		if !errors.Is(err, eventlog.ErrCursorAhead) {
			t.Fatalf("Replay(%v, head %d) err %v; want ErrCursorAhead", from, head, err)
		}
		return
	}
	if err != nil {
		t.Fatalf("Replay(%v): %v", from, err)
	}
	m.checkReplay(t, s, from, gapCap, res)
}

// checkReplay checks a successful Replay of s from a cursor of this epoch.
func (m *logModel) checkReplay(t *rapid.T, s *modelStream, from eventlog.Cursor, gapCap int, res eventlog.Result) {
	head := uint64(len(s.data))
	headC := modelAt(t, m.log, head)
	if res.Head != headC || res.Resume != headC {
		if !(res.Outcome == eventlog.Events && res.Resume.Seq == from.Seq+uint64(len(res.Events))) {
			t.Fatalf("Replay(%v) head/resume = %v/%v, head is %v", from, res.Head, res.Resume, headC)
		}
	}
	gap := head - from.Seq
	switch {
	case gap > uint64(gapCap):
		if res.Outcome != eventlog.SkippedToHead || res.Gap != gap {
			t.Fatalf("Replay(%v, cap %d, head %d) = %v gap %d; want SkippedToHead gap %d", from, gapCap, head, res.Outcome, res.Gap, gap)
		}
	case gap > 0 && from.Seq+1 < m.first(s):
		if res.Outcome != eventlog.Unrecoverable || res.Reason != eventlog.Expired {
			t.Fatalf("Replay(%v, first %d) = %+v; want Unrecoverable/Expired", from, m.first(s), res)
		}
	default:
		if res.Outcome != eventlog.Events {
			t.Fatalf("Replay(%v) = %v; want Events", from, res.Outcome)
		}
		m.expectEvents(t, res.Events, s, from.Seq, int(gap))
	}
}

func (m *logModel) check(t *rapid.T) {
	for _, id := range m.ids {
		s := m.streams[id]
		head, err := m.log.Head(context.Background(), id)
		st, serr := m.log.State(context.Background(), id)
		if s != nil && s.deleted {
			if !errors.Is(err, eventlog.ErrStreamDeleted) || !errors.Is(serr, eventlog.ErrStreamDeleted) {
				t.Fatalf("Head/State(deleted %q) = %v, %v", id, err, serr)
			}
			continue
		}
		if s == nil {
			if !errors.Is(err, eventlog.ErrUnknownStream) || !errors.Is(serr, eventlog.ErrUnknownStream) {
				t.Fatalf("Head/State(unknown %q) = %v, %v", id, err, serr)
			}
			continue
		}
		if err != nil || head != modelAt(t, m.log, uint64(len(s.data))) {
			t.Fatalf("Head(%q) = %v, %v; want seq %d", id, head, err, len(s.data))
		}
		if serr != nil || st != s.state {
			t.Fatalf("State(%q) = %v, %v; want %v", id, st, serr, s.state)
		}
		if o, err := m.log.Oldest(context.Background(), id); err != nil || o != m.first(s) {
			t.Fatalf("Oldest(%q) = %d, %v; want %d", id, o, err, m.first(s))
		}
	}
	var want []eventlog.StreamInfo
	for _, id := range m.ids { // sorted
		if s := m.streams[id]; s != nil && !s.deleted {
			want = append(want, eventlog.StreamInfo{ID: id, State: s.state})
		}
	}
	all, err := m.log.Streams(context.Background(), nil)
	var got []eventlog.StreamInfo
	for _, si := range all {
		if slices.Contains(m.ids, si.ID) {
			got = append(got, si)
		}
	}
	if err != nil || !slices.Equal(got, want) {
		t.Fatalf("Streams = %v, %v; want %v", got, err, want)
	}
}

// deleteStream deletes a stream: rare, so that streams live long enough to
// exercise the rest.
func (m *logModel) deleteStream(t *rapid.T) {
	id := rapid.SampledFrom(m.ids).Draw(t, "stream")
	if !rapid.Bool().Draw(t, "really") || !rapid.Bool().Draw(t, "really2") {
		return
	}
	err := m.log.Delete(context.Background(), id)
	s := m.streams[id]
	switch {
	case s == nil:
		if !errors.Is(err, eventlog.ErrUnknownStream) || errors.Is(err, eventlog.ErrStreamDeleted) {
			t.Fatalf("Delete(unknown %q) err %v", id, err)
		}
	case s.deleted:
		if !errors.Is(err, eventlog.ErrStreamDeleted) {
			t.Fatalf("Delete(deleted %q) err %v", id, err)
		}
	default:
		if err != nil {
			t.Fatalf("Delete(%q): %v", id, err)
		}
		s.deleted = true
		s.data = nil
	}
}

// testModel drives a Log on the store with random appends, state changes,
// reads, replays (cursors from this epoch, stale epochs, far behind, at and
// past head, before retention) and deletes, and checks every answer against
// a plain model of the streams.
func testModel(t *testing.T, f Factory) {
	sizes := []int{1, 3, 12}
	logs := map[int]*eventlog.Log{}
	for _, n := range sizes {
		l := eventlog.New(eventlog.WithStore(open(t, f, eventlog.Retention{MaxEvents: n})))
		t.Cleanup(func() { l.Close() })
		logs[n] = l
	}
	cases := 0
	rapid.Check(t, func(t *rapid.T) {
		cases++
		maxEvents := rapid.SampledFrom(sizes).Draw(t, "maxEvents")
		p := fmt.Sprintf("m%d-", cases)
		m := &logModel{
			log:       logs[maxEvents],
			maxEvents: maxEvents,
			ids:       []string{p + "a", p + "b", p + "c"},
			streams:   map[string]*modelStream{},
		}
		t.Repeat(map[string]func(*rapid.T){
			"append":    m.append,
			"setState":  m.setState,
			"readAfter": m.readAfter,
			"replay":    m.replay,
			"delete":    m.deleteStream,
			"":          m.check,
		})
	})
}
