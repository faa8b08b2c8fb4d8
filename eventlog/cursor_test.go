package eventlog_test

import (
	"errors"
	"math"
	"strconv"
	"strings"
	"testing"

	"github.com/steadfast-go/steadfast/eventlog"
)

func TestCursorRoundTrip(t *testing.T) {
	for _, c := range []eventlog.Cursor{
		{},
		{Epoch: "a", Seq: 0},
		{Epoch: "9f1c2e4a0b3d5e6f", Seq: 1},
		{Epoch: "A_b-9", Seq: math.MaxUint64},
		{Epoch: strings.Repeat("e", eventlog.MaxEpochLen), Seq: 42},
	} {
		s := c.String()
		got, err := eventlog.ParseCursor(s)
		if err != nil || got != c {
			t.Errorf("ParseCursor(%q) = %+v, %v; want %+v", s, got, err, c)
		}
	}
	if s := (eventlog.Cursor{Epoch: "ep", Seq: 7}).String(); s != "ep:7" {
		t.Errorf("String() = %q, want ep:7", s)
	}
}

func TestParseCursorRejectsGarbage(t *testing.T) {
	for _, s := range []string{
		"", ":", "abc", "ep:", ":5", "ep:-1", "ep:+1", "ep:01", "ep: 1", "ep:1 ", "ep:1x",
		"ep:18446744073709551616", "e:p:1", "e p:1", "é:1", "ep:0x10",
		strings.Repeat("e", eventlog.MaxEpochLen+1) + ":1", "\x00:1", "ep:1\n",
	} {
		c, err := eventlog.ParseCursor(s)
		if !errors.Is(err, eventlog.ErrBadCursor) {
			t.Errorf("ParseCursor(%q) = %+v, %v; want ErrBadCursor", s, c, err)
		}
	}
}

// FuzzParseCursor checks that ParseCursor never panics, and that whatever it
// accepts is canonical: formatting the result gives back the input.
func FuzzParseCursor(f *testing.F) {
	for _, s := range []string{
		":0", "9f1c2e4a0b3d5e6f:1", "ep:18446744073709551615", "ep:18446744073709551616",
		"ep:01", "ep:", ":1", "e:p:1", "", "\xff:1", "ep:-0", strings.Repeat("x", 70) + ":1",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := eventlog.ParseCursor(s)
		if err != nil {
			if !errors.Is(err, eventlog.ErrBadCursor) {
				t.Fatalf("ParseCursor(%q) error %v does not wrap ErrBadCursor", s, err)
			}
			return
		}
		if got := c.String(); got != s {
			t.Fatalf("ParseCursor(%q) = %+v, which formats as %q", s, c, got)
		}
		if !c.IsZero() && !eventlog.ValidEpoch(c.Epoch) {
			t.Fatalf("ParseCursor(%q) accepted invalid epoch %q", s, c.Epoch)
		}
		if _, err := strconv.ParseUint(s[strings.IndexByte(s, ':')+1:], 10, 64); err != nil {
			t.Fatalf("ParseCursor(%q) accepted a bad seq", s)
		}
	})
}
