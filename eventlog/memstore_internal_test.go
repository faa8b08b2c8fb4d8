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
	evs, err := m.ReadAfter(ctx, "busy", 0, -1, nil)
	if err != nil || len(evs) != 1000 {
		t.Fatalf("ReadAfter: %d events, %v", len(evs), err)
	}
	for i, ev := range evs {
		if len(ev.Data) != 100 || cap(ev.Data) != 100 {
			t.Fatalf("event %d: len %d cap %d", i+1, len(ev.Data), cap(ev.Data))
		}
	}
}
