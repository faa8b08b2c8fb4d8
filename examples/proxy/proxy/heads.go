package proxy

// headTracker remembers what one newHeads subscription's client has
// received, so that a switch of upstream neither repeats a head (the new
// upstream sends the current head again) nor leaves a gap (heads produced
// while no upstream was attached). It is pure: no I/O, no locking (the
// session's mutex guards it), so its rules are tested on their own.
type headTracker struct {
	haveLast bool
	lastNum  uint64            // the highest block number delivered
	seen     map[uint64]string // recent block numbers delivered -> hash
}

// maxSeenHeads is how many recent heads a tracker remembers for
// de-duplication (a reorg deeper than that may repeat a height).
const maxSeenHeads = 256

// gap returns the first block number missing before num, for the first
// head a new upstream connection sends: the client last got lastNum, so
// lastNum+1 .. num-1 must be fetched first. At most limit heads are
// filled (the newest); ok is false when nothing is missing or limit <= 0.
func (h *headTracker) gap(num uint64, limit int) (from uint64, ok bool) {
	if !h.haveLast || limit <= 0 || num <= h.lastNum+1 {
		return 0, false
	}
	from = h.lastNum + 1
	if num-from > uint64(limit) {
		from = num - uint64(limit) // a longer gap is left for the client to fetch
	}
	return from, true
}

// accept records head (num, hash) and reports whether it is new to the
// client: false for a block hash the client already has at that height.
// A different hash at a known height (a reorg) is new.
func (h *headTracker) accept(num uint64, hash string) bool {
	if h.seen == nil {
		h.seen = make(map[uint64]string)
	}
	if prev, ok := h.seen[num]; ok && prev == hash {
		return false
	}
	h.seen[num] = hash
	if !h.haveLast || num > h.lastNum {
		h.lastNum, h.haveLast = num, true
	}
	if len(h.seen) > 2*maxSeenHeads {
		for n := range h.seen {
			if n+maxSeenHeads < h.lastNum {
				delete(h.seen, n)
			}
		}
	}
	return true
}
