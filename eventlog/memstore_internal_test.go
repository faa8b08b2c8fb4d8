package eventlog

import (
	"context"
	"testing"
)

// TestMemoryStoreSmallStreamsStaySmall: a server has many streams that hold
// only a few events. Each used to get a 16 KiB data chunk on its first
// append; the chunks now start small and grow with the stream, and a busy
// stream still reaches full-size chunks (amortized zero allocations).
func TestMemoryStoreSmallStreamsStaySmall(t *testing.T) {
	m := NewMemoryStore(Retention{})
	defer m.Close()
	ctx := context.Background()
	if _, err := m.Append(ctx, "small", "", []byte("hello")); err != nil {
		t.Fatal(err)
	}
	v, _ := m.streams.Load("small")
	if c := cap(v.(*memStream).arena); c > arenaInitial {
		t.Fatalf("one 5-byte event holds a %d-byte chunk, want at most %d", c, arenaInitial)
	}
	data := make([]byte, 100)
	for i := range 1000 {
		if _, err := m.Append(ctx, "busy", "", data); err != nil {
			t.Fatal(err)
		}
		if i == 999 {
			v, _ := m.streams.Load("busy")
			if c := cap(v.(*memStream).arena); c != arenaChunk {
				t.Fatalf("busy stream chunk %d bytes, want %d", c, arenaChunk)
			}
		}
	}
	// Data of events in earlier, smaller chunks is intact.
	evs, err := m.ReadAfter(ctx, "busy", Cursor{Seq: 0}, -1, nil)
	if err != nil || len(evs) != 1000 {
		t.Fatalf("ReadAfter: %d events, %v", len(evs), err)
	}
	for i, ev := range evs {
		if len(ev.Data) != 100 || cap(ev.Data) != 100 {
			t.Fatalf("event %d: len %d cap %d", i+1, len(ev.Data), cap(ev.Data))
		}
	}
}

// TestMemoryStoreDeleteFreesEvents: the reviewer's finding was that the
// memory store never forgot a stream, so a long-running server's memory grew
// with every session ever created. Delete drops the stream's ring and data
// chunks and leaves only the shared tombstone in the map.
func TestMemoryStoreDeleteFreesEvents(t *testing.T) {
	m := NewMemoryStore(Retention{})
	defer m.Close()
	ctx := context.Background()
	for i := range 100 {
		id := string(rune('a'+i%26)) + string(rune('0'+i/26))
		for range 50 {
			if _, err := m.Append(ctx, id, "", make([]byte, 64)); err != nil {
				t.Fatal(err)
			}
		}
		v, _ := m.streams.Load(id)
		st := v.(*memStream)
		if err := m.Delete(ctx, id); err != nil {
			t.Fatal(err)
		}
		if st.ring != nil || st.arena != nil || st.n != 0 {
			t.Fatalf("deleted stream %q still holds %d ring slots and a %d-byte chunk", id, len(st.ring), cap(st.arena))
		}
		if v, _ := m.streams.Load(id); v != tombstone {
			t.Fatalf("the map still points %q at its stream", id)
		}
	}
	n := 0
	m.streams.Range(func(_, v any) bool {
		if v != tombstone {
			n++
		}
		return true
	})
	if n != 0 {
		t.Fatalf("%d streams left after deleting every one", n)
	}
}
