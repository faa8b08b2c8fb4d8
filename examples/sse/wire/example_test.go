package wire_test

import (
	"fmt"
	"strings"

	"github.com/steadfast-go/steadfast/examples/sse/wire"
)

func Example() {
	frame, _ := wire.AppendEvent(nil, wire.Event{ID: "ep:3", Type: "delta", Data: "two\nlines"})
	fmt.Print(string(frame))
	r := wire.NewReader(strings.NewReader(string(frame)), 0)
	ev, _ := r.Next()
	fmt.Printf("%s %s %q\n", ev.ID, ev.Type, ev.Data)
	// Output:
	// id: ep:3
	// event: delta
	// data: two
	// data: lines
	//
	// ep:3 delta "two\nlines"
}
