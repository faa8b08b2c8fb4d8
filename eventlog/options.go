package eventlog

import "fmt"

// Defaults used when an option is not given.
const (
	// DefaultGapCap is the largest gap Replay fills by re-sending events; a
	// cursor further behind head than this gets SkippedToHead: the client
	// is told how many events it missed instead of being flooded with them.
	DefaultGapCap = 200
	// DefaultMaxEvents is the per-stream count retention of the default
	// in-memory store.
	DefaultMaxEvents = 4096
	// DefaultMaxEventSize is the largest event (len(typ)+len(data)) Append
	// accepts.
	DefaultMaxEventSize = 1 << 20
	// DefaultMaxLag is how far (in events) a subscriber may fall behind head
	// before it receives Lagged.
	DefaultMaxLag = 1024
	// DefaultBatch is the most events one Subscription.Next returns.
	DefaultBatch = 64
)

// Option configures a Log in New. Options are immutable values, safe to
// reuse for several logs.
type Option interface{ apply(*config) }

type config struct {
	store        Store
	retention    *Retention
	maxEventSize int
}

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

// WithStore makes the Log keep its events in s instead of a new MemoryStore.
// The Log takes ownership: Log.Close closes s. It panics if s is nil. Set
// the retention on s itself: New panics if WithRetention is also given.
func WithStore(s Store) Option {
	if s == nil {
		panic("eventlog: WithStore(nil)")
	}
	return optionFunc(func(c *config) { c.store = s })
}

// WithRetention sets the retention of the default in-memory store
// (default: DefaultMaxEvents per stream, no age limit). A zero MaxEvents
// means DefaultMaxEvents. A store given with WithStore has its own retention
// settings, so New panics if both options are given; it also panics on a
// negative field.
func WithRetention(r Retention) Option {
	if r.MaxEvents < 0 || r.MaxAge < 0 {
		panic(fmt.Sprintf("eventlog: negative retention %+v", r))
	}
	return optionFunc(func(c *config) { c.retention = &r })
}

// WithMaxEventSize sets the largest event, len(typ)+len(data) in bytes, that
// Append accepts (default DefaultMaxEventSize); larger events fail with
// ErrEventTooLarge. It panics if n < 1.
func WithMaxEventSize(n int) Option {
	if n < 1 {
		panic(fmt.Sprintf("eventlog: WithMaxEventSize(%d)", n))
	}
	return optionFunc(func(c *config) { c.maxEventSize = n })
}

// SubscribeOptions tunes a Subscription. The zero value uses the defaults.
type SubscribeOptions struct {
	// GapCap is the replay gap cap of the first result (default
	// DefaultGapCap), as in Log.Replay.
	GapCap int
	// MaxLag is how many events the subscriber may fall behind head before
	// Next returns Lagged and the subscription ends (default DefaultMaxLag).
	MaxLag int
	// Batch is the most events one Next returns (default DefaultBatch).
	Batch int
}
