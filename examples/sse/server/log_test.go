package server_test

import (
	"io"
	"log/slog"
	"os"
	"testing"
)

// testLogger logs to the test output when SSE_TEST_LOG is set, else nowhere.
func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("SSE_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) { w.t.Log(string(p)); return len(p), nil }
