package keyedlock

import "time"

// DefaultShards is the number of shards a Map uses unless [WithShards] says
// otherwise. Each shard has its own small mutex that is held only for map
// bookkeeping, never while a caller waits for a key.
const DefaultShards = 64

// MaxShards is the largest shard count [WithShards] accepts; larger values
// are clamped to it.
const MaxShards = 1 << 16

// An Option configures a Map created by [New].
type Option interface {
	apply(*config)
}

type config struct {
	shards   int
	waitHook func(waited time.Duration)
}

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

// WithShards sets the number of shards, rounded up to a power of two and
// clamped to [1, MaxShards]. A value below 1 selects [DefaultShards]. More
// shards lower the chance that two busy keys touch the same shard mutex on
// machines with many cores; each shard costs about 200 bytes (for string
// keys), padded so that neighbouring shards never share a cache line.
func WithShards(n int) Option {
	return optionFunc(func(c *config) { c.shards = n })
}

// WithWaitHook registers fn to observe contention. fn is called once for
// every Lock call that had to queue behind another holder, when that call
// returns (whether it acquired the key or its context ended first), with
// the time it spent waiting. It is never called for Lock calls that found
// the key free, nor for TryLock.
//
// fn runs on the goroutine that called Lock, after every internal mutex has
// been released, so it may call methods of the Map (for example Status).
// It should be quick: the caller is delayed until it returns. A nil fn
// means no hook. If fn panics
// after the key was acquired, the key is unlocked before the panic
// continues, so a faulty hook cannot leave a key locked forever.
func WithWaitHook(fn func(waited time.Duration)) Option {
	return optionFunc(func(c *config) { c.waitHook = fn })
}
