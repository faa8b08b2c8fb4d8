package wire

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"go.uber.org/goleak"
	"pgregory.net/rapid"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestAppendEventFrames(t *testing.T) {
	cases := []struct {
		name string
		ev   Event
		want string
	}{
		{"data only", Event{Data: "hi"}, "data: hi\n\n"},
		{"empty data", Event{}, "data: \n\n"},
		{"all fields", Event{ID: "ep:7", Type: "delta", Data: `{"a":1}`, Retry: 1500}, "retry: 1500\nid: ep:7\nevent: delta\ndata: {\"a\":1}\n\n"},
		{"multi-line LF", Event{Data: "a\nb\n"}, "data: a\ndata: b\ndata: \n\n"},
		{"multi-line CRLF and CR", Event{Data: "a\r\nb\rc"}, "data: a\ndata: b\ndata: c\n\n"},
		{"leading space kept", Event{Data: " x"}, "data:  x\n\n"},
		{"colon in data", Event{Data: "k: v"}, "data: k: v\n\n"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := AppendEvent(nil, tc.ev)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestAppendEventRefusesUnframeableFields(t *testing.T) {
	for _, ev := range []Event{{ID: "a\nb"}, {ID: "a\rb"}, {ID: "a\x00b"}, {Type: "x\ny"}, {Type: "x\r"}, {ID: "a\nb", Retry: 5}} {
		dst := []byte("keep")
		got, err := AppendEvent(dst, ev)
		if !errors.Is(err, ErrInvalidField) {
			t.Errorf("%+v: err = %v, want ErrInvalidField", ev, err)
		}
		if string(got) != "keep" {
			t.Errorf("%+v: dst changed to %q", ev, got)
		}
	}
}

func TestAppendComment(t *testing.T) {
	if got := string(AppendComment(nil, "hb")); got != ":hb\n\n" {
		t.Fatalf("got %q", got)
	}
	if got := string(AppendComment(nil, "a\r\nb")); got != ":a\n:b\n\n" {
		t.Fatalf("got %q", got)
	}
	// A comment dispatches nothing.
	r := NewReader(strings.NewReader(":a\n:b\n\n"), 0)
	if ev, err := r.Next(); err != io.EOF {
		t.Fatalf("comment produced %+v, %v", ev, err)
	}
}

// The parsing examples of the WHATWG standard, and its corner cases.
func TestReaderFollowsTheStandard(t *testing.T) {
	in := ": test stream\n\n" +
		"data: first event\nid: 1\n\n" +
		"data:second event\nid\n\n" +
		"data:  third event\n\n" +
		"event: add\ndata: 73857293\r\n\r\n" +
		"data\r\rdata\rdata\r\r" +
		"id: x\x00y\ndata: nul id ignored\n\n" +
		"retry: 250\ndata: r\n\n" +
		"retry: 25x\nevent: no data\n\n" +
		"data: unterminated"
	want := []Event{
		{ID: "1", Data: "first event"},
		{ID: "", Data: "second event"},
		{ID: "", Data: " third event"},
		{Type: "add", Data: "73857293"},
		{Data: ""},
		{Data: "\n"},
		{Data: "nul id ignored"},
		{Data: "r", Retry: 250},
	}
	r := NewReader(strings.NewReader(in), 0)
	for i, w := range want {
		got, err := r.Next()
		if err != nil {
			t.Fatalf("event %d: %v", i, err)
		}
		if got != w {
			t.Fatalf("event %d: got %+v, want %+v", i, got, w)
		}
	}
	if ev, err := r.Next(); err != io.EOF {
		t.Fatalf("after the last event: %+v, %v (the unterminated event must be discarded)", ev, err)
	}
}

func TestReaderLimit(t *testing.T) {
	r := NewReader(strings.NewReader("data: "+strings.Repeat("x", 100)+"\n\n"), 50)
	if _, err := r.Next(); !errors.Is(err, ErrTooLong) {
		t.Fatalf("err = %v, want ErrTooLong", err)
	}
	r = NewReader(strings.NewReader(strings.Repeat("data: 0123456789\n", 10)+"\n"), 50)
	if _, err := r.Next(); !errors.Is(err, ErrTooLong) {
		t.Fatalf("many lines: err = %v, want ErrTooLong", err)
	}
}

// roundTrip writes evs and reads them back.
func roundTrip(t interface{ Fatalf(string, ...any) }, evs []Event) []Event {
	var buf []byte
	for _, ev := range evs {
		var err error
		if buf, err = AppendEvent(buf, ev); err != nil {
			t.Fatalf("AppendEvent(%+v): %v", ev, err)
		}
	}
	r := NewReader(bytes.NewReader(buf), len(buf)+1)
	var out []Event
	for {
		ev, err := r.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("Next: %v", err)
		}
		out = append(out, ev)
	}
}

// expected is what a reader sees for written events: normalized data, and
// the id carried forward from the last event that had one.
func expected(evs []Event) []Event {
	var out []Event
	last := ""
	for _, ev := range evs {
		if ev.ID != "" {
			last = ev.ID
		}
		out = append(out, Event{ID: last, Type: ev.Type, Data: NormalizeData(ev.Data), Retry: ev.Retry})
	}
	return out
}

// Property: any sequence of valid events survives writing and parsing.
func TestRoundTripProperty(t *testing.T) {
	field := rapid.StringMatching(`[a-z0-9:_-]{0,12}`)
	data := rapid.StringOf(rapid.SampledFrom([]rune{'a', 'b', ' ', ':', '\n', '\r', 'é', '{', '"'}))
	rapid.Check(t, func(t *rapid.T) {
		n := rapid.IntRange(0, 8).Draw(t, "n")
		evs := make([]Event, n)
		for i := range evs {
			evs[i] = Event{
				ID: field.Draw(t, "id"), Type: field.Draw(t, "type"), Data: data.Draw(t, "data"),
				Retry: rapid.IntRange(0, 100000).Draw(t, "retry"),
			}
		}
		got, want := roundTrip(t, evs), expected(evs)
		if len(got) != len(want) {
			t.Fatalf("got %d events, want %d", len(got), len(want))
		}
		for i := range got {
			if got[i] != want[i] {
				t.Fatalf("event %d: got %+v, want %+v", i, got[i], want[i])
			}
		}
	})
}

// FuzzFrameWriter: whatever the fields, the writer either refuses them with
// ErrInvalidField or writes exactly one event that parses back to them.
func FuzzFrameWriter(f *testing.F) {
	f.Add("ep:1", "delta", "hello", 0)
	f.Add("", "", "a\nb\r\nc\rd", 1000)
	f.Add("x\ny", "t", "", 0)
	f.Add("id", "e\rv", "data: nested\n\nframe", 0)
	f.Add("a\x00", "", ":comment", 5)
	f.Fuzz(func(t *testing.T, id, typ, data string, retry int) {
		if retry < 0 || retry >= 1<<30 {
			retry = 0
		}
		ev := Event{ID: id, Type: typ, Data: data, Retry: retry}
		buf, err := AppendEvent(nil, ev)
		if err != nil {
			if !errors.Is(err, ErrInvalidField) {
				t.Fatalf("unexpected error %v", err)
			}
			if validID(id) && validType(typ) {
				t.Fatalf("refused valid fields: %v", err)
			}
			return
		}
		if !validID(id) || !validType(typ) {
			t.Fatalf("wrote unframeable fields %q %q", id, typ)
		}
		r := NewReader(bytes.NewReader(buf), len(buf)+1)
		got, err := r.Next()
		if err != nil {
			t.Fatalf("written frame %q does not parse: %v", buf, err)
		}
		if want := expected([]Event{ev})[0]; got != want {
			t.Fatalf("frame %q parsed as %+v, want %+v", buf, got, want)
		}
		if ev, err := r.Next(); err != io.EOF {
			t.Fatalf("one event wrote more: %+v, %v", ev, err)
		}
	})
}

// FuzzReader: the parser never panics, and what it parses survives
// re-encoding unchanged.
func FuzzReader(f *testing.F) {
	f.Add([]byte("id: 1\nevent: a\ndata: x\n\n"))
	f.Add([]byte(": c\r\ndata\r\rretry: 9\ndata: y\n\n"))
	f.Add([]byte("data: a\ndata: b\n\nid: \x00\ndata: z\n\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		r := NewReader(bytes.NewReader(in), 4096)
		var evs []Event
		for {
			ev, err := r.Next()
			if err != nil {
				break
			}
			if !validID(ev.ID) || !validType(ev.Type) {
				t.Fatalf("parsed an unframeable field: %+v", ev)
			}
			evs = append(evs, ev)
		}
		got := roundTrip(t, evs)
		if len(got) != len(evs) {
			t.Fatalf("re-encoding %d events gave %d", len(evs), len(got))
		}
		for i := range got {
			want := evs[i]
			want.Data = NormalizeData(want.Data)
			if got[i] != want {
				t.Fatalf("event %d: %+v re-parsed as %+v", i, want, got[i])
			}
		}
	})
}

func BenchmarkAppendFrame(b *testing.B) {
	b.ReportAllocs()
	buf := make([]byte, 0, 256)
	id := []byte("0123456789abcdef:123456")
	data := []byte(`{"reply_to":"k1","text":" hello"}`)
	for b.Loop() {
		buf, _ = AppendFrame(buf[:0], id, "delta", data)
	}
}
