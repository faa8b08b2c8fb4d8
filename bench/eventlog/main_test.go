package eventlog_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a benchmark leaves goroutines behind
// (servers, clients or subscribers it started and did not stop).
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}
