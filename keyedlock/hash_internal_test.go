package keyedlock

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"testing"
)

// TestHashStringEveryByteMatters: changing any single bit of a key of any
// length (every branch of hashString) changes its hash, and equal strings
// built separately hash equally.
func TestHashStringEveryByteMatters(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	seed := r.Uint64()
	for n := range 70 {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(r.Uint32())
		}
		h := hashString(seed, string(b))
		if again := hashString(seed, string(append([]byte(nil), b...))); again != h {
			t.Fatalf("len %d: equal strings hash to %#x and %#x", n, h, again)
		}
		for i := range b {
			for bit := range 8 {
				b[i] ^= 1 << bit
				if hashString(seed, string(b)) == h {
					t.Fatalf("len %d: flipping bit %d of byte %d does not change the hash", n, bit, i)
				}
				b[i] ^= 1 << bit
			}
		}
		if n > 0 && hashString(seed, string(b[:n-1])) == h {
			t.Fatalf("len %d: dropping the last byte does not change the hash", n)
		}
		if hashString(seed+1, string(b)) == h {
			t.Fatalf("len %d: the seed does not change the hash", n)
		}
	}
}

// TestHashStringSpreadsKeys: realistic id-like keys, including long ones
// that differ only in the middle, spread evenly over the shards, so the
// string fast path cannot pile keys into one shard mutex.
func TestHashStringSpreadsKeys(t *testing.T) {
	const shards, n = DefaultShards, 1 << 16
	shapes := map[string]func(i int) string{
		"short":     func(i int) string { return "c" + strconv.Itoa(i) },
		"channel":   func(i int) string { return "channel-" + strconv.Itoa(i) },
		"snowflake": func(i int) string { return fmt.Sprintf("guild/%019d/channel", 1100000000000000000+i) },
		"uuid-like": func(i int) string { return fmt.Sprintf("%08x-0000-4000-8000-000000000000", i) },
	}
	for name, key := range shapes {
		t.Run(name, func(t *testing.T) {
			seed := rand.Uint64()
			var count [shards]int
			for i := range n {
				count[hashString(seed, key(i))&(shards-1)]++
			}
			// With a uniform hash each shard gets 1024 ± 32 (one
			// standard deviation); 1024 ± 25% is more than 7 of them.
			for s, c := range count {
				if c < n/shards*3/4 || c > n/shards*5/4 {
					t.Fatalf("shard %d got %d of %d keys, want about %d", s, c, n, n/shards)
				}
			}
		})
	}
}
