package eventlog

import (
	"fmt"
	"strconv"
	"strings"
)

// MaxEpochLen is the longest epoch ParseCursor accepts.
const MaxEpochLen = 64

// Cursor is a position in one stream of one log incarnation: the epoch of the
// log that assigned Seq, and the sequence number of the last event the holder
// has seen (0 before the first event).
//
// A Cursor is a plain value, safe to copy and to share. The zero Cursor means
// "nothing seen yet" and is valid in every epoch. A non-zero Cursor is only a
// position in the log whose Epoch matches: Replay reports a cursor from any
// other epoch as Unrecoverable instead of guessing what it meant.
type Cursor struct {
	// Epoch identifies the log incarnation that assigned Seq.
	Epoch string
	// Seq is the sequence number of the last event seen, within its stream.
	Seq uint64
}

// IsZero reports whether c is the zero Cursor (nothing seen yet).
func (c Cursor) IsZero() bool { return c.Epoch == "" && c.Seq == 0 }

// String returns "<epoch>:<seq>", the form ParseCursor reads, for example as
// an SSE event id. The zero Cursor formats as ":0".
func (c Cursor) String() string {
	return c.Epoch + ":" + strconv.FormatUint(c.Seq, 10)
}

// ParseCursor parses the "<epoch>:<seq>" form written by Cursor.String.
// The epoch is 1 to MaxEpochLen characters from [A-Za-z0-9_-]; seq is a
// canonical decimal uint64 (no sign, no leading zeros). ":0" parses as the
// zero Cursor.
//
// Errors: anything else returns an error wrapping ErrBadCursor. ParseCursor
// never panics, whatever s holds.
func ParseCursor(s string) (Cursor, error) {
	if s == ":0" {
		return Cursor{}, nil
	}
	i := strings.IndexByte(s, ':')
	if i < 0 {
		return Cursor{}, fmt.Errorf("%w: %q has no ':'", ErrBadCursor, clip(s))
	}
	epoch, num := s[:i], s[i+1:]
	if err := checkEpoch(epoch); err != nil {
		return Cursor{}, fmt.Errorf("%w: %q: %v", ErrBadCursor, clip(s), err)
	}
	if num == "" || (len(num) > 1 && num[0] == '0') {
		return Cursor{}, fmt.Errorf("%w: %q: seq is not a canonical decimal", ErrBadCursor, clip(s))
	}
	for j := 0; j < len(num); j++ {
		if num[j] < '0' || num[j] > '9' {
			return Cursor{}, fmt.Errorf("%w: %q: seq is not a canonical decimal", ErrBadCursor, clip(s))
		}
	}
	seq, err := strconv.ParseUint(num, 10, 64)
	if err != nil {
		return Cursor{}, fmt.Errorf("%w: %q: seq out of range", ErrBadCursor, clip(s))
	}
	return Cursor{Epoch: epoch, Seq: seq}, nil
}

// checkEpoch reports whether e is a well-formed epoch.
func checkEpoch(e string) error {
	if e == "" {
		return fmt.Errorf("empty epoch")
	}
	if len(e) > MaxEpochLen {
		return fmt.Errorf("epoch longer than %d", MaxEpochLen)
	}
	for i := 0; i < len(e); i++ {
		c := e[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return fmt.Errorf("epoch has byte %#x", c)
		}
	}
	return nil
}

// ValidEpoch reports whether e may be used as an epoch (what ParseCursor
// accepts). Store implementations use it to check the epoch they persist.
func ValidEpoch(e string) bool { return checkEpoch(e) == nil }

// clip shortens s for an error message, so garbage input cannot make the
// error arbitrarily large.
func clip(s string) string {
	if len(s) > 80 {
		return s[:80] + "..."
	}
	return s
}
