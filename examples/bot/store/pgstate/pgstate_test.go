package pgstate

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/examples/internal/pgtest"

	"go.uber.org/goleak"

	"github.com/steadfast-go/steadfast/examples/bot/store"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// A write under an older token than the row's is refused and changes
// nothing; so is a delete.
func TestStaleHolderWriteIsRefused(t *testing.T) {
	s, err := Open(context.Background(), pgtest.NewDatabase(t, "botstate"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	now := time.Now().UTC().Truncate(time.Millisecond)
	if err := s.Put("c", 5, store.Session{SessionID: "new", Model: "m", LastUsed: now}); err != nil {
		t.Fatal(err)
	}
	if err := s.Put("c", 3, store.Session{SessionID: "stale"}); !errors.Is(err, ErrStale) {
		t.Fatalf("stale Put: %v, want ErrStale", err)
	}
	if err := s.Delete("c", 4); !errors.Is(err, ErrStale) {
		t.Fatalf("stale Delete: %v, want ErrStale", err)
	}
	got, ok, err := s.Get("c")
	if err != nil || !ok || got.SessionID != "new" || got.Model != "m" || !got.LastUsed.Equal(now) {
		t.Fatalf("Get = %+v %v %v, want the token-5 session", got, ok, err)
	}
	if err := s.Put("c", 5, store.Session{SessionID: "same holder again"}); err != nil {
		t.Fatalf("a second write by the same holder: %v", err)
	}
	if err := s.Delete("c", 6); err != nil {
		t.Fatal(err)
	}
	if _, ok, _ := s.Get("c"); ok {
		t.Fatal("session kept after Delete")
	}
	if err := s.Delete("never", 1); err != nil {
		t.Fatalf("Delete of an unknown channel: %v", err)
	}
}
