package replayqueue

// entry is one buffered item with the size it was charged.
type entry[T any] struct {
	item T
	size int
}
