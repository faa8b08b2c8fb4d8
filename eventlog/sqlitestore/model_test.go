package sqlitestore_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	"pgregory.net/rapid"

	"github.com/steadfast-go/steadfast/eventlog"
	"github.com/steadfast-go/steadfast/eventlog/sqlitestore"
)

type storeModel struct {
	path    string
	ret     eventlog.Retention
	s       *sqlitestore.Store
	epoch   string
	streams map[string]*modelStream
	ids     []string
	n       int
}

type modelStream struct {
	data    []string
	state   eventlog.State
	deleted bool
}

// isDeleted: the error of any operation on a deleted stream.
func isDeleted(err error) bool {
	return errors.Is(err, eventlog.ErrStreamDeleted) && errors.Is(err, eventlog.ErrUnknownStream)
}

func (m *storeModel) first(s *modelStream) uint64 {
	head := uint64(len(s.data))
	if max := uint64(m.ret.MaxEvents); head > max {
		return head - max + 1
	}
	return 1
}

// TestStoreModel drives a SQLite store with random appends, state changes,
// reads and restarts (close and reopen the file) and checks it against a
// plain model: a restart changes nothing, not even the epoch. To keep it
// fast, every check uses fresh stream ids in one database file.
func TestStoreModel(t *testing.T) {
	m := &storeModel{
		path: filepath.Join(t.TempDir(), "model.db"),
		ret:  eventlog.Retention{MaxEvents: 4},
	}
	var err error
	if m.s, err = sqlitestore.Open(m.path, sqlitestore.WithRetention(m.ret)); err != nil {
		t.Fatal(err)
	}
	defer func() { m.s.Close() }()
	m.epoch = epochOf(m.s)
	ctx := context.Background()
	run := 0
	rapid.Check(t, func(rt *rapid.T) {
		run++
		m.streams = map[string]*modelStream{}
		m.ids = []string{fmt.Sprintf("r%d-a", run), fmt.Sprintf("r%d-b", run)}
		ids := m.ids
		rt.Repeat(map[string]func(*rapid.T){
			"append": func(rt *rapid.T) {
				id := rapid.SampledFrom(ids).Draw(rt, "stream")
				m.n++
				data := fmt.Sprintf("%s#%d", id, m.n)
				seq, err := m.s.Append(ctx, id, "", []byte(data))
				st := m.streams[id]
				if st != nil && st.deleted {
					if !isDeleted(err) {
						rt.Fatalf("append to deleted: %v", err)
					}
					return
				}
				if st != nil && st.state == eventlog.Ended {
					if !errors.Is(err, eventlog.ErrStreamEnded) {
						rt.Fatalf("append to ended: %v", err)
					}
					return
				}
				if st == nil {
					st = &modelStream{state: eventlog.Created}
					m.streams[id] = st
				}
				st.data = append(st.data, data)
				if err != nil || seq.Seq != uint64(len(st.data)) || seq.Epoch != m.epoch {
					rt.Fatalf("Append = %v, %v; want %d", seq, err, len(st.data))
				}
			},
			"setState": func(rt *rapid.T) {
				id := rapid.SampledFrom(ids).Draw(rt, "stream")
				to := eventlog.State(rapid.IntRange(1, 6).Draw(rt, "state"))
				err := m.s.SetState(ctx, id, to)
				st := m.streams[id]
				if st != nil && st.deleted {
					if !isDeleted(err) {
						rt.Fatalf("SetState on deleted: %v", err)
					}
					return
				}
				if st != nil && st.state == eventlog.Ended && to != eventlog.Ended {
					if !errors.Is(err, eventlog.ErrStreamEnded) {
						rt.Fatalf("SetState on ended: %v", err)
					}
					return
				}
				if err != nil {
					rt.Fatal(err)
				}
				if st == nil {
					st = &modelStream{}
					m.streams[id] = st
				}
				st.state = to
			},
			"readAfter": func(rt *rapid.T) {
				id := rapid.SampledFrom(ids).Draw(rt, "stream")
				st := m.streams[id]
				var head uint64
				if st != nil {
					head = uint64(len(st.data))
				}
				after := rapid.Uint64Range(0, head+1).Draw(rt, "after")
				limit := rapid.IntRange(1, 8).Draw(rt, "limit")
				evs, err := m.s.ReadAfter(ctx, id, eventlog.Cursor{Seq: after}, limit, nil)
				switch {
				case st != nil && st.deleted:
					if !isDeleted(err) {
						rt.Fatalf("deleted: %v", err)
					}
				case st == nil:
					if !errors.Is(err, eventlog.ErrUnknownStream) {
						rt.Fatalf("unknown: %v", err)
					}
				case after > head:
					if !errors.Is(err, eventlog.ErrCursorAhead) {
						rt.Fatalf("ahead: %v", err)
					}
				case after+1 < m.first(st):
					if !errors.Is(err, eventlog.ErrCursorExpired) {
						rt.Fatalf("expired: %v", err)
					}
				default:
					if err != nil || len(evs) != int(min(head-after, uint64(limit))) {
						rt.Fatalf("ReadAfter(%d) = %d events, %v", after, len(evs), err)
					}
					for i, ev := range evs {
						if ev.Seq != after+1+uint64(i) || string(ev.Data) != st.data[ev.Seq-1] {
							rt.Fatalf("event %d = %d %q", i, ev.Seq, ev.Data)
						}
					}
				}
			},
			"delete": func(rt *rapid.T) {
				id := rapid.SampledFrom(ids).Draw(rt, "stream")
				if rapid.IntRange(0, 2).Draw(rt, "skipDelete") != 0 {
					return // rare, so streams live long enough
				}
				err := m.s.Delete(ctx, id)
				st := m.streams[id]
				switch {
				case st == nil:
					if !errors.Is(err, eventlog.ErrUnknownStream) || errors.Is(err, eventlog.ErrStreamDeleted) {
						rt.Fatalf("Delete(unknown): %v", err)
					}
				case st.deleted:
					if !isDeleted(err) {
						rt.Fatalf("Delete(deleted): %v", err)
					}
				default:
					if err != nil {
						rt.Fatal(err)
					}
					st.deleted, st.data = true, nil
				}
			},
			"restart": func(rt *rapid.T) {
				// A restart (close and reopen) costs more than all the other
				// actions together, most of all under -race; taking one in
				// three keeps several per sequence, between any actions,
				// and keeps the test fast.
				if rapid.IntRange(0, 2).Draw(rt, "skipRestart") != 0 {
					return
				}
				if err := m.s.Close(); err != nil {
					rt.Fatal(err)
				}
				if m.s, err = sqlitestore.Open(m.path, sqlitestore.WithRetention(m.ret)); err != nil {
					rt.Fatal(err)
				}
				if epochOf(m.s) != m.epoch {
					rt.Fatalf("epoch changed across restart")
				}
			},
			"": func(rt *rapid.T) {
				for _, id := range ids {
					st := m.streams[id]
					b, err := m.s.Bounds(ctx, id)
					first, head := b.First, b.Head
					state, serr := m.s.State(context.Background(), id)
					if st != nil && st.deleted {
						if !isDeleted(err) || !isDeleted(serr) {
							rt.Fatalf("deleted %q: %v, %v", id, err, serr)
						}
						continue
					}
					if st == nil {
						if !errors.Is(err, eventlog.ErrUnknownStream) || !errors.Is(serr, eventlog.ErrUnknownStream) {
							rt.Fatalf("unknown %q: %v, %v", id, err, serr)
						}
						continue
					}
					if err != nil || head != uint64(len(st.data)) || first != m.first(st) || serr != nil || state != st.state {
						rt.Fatalf("%q: Bounds %d,%d State %v (%v %v); model first %d head %d state %v",
							id, first, head, state, err, serr, m.first(st), len(st.data), st.state)
					}
				}
			},
		})
	})
}
