package eventlog

import (
	"errors"
	"testing"
)

// TestDecideReplay is the table test of Replay's decision: the outcome for
// a cursor and a stream's bounds, in the order Replay's doc lists the cases.
func TestDecideReplay(t *testing.T) {
	const e = "epoch1"
	b := Bounds{Epoch: e, First: 11, Head: 100}
	for _, c := range []struct {
		name    string
		from    Cursor
		b       Bounds
		outcome Outcome
		reason  Reason
		gap     uint64
		read    bool
		err     error
	}{
		{"other epoch", Cursor{"old", 50}, b, Unrecoverable, WrongEpoch, 0, false, nil},
		{"other epoch beats ahead", Cursor{"old", 500}, b, Unrecoverable, WrongEpoch, 0, false, nil},
		{"ahead", Cursor{e, 101}, b, 0, 0, 0, false, ErrCursorAhead},
		{"at head", Cursor{e, 100}, b, Events, NoReason, 0, false, nil},
		{"far behind", Cursor{e, 1}, b, SkippedToHead, NoReason, 99, false, nil},
		{"zero cursor far behind", Cursor{}, b, SkippedToHead, NoReason, 100, false, nil},
		{"expired", Cursor{e, 5}, Bounds{Epoch: e, First: 11, Head: 20}, Unrecoverable, Expired, 0, false, nil},
		{"zero cursor, first event dropped", Cursor{}, Bounds{Epoch: e, First: 2, Head: 20}, Unrecoverable, Expired, 0, false, nil},
		{"just retained", Cursor{e, 10}, Bounds{Epoch: e, First: 11, Head: 20}, Events, NoReason, 0, true, nil},
		{"zero cursor, whole stream", Cursor{}, Bounds{Epoch: e, First: 1, Head: 20}, Events, NoReason, 0, true, nil},
	} {
		res, read, err := decideReplay("s", c.from, c.b, 50)
		if !errors.Is(err, c.err) || (c.err == nil) != (err == nil) {
			t.Errorf("%s: err %v, want %v", c.name, err, c.err)
			continue
		}
		if err != nil {
			continue
		}
		head := Cursor{c.b.Epoch, c.b.Head}
		if res.Outcome != c.outcome || res.Reason != c.reason || res.Gap != c.gap || read != c.read || res.Head != head {
			t.Errorf("%s: got %v/%v gap %d read %v head %v", c.name, res.Outcome, res.Reason, res.Gap, read, res.Head)
		}
		if want := head; !read && res.Resume != want {
			t.Errorf("%s: resume %v, want the head %v", c.name, res.Resume, want)
		}
		if read && res.Resume != (Cursor{e, c.from.Seq}) {
			t.Errorf("%s: resume %v, want the cursor in the store's epoch", c.name, res.Resume)
		}
	}
}
