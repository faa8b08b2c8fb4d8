package eventlog_test

import (
	"testing"

	"github.com/steadfast-go/steadfast/eventlog"
	"github.com/steadfast-go/steadfast/eventlog/storetest"
)

func TestMemoryStoreConformance(t *testing.T) {
	storetest.Run(t, storetest.Factory{
		Open: func(t *testing.T, r eventlog.Retention) eventlog.Store { return eventlog.NewMemoryStore(r) },
	})
}
