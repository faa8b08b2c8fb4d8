package failover

import (
	"fmt"
	"time"
)

// Defaults. With them a recovered primary is chosen again at most
// DefaultRise×DefaultInterval + DefaultTimeout (1.4 s) after it starts
// answering, inside the 2 s goal of the incident that motivated this package,
// and a dead current target is left within
// DefaultFall×DefaultInterval + DefaultTimeout (1.9 s).
const (
	DefaultInterval   = 500 * time.Millisecond // see WithInterval
	DefaultTimeout    = 400 * time.Millisecond // see WithTimeout
	DefaultRise       = 2                      // see WithRise
	DefaultFall       = 3                      // see WithFall
	DefaultMinDwell   = 0                      // see WithMinDwell
	DefaultMaxBackoff = 4 * time.Second        // see WithMaxBackoff
	// DefaultSubscriberBuffer is the number of undelivered changes a
	// subscriber may have pending before the newest ones are coalesced.
	DefaultSubscriberBuffer = 64
)

type config struct {
	interval   time.Duration
	timeout    time.Duration
	rise       int
	fall       int
	minDwell   time.Duration
	maxBackoff time.Duration
	maxLag     uint64
	subBuffer  int
}

func defaultConfig() config {
	return config{
		interval:   DefaultInterval,
		timeout:    DefaultTimeout,
		rise:       DefaultRise,
		fall:       DefaultFall,
		minDwell:   DefaultMinDwell,
		maxBackoff: DefaultMaxBackoff,
		subBuffer:  DefaultSubscriberBuffer,
	}
}

// invalid reports an impossible option value. Like the standard library
// for impossible arguments, it panics: the value is a programming error, and
// New would otherwise start a group that cannot keep its guarantees.
func invalid(format string, args ...any) {
	panic(fmt.Sprintf("failover: "+format, args...))
}

// An Option configures a Group. Options are applied in order by New; an
// out-of-range value makes New panic with a message that starts with
// "failover: ".
type Option interface {
	apply(*config)
}

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

// WithInterval sets the time between the starts of two check rounds while at
// least one target is healthy (default DefaultInterval). It must be positive.
func WithInterval(d time.Duration) Option {
	return optionFunc(func(c *config) {
		if d <= 0 {
			invalid("interval %v must be positive", d)
		}
		c.interval = d
	})
}

// WithTimeout bounds each check call (default DefaultTimeout). It must be
// positive and no longer than the interval: a round of checks always ends
// within the timeout, so the next round is never late.
func WithTimeout(d time.Duration) Option {
	return optionFunc(func(c *config) {
		if d <= 0 {
			invalid("timeout %v must be positive", d)
		}
		c.timeout = d
	})
}

// WithRise sets how many consecutive successful checks an unhealthy target
// needs to become healthy again (default DefaultRise, at least 1).
func WithRise(n int) Option {
	return optionFunc(func(c *config) {
		if n < 1 {
			invalid("rise %d must be at least 1", n)
		}
		c.rise = n
	})
}

// WithFall sets how many consecutive failures (failed checks, timeouts,
// lagging heads and ReportFailure calls) a healthy target needs to become
// unhealthy (default DefaultFall, at least 1).
func WithFall(n int) Option {
	return optionFunc(func(c *config) {
		if n < 1 {
			invalid("fall %d must be at least 1", n)
		}
		c.fall = n
	})
}

// WithMinDwell sets the minimum time the selection stays on a target before
// it moves to a better (higher-priority) one. It bounds switch storms from a
// flapping primary. It never delays leaving an unhealthy target, and manual
// actions (Drain, Undrain, Force, Unforce) ignore it. Default 0 (no dwell).
// It must not be negative.
func WithMinDwell(d time.Duration) Option {
	return optionFunc(func(c *config) {
		if d < 0 {
			invalid("min dwell %v must not be negative", d)
		}
		c.minDwell = d
	})
}

// WithMaxBackoff caps the growing pause between check rounds while no target
// is healthy (default DefaultMaxBackoff). The pause starts at the interval
// and doubles after each round in which no check succeeded, up to this cap;
// it returns to the interval as soon as any check succeeds, so a target that
// recovers from a total outage needs Rise rounds at the normal interval, not
// at the backed-off one. A value below the interval disables backoff.
func WithMaxBackoff(d time.Duration) Option {
	return optionFunc(func(c *config) {
		if d < 0 {
			invalid("max backoff %v must not be negative", d)
		}
		c.maxBackoff = d
	})
}

// WithMaxLag turns on lag checking: a successful check whose Health.Head is
// more than n below the highest head reported in the same round counts as a
// failure (with an error wrapping ErrLagging). n = 0 (the default) disables
// lag checking. See Group for why the highest head is trusted.
func WithMaxLag(n uint64) Option {
	return optionFunc(func(c *config) { c.maxLag = n })
}

// WithSubscriberBuffer sets how many undelivered changes each subscriber may
// have pending (default DefaultSubscriberBuffer, at least 1). When a
// subscriber falls further behind, its newest pending change is merged with
// the incoming one (see Change.Coalesced), so the checker never blocks and
// the subscriber always ends up told the latest selection.
func WithSubscriberBuffer(n int) Option {
	return optionFunc(func(c *config) {
		if n < 1 {
			invalid("subscriber buffer %d must be at least 1", n)
		}
		c.subBuffer = n
	})
}
