package pglock_test

import (
	"context"
	"fmt"
	"os"

	"github.com/steadfast-go/steadfast/keyedlock/pglock"
)

// The resource a lock protects refuses a write whose fencing token is older
// than the newest it has seen: a holder that lost its lock (paused, cut
// off) and comes back cannot overwrite the work of the holder after it. In
// SQL, the same rule is `UPDATE … SET …, token = $t WHERE token <= $t`.
func Example_fencing() {
	type resource struct {
		value string
		token int64
	}
	write := func(r *resource, value string, token int64) bool {
		if token < r.token {
			return false // a stale holder
		}
		r.value, r.token = value, token
		return true
	}
	var r resource
	fmt.Println(write(&r, "from holder 7", 7))
	fmt.Println(write(&r, "from holder 8", 8))
	fmt.Println(write(&r, "late write from holder 7", 7))
	fmt.Println(r.value)
	// Output:
	// true
	// true
	// false
	// from holder 8
}

// One agent run per channel at a time, across every replica of the bot.
func ExampleLocker_Do() {
	url := os.Getenv("STEADFAST_POSTGRES")
	if url == "" {
		return // needs a database
	}
	ctx := context.Background()
	locks, err := pglock.Open(ctx, url)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer locks.Close()
	err = locks.Do(ctx, "channel-42", func(ctx context.Context, token int64) error {
		// ctx ends if the lock is lost; writes carry token.
		return nil
	})
	fmt.Println(err)
}
