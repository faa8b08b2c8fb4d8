package replayqueue

import (
	"strconv"
	"strings"
)

// ReservedPrefix starts every id in the reserved namespace that replayed
// items are sent with. The namespace is every string with this prefix.
//
// The rule the user must follow to make collisions impossible: never send
// upstream, on a client's behalf, an id for which [IsReserved] reports true.
// A JSON-RPC proxy checks each client request's id (a JSON string id is
// compared by its decoded value; numbers and null can never be reserved)
// and rejects the request, or rewrites the id, when it is reserved. With
// that rule, the sets of client ids and replay ids are disjoint by
// construction, so [Queue.HandleReply] can never take a client's reply for
// a replay's, or the other way round.
const ReservedPrefix = "steadfast-replay:"

// IsReserved reports whether id lies in the reserved namespace, that is,
// whether it starts with [ReservedPrefix]. Client ids for which it reports
// true must not be forwarded upstream unchanged.
func IsReserved(id string) bool { return strings.HasPrefix(id, ReservedPrefix) }

// A ReplayID identifies one transmission of a replayed item: the connection
// generation it was sent on and a sequence number unique within the Queue.
// Its string form, returned by String, lies in the reserved namespace.
// The zero ReplayID is never issued.
type ReplayID struct {
	Gen uint64 // the connection generation the item was sent on
	Seq uint64 // unique per Queue, starting at 1
}

// String returns the id's wire form, "steadfast-replay:<gen>:<seq>" in
// decimal. [ParseReplayID] inverts it.
func (id ReplayID) String() string {
	b := make([]byte, 0, len(ReservedPrefix)+41)
	b = append(b, ReservedPrefix...)
	b = strconv.AppendUint(b, id.Gen, 10)
	b = append(b, ':')
	b = strconv.AppendUint(b, id.Seq, 10)
	return string(b)
}

// ParseReplayID parses the string form of a ReplayID. It accepts exactly the
// strings String produces (decimal without sign or leading zeros), so each
// ReplayID has one wire form; for anything else it returns false.
func ParseReplayID(s string) (ReplayID, bool) {
	if !IsReserved(s) {
		return ReplayID{}, false
	}
	s = s[len(ReservedPrefix):]
	i := strings.IndexByte(s, ':')
	if i < 0 {
		return ReplayID{}, false
	}
	gen, ok1 := parseDecimal(s[:i])
	seq, ok2 := parseDecimal(s[i+1:])
	if !ok1 || !ok2 {
		return ReplayID{}, false
	}
	return ReplayID{Gen: gen, Seq: seq}, true
}

// parseDecimal parses a canonical unsigned decimal (no sign, no leading
// zeros, no overflow) without allocating.
func parseDecimal(s string) (uint64, bool) {
	if s == "" || len(s) > 20 || (len(s) > 1 && s[0] == '0') {
		return 0, false
	}
	var v uint64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if v > (^uint64(0)-d)/10 {
			return 0, false
		}
		v = v*10 + d
	}
	return v, true
}
