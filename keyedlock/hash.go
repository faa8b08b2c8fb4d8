package keyedlock

import "math/bits"

// Hashing string keys.
//
// Every Lock and Unlock hashes its key once, to pick a shard and a tag.
// [maphash.Comparable] handles any comparable type, but it reaches the
// runtime's hash through two non-inlined calls and an indirect one, which
// costs about as much as the rest of an uncontended Lock. Plain string
// keys (the common case: channel, tenant or session ids) take a shorter
// path instead: a direct call to a seeded multiply-and-fold hash over the
// string's 8-byte words. It needs no unsafe code: the compiler combines
// the byte loads in le64 and le32 into single loads.
//
// The hash only spreads keys over shards and speeds up comparisons; keys
// are always compared with ==, so a collision costs time, never
// correctness. The seed is random per Map, so nobody can choose keys that
// all land in one shard without knowing it.

// Odd 64-bit constants with well-mixed bits (from the wyhash family).
const (
	hashK0 = 0xa0761d6478bd642f
	hashK1 = 0xe7037ed1a0b428db
	hashK2 = 0x8ebc6af09c88c6e3
)

// fold multiplies a and b into 128 bits and folds the halves together.
func fold(a, b uint64) uint64 {
	hi, lo := bits.Mul64(a, b)
	return hi ^ lo
}

func le64(s string) uint64 {
	_ = s[7]
	return uint64(s[0]) | uint64(s[1])<<8 | uint64(s[2])<<16 | uint64(s[3])<<24 |
		uint64(s[4])<<32 | uint64(s[5])<<40 | uint64(s[6])<<48 | uint64(s[7])<<56
}

func le32(s string) uint64 {
	_ = s[3]
	return uint64(s[0]) | uint64(s[1])<<8 | uint64(s[2])<<16 | uint64(s[3])<<24
}

// hashString returns a seeded 64-bit hash of s. Every byte of s affects
// the result.
func hashString(seed uint64, s string) uint64 {
	n := len(s)
	h := seed ^ hashK0
	var a, b uint64
	switch {
	case n > 16:
		rest := s
		for len(rest) > 16 {
			h = fold(le64(rest)^h^hashK1, le64(rest[8:])^h^hashK2)
			rest = rest[16:]
		}
		// The last 16 bytes, overlapping what the loop already read.
		a, b = le64(s[n-16:]), le64(s[n-8:])
	case n >= 8:
		a, b = le64(s), le64(s[n-8:])
	case n >= 4:
		a, b = le32(s), le32(s[n-4:])
	case n > 0:
		a = uint64(s[0])<<16 | uint64(s[n>>1])<<8 | uint64(s[n-1])
	}
	// The seed-derived h goes into both factors: a factor can only be 0
	// (erasing the other) for inputs that depend on the secret seed.
	return fold(h^uint64(n)^hashK2, fold(a^h^hashK1, b^h^hashK2)^hashK0)
}
