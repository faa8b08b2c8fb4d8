package eventlog_test

import (
	"context"
	"testing"

	"github.com/steadfast-go/steadfast/eventlog"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// epochOf returns l's current epoch; it panics on error (tests only).
func epochOf(l *eventlog.Log) string {
	e, err := l.Epoch(context.Background())
	if err != nil {
		panic(err)
	}
	return e
}

// at returns the cursor of seq in l's current epoch.
func at(l *eventlog.Log, seq uint64) eventlog.Cursor {
	return eventlog.Cursor{Epoch: epochOf(l), Seq: seq}
}
