// Package store keeps each chat channel's agent session (session id, model,
// last use) in a JSON file, so that after a restart the bot resumes the
// right session with --resume.
//
// The file is replaced atomically: the new contents are written to a
// temporary file in the same directory, synced, and renamed over the old
// file, so a crash leaves either the old or the new file, never a torn one.
package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// ErrCorrupt is returned (wrapped) by Open when the file exists but is not
// a valid session file.
var ErrCorrupt = errors.New("store: corrupt session file")

// Session is what the bot remembers about one channel.
type Session struct {
	SessionID string    `json:"session_id,omitempty"`
	Model     string    `json:"model,omitempty"`
	LastUsed  time.Time `json:"last_used"`
}

type file struct {
	Version  int                `json:"version"`
	Channels map[string]Session `json:"channels"`
}

// Store maps channel ids to sessions. It is safe for concurrent use.
// Changes to the session id or model are written to disk before the method
// returns; Touch only updates LastUsed in memory (the next write or Flush
// saves it), so a message costs no disk write when the session is
// unchanged. The zero value is not usable; call Open.
type Store struct {
	path string

	mu    sync.Mutex // guards m and dirty, and serializes file writes
	m     map[string]Session
	dirty bool
}

// DefaultPath returns the default session file:
// $XDG_STATE_HOME/steadfast-bot/sessions.json, else the user config dir
// (os.UserConfigDir), else the current directory.
func DefaultPath() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "steadfast-bot", "sessions.json")
	}
	if d, err := os.UserConfigDir(); err == nil {
		return filepath.Join(d, "steadfast-bot", "sessions.json")
	}
	return "sessions.json"
}

// Open loads the store at path, creating its directory if needed. A
// missing file is an empty store. It returns an error wrapping ErrCorrupt
// if the file cannot be parsed, or the file system error.
func Open(path string) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	s := &Store{path: path, m: make(map[string]Session)}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return s, nil
	case err != nil:
		return nil, fmt.Errorf("store: %w", err)
	}
	var f file
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrCorrupt, path, err)
	}
	if f.Channels != nil {
		s.m = f.Channels
	}
	return s, nil
}

// Path returns the file the store writes.
func (s *Store) Path() string { return s.path }

// Get returns the session of channel and whether there is one.
func (s *Store) Get(channel string) (Session, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	v, ok := s.m[channel]
	return v, ok
}

// Len returns the number of channels with a session.
func (s *Store) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

// Update applies fn to channel's session (the zero Session if none) and
// saves the result. It returns the write error, in which case the change
// is kept in memory and written by the next successful save.
func (s *Store) Update(channel string, fn func(*Session)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.m[channel]
	fn(&v)
	s.m[channel] = v
	s.dirty = true
	return s.saveLocked()
}

// Touch sets channel's LastUsed to now in memory if the channel has a
// session; it is saved with the next write or Flush.
func (s *Store) Touch(channel string, now time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if v, ok := s.m[channel]; ok {
		v.LastUsed = now
		s.m[channel] = v
		s.dirty = true
	}
}

// Delete forgets channel's session and saves. It returns the write error.
func (s *Store) Delete(channel string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[channel]; !ok {
		return nil
	}
	delete(s.m, channel)
	s.dirty = true
	return s.saveLocked()
}

// Flush writes unsaved changes (LastUsed updates). It returns the write
// error.
func (s *Store) Flush() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.dirty {
		return nil
	}
	return s.saveLocked()
}

func (s *Store) saveLocked() error {
	b, err := json.MarshalIndent(file{Version: 1, Channels: maps.Clone(s.m)}, "", "  ")
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if err := writeAtomic(s.path, append(b, '\n')); err != nil {
		return err
	}
	s.dirty = false
	return nil
}

// writeAtomic replaces path with data: temp file in the same directory,
// fsync, rename, fsync of the directory.
func writeAtomic(path string, data []byte) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if _, err = f.Write(data); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if err = f.Sync(); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if err = f.Close(); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if err = os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if d, derr := os.Open(dir); derr == nil {
		d.Sync() // best effort: makes the rename durable on Linux
		d.Close()
	}
	return nil
}
