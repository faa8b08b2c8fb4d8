package proxy_test

import (
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TestHealthzFollowsUpstreamHealth: /healthz, which a load balancer or
// orchestrator polls, answers 200 naming the upstream in use, 503 while no
// upstream is healthy, and 200 again once one recovers.
func TestHealthzFollowsUpstreamHealth(t *testing.T) {
	c := newCluster(t, []string{"primary", "backup"}, 100*time.Millisecond, nil)
	get := func() (int, string) {
		t.Helper()
		resp, err := http.Get("http://" + c.addr + "/healthz")
		if err != nil {
			t.Fatalf("GET /healthz: %v", err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("read /healthz: %v", err)
		}
		return resp.StatusCode, string(body)
	}

	c.waitCurrent(t, "primary", 5*time.Second)
	if code, body := get(); code != http.StatusOK || !strings.Contains(body, "primary") {
		t.Fatalf("healthy: /healthz = %d %q, want 200 naming primary", code, body)
	}

	for _, n := range c.nodes {
		n.Kill()
	}
	eventually(t, 10*time.Second, "/healthz to report 503 with every node down", func() bool {
		code, _ := get()
		return code == http.StatusServiceUnavailable
	})

	if err := c.nodes[0].Restart(); err != nil {
		t.Fatalf("restart primary: %v", err)
	}
	eventually(t, 10*time.Second, "/healthz to report 200 after the primary recovered", func() bool {
		code, body := get()
		return code == http.StatusOK && strings.Contains(body, "primary")
	})
}
