package store

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestSurvivesRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sub", "sessions.json")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Update("general", func(v *Session) { v.SessionID, v.Model = "sess-1", "opus" }); err != nil {
		t.Fatal(err)
	}
	if err := s.Update("dev", func(v *Session) { v.SessionID = "sess-2" }); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete("dev"); err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 2, 13, 10, 0, 0, 0, time.UTC)
	s.Touch("general", at)
	s.Touch("unknown", at) // no session: nothing to remember
	if err := s.Flush(); err != nil {
		t.Fatal(err)
	}

	s2, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	got, ok := s2.Get("general")
	if !ok || got.SessionID != "sess-1" || got.Model != "opus" || !got.LastUsed.Equal(at) {
		t.Fatalf("after restart: %+v %v", got, ok)
	}
	if _, ok := s2.Get("dev"); ok || s2.Len() != 1 {
		t.Fatalf("deleted channel came back; len=%d", s2.Len())
	}
	// Only the session file remains: temporary files were renamed away.
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Fatalf("directory holds %d entries, want 1", len(entries))
	}
}

func TestCorruptFileIsReported(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sessions.json")
	os.WriteFile(path, []byte("{not json"), 0o600)
	if _, err := Open(path); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("err = %v, want ErrCorrupt", err)
	}
}

func TestConcurrentUpdatesAllPersist(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sessions.json")
	s, _ := Open(path)
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			ch := string(rune('a' + i))
			if err := s.Update(ch, func(v *Session) { v.SessionID = ch }); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	s2, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if s2.Len() != 20 {
		t.Fatalf("persisted %d sessions, want 20", s2.Len())
	}
}
