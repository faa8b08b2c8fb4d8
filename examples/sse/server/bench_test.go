package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/steadfast-go/steadfast/examples/internal/pgtest"
	"github.com/steadfast-go/steadfast/examples/sse/server"
)

// nopAgent answers at once with one chunk.
type nopAgent struct{}

func (nopAgent) Reply(_ context.Context, _ server.Request, emit func(string) error) error {
	return emit("ok")
}

// BenchmarkSend measures one accepted send over loopback HTTP (stored
// before the 202, then queued): in memory, in SQLite, and on PostgreSQL
// with the replica coordination (advisory lock, index refresh) when
// STEADFAST_POSTGRES is set.
func BenchmarkSend(b *testing.B) {
	dbs := map[string]func(*testing.B) string{
		"memory": func(*testing.B) string { return "" },
		"sqlite": func(b *testing.B) string { return filepath.Join(b.TempDir(), "e.db") },
	}
	if os.Getenv("STEADFAST_POSTGRES") != "" {
		dbs["postgres"] = func(b *testing.B) string { return pgtest.NewDatabase(b, "sse_bench") }
	}
	for _, name := range []string{"memory", "sqlite", "postgres"} {
		db, ok := dbs[name]
		if !ok {
			continue
		}
		b.Run(name, func(b *testing.B) {
			srv, err := server.New(server.Config{DBPath: db(b), Agent: nopAgent{}, MaxPending: 1 << 30, Logger: discardLogger()})
			if err != nil {
				b.Fatal(err)
			}
			hs := newLoopback(b, srv)
			hc := &http.Client{}
			id := benchSession(b, hc, hs)
			b.ResetTimer()
			for i := range b.N {
				body := fmt.Sprintf(`{"text":"hello","idempotency_key":"k%d"}`, i)
				resp, err := hc.Post(hs+"/sessions/"+id+"/send", "application/json", strings.NewReader(body))
				if err != nil {
					b.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusAccepted {
					b.Fatalf("send: %d", resp.StatusCode)
				}
			}
			b.StopTimer()
		})
	}
}

func benchSession(b *testing.B, hc *http.Client, base string) string {
	resp, err := hc.Post(base+"/sessions", "application/json", nil)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct{ ID string }
	if err := decodeJSON(resp, &body); err != nil {
		b.Fatal(err)
	}
	return body.ID
}

// newLoopback serves srv on 127.0.0.1 until the benchmark ends.
func newLoopback(b *testing.B, srv *server.Server) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	go func() { srv.Serve(ln); close(done) }()
	b.Cleanup(func() {
		srv.Shutdown(context.Background())
		<-done
	})
	return "http://" + ln.Addr().String()
}

func decodeJSON(resp *http.Response, v any) error { return json.NewDecoder(resp.Body).Decode(v) }
