package proxy

import (
	"encoding/json"
	"testing"
)

// TestOutboxKeepsOrderAndCutsAClientThatFallsBehind: push never blocks;
// what fits is handed out in push order, and the first push past the limit
// drops everything still waiting (counted, with its reason), marks the
// outbox dead and refuses the rest.
func TestOutboxKeepsOrderAndCutsAClientThatFallsBehind(t *testing.T) {
	dropped := map[string]int{}
	o := newOutbox(100, func(reason string, n int) { dropped[reason] += n })
	res := json.RawMessage(`{"number":"0x1"}`) // 16 bytes
	o.push(outItem{msg: []byte("reply-one")})
	o.push(outItem{sub: "0xabc", result: res})
	batch, done, overflow := o.take(nil)
	if len(batch) != 2 || string(batch[0].msg) != "reply-one" || batch[1].sub != "0xabc" || done || overflow {
		t.Fatalf("take = %+v, done %v, overflow %v", batch, done, overflow)
	}
	for range 4 { // 4 × 21 bytes fit in 100
		o.push(outItem{sub: "0xabc", result: res})
	}
	if len(dropped) != 0 {
		t.Fatalf("dropped %v below the limit", dropped)
	}
	o.push(outItem{sub: "0xabc", result: res}) // 105 bytes: past the limit
	if dropped[dropSlowClient] != 5 {
		t.Fatalf("dropped %v, want the 4 waiting and the one refused as slow_client", dropped)
	}
	batch, done, overflow = o.take(batch)
	if len(batch) != 0 || !done || !overflow {
		t.Fatalf("after overflow: take = %d items, done %v, overflow %v", len(batch), done, overflow)
	}
	o.push(outItem{msg: []byte("late")})
	if dropped[dropClientGone] != 1 {
		t.Fatalf("a push after the cut: dropped %v, want one client_gone", dropped)
	}
}

// TestOutboxOneLargeMessageFits: a single message larger than the limit is
// still written when nothing waits before it (a large reply is not a slow
// client), and stop lets the writer finish what is queued.
func TestOutboxOneLargeMessageFits(t *testing.T) {
	dropped := 0
	o := newOutbox(10, func(string, int) { dropped++ })
	o.push(outItem{msg: make([]byte, 50)})
	o.stop()
	batch, done, _ := o.take(nil)
	if len(batch) != 1 || done || dropped != 0 {
		t.Fatalf("take = %d items, done %v, dropped %d", len(batch), done, dropped)
	}
	if _, done, _ = o.take(batch); !done {
		t.Fatal("stopped and empty, but the writer is not told to return")
	}
}
