package proxy

import (
	"bufio"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"
)

// TestServerLingersForTheReply: a request refused before its body is read
// gets its reply, and the connection is not reset while the client is
// still sending within lingerTime, however much it sends. A reset there
// fails the client's send, and Go's client then reports the failed send
// instead of the reply it had not parsed yet (a 20 MB body refused with
// 413 came back as "write: broken pipe" one run in a few). The client
// below sends for a while and must see its own write deadline, not a
// reset, and then the reply.
func TestServerLingersForTheReply(t *testing.T) {
	old := lingerTime
	lingerTime = 30 * time.Second // far past the client's deadline below
	t.Cleanup(func() { lingerTime = old })

	s := &Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			_, _ = io.CopyN(io.Discard, r.Body, 64<<10)
			http.Error(w, "too large", http.StatusRequestEntityTooLarge)
		}),
		Logger: slog.New(slog.DiscardHandler),
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if err := <-served; !errors.Is(err, http.ErrServerClosed) {
			t.Errorf("Serve returned %v", err)
		}
	})

	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const size = 256 << 20 // far more than lingerBytes and the sockets' buffers
	if _, err := io.WriteString(c, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 268435456\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = c.SetWriteDeadline(time.Now().Add(time.Second))
	chunk := []byte(strings.Repeat("b", 1<<20))
	sent := 0
	for sent < size {
		n, err := c.Write(chunk)
		sent += n
		if err != nil {
			if !errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("sending the body failed after %d bytes with %v, want the client's own deadline: the server reset a connection whose reply may be unread", sent, err)
			}
			break
		}
	}
	if sent >= size {
		t.Fatalf("all %d bytes sent: the server read past lingerBytes (%d)", sent, lingerBytes)
	}
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading the reply: %v", err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge || !resp.Close {
		t.Fatalf("reply %d close=%v, want 413 and close", resp.StatusCode, resp.Close)
	}
}
