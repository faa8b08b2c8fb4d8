package chunk_test

import (
	"fmt"
	"strings"

	"github.com/steadfast-go/steadfast/examples/bot/chunk"
)

func ExampleSplit() {
	reply := "Here you go:\n\n```go\n" + strings.Repeat("fmt.Println(42)\n", 6) + "```\n"
	for i, c := range chunk.Split(reply, 64) {
		fmt.Printf("--- chunk %d (%d runes)\n%s\n", i, len([]rune(c)), c)
	}
	// Output:
	// --- chunk 0 (55 runes)
	// Here you go:
	//
	// ```go
	// fmt.Println(42)
	// fmt.Println(42)
	// ```
	// --- chunk 1 (57 runes)
	// ```go
	// fmt.Println(42)
	// fmt.Println(42)
	// fmt.Println(42)
	// ```
	// --- chunk 2 (26 runes)
	// ```go
	// fmt.Println(42)
	// ```
}
