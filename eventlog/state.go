package eventlog

// State is the lifecycle state of a stream. It decides whether the periodic
// sync helper (Log.Sync, Log.SyncEvery) touches the stream and whether the
// stream accepts appends.
//
// State is a plain value, safe for concurrent use. The zero State is not a
// state a stream can be in; it formats as "unknown".
type State uint8

// The stream states. A stream enters Created when it is first appended to or
// first given a state with Log.SetState. Ended is terminal: an ended stream
// rejects appends and further state changes with ErrStreamEnded.
const (
	Created   State = iota + 1 // registered, not yet running; syncable
	Starting                   // starting up; syncable
	Active                     // running; syncable
	Suspended                  // paused; not synced
	Detached                   // no client attached; not synced
	Ended                      // finished; terminal, rejects appends; not synced
)

var stateNames = [...]string{"unknown", "created", "starting", "active", "suspended", "detached", "ended"}

// String returns the lower-case name of s ("created", "active", ...), or
// "unknown" for a value that is not a state.
func (s State) String() string {
	if int(s) < len(stateNames) {
		return stateNames[s]
	}
	return "unknown"
}

// Valid reports whether s is one of the six states.
func (s State) Valid() bool { return s >= Created && s <= Ended }

// Syncable reports whether a periodic sync should touch a stream in state s:
// true for Created, Starting and Active only. (The origin synced every
// watched session, including suspended and detached ones, and so replayed
// thousands of events nobody was waiting for.)
func (s State) Syncable() bool { return s >= Created && s <= Active }

// ParseState returns the State named by s, as written by State.String.
// Errors: an unknown name returns an error wrapping ErrInvalidState.
func ParseState(s string) (State, error) {
	for i := Created; i <= Ended; i++ {
		if stateNames[i] == s {
			return i, nil
		}
	}
	return 0, errorf(ErrInvalidState, "%q", clip(s))
}
