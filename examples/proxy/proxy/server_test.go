package proxy_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/examples/proxy/proxy"
)

// startServer serves h with a proxy.Server on a loopback port until the
// test ends; it returns the address.
func startServer(t *testing.T, h http.Handler, tune func(*proxy.Server)) (*proxy.Server, string) {
	t.Helper()
	s := &proxy.Server{Handler: h, Logger: testLogger()}
	if tune != nil {
		tune(s)
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
			t.Errorf("Serve returned %v, want http.ErrServerClosed", err)
		}
	})
	return s, ln.Addr().String()
}

// echo answers a POST with its body and the client's address, and any
// other request with its method and path.
var echo = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		fmt.Fprintf(w, "std %s %s", r.Method, r.URL.Path)
		return
	}
	b, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Remote", r.RemoteAddr)
	_, _ = w.Write(b)
})

type rawConn struct {
	net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	return &rawConn{Conn: c, br: bufio.NewReader(c)}
}

func (c *rawConn) send(t *testing.T, s string) {
	t.Helper()
	if _, err := io.WriteString(c, s); err != nil {
		t.Fatal(err)
	}
}

// reply reads one response and its whole body.
func (c *rawConn) reply(t *testing.T) (*http.Response, string) {
	t.Helper()
	resp, err := http.ReadResponse(c.br, nil)
	if err != nil {
		t.Fatalf("reading a reply: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("reading a reply's body: %v", err)
	}
	return resp, string(b)
}

// closed reports whether the server closed the connection (EOF with
// nothing more sent).
func (c *rawConn) closed(t *testing.T) bool {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.br.Read(make([]byte, 1))
	return n == 0 && errors.Is(err, io.EOF)
}

func post(body string, extra ...string) string {
	return "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: " + fmt.Sprint(len(body)) + "\r\n" +
		strings.Join(extra, "") + "\r\n" + body
}

// TestServerKeepsConnections: sequential and pipelined requests on one
// connection each get their own reply, in order, framed by Content-Length.
func TestServerKeepsConnections(t *testing.T) {
	_, addr := startServer(t, echo, nil)
	c := dialRaw(t, addr)
	remote := ""
	for i := range 20 {
		body := fmt.Sprintf(`{"i":%d}`, i)
		c.send(t, post(body))
		resp, got := c.reply(t)
		if resp.StatusCode != 200 || got != body || resp.ContentLength != int64(len(body)) || resp.Close {
			t.Fatalf("request %d: %d %q (length %d, close %v), want 200 %q kept", i, resp.StatusCode, got, resp.ContentLength, resp.Close, body)
		}
		if resp.Header.Get("Date") == "" || resp.Header.Get("Content-Type") != "application/json" {
			t.Fatalf("headers %v", resp.Header)
		}
		if r := resp.Header.Get("X-Remote"); remote == "" {
			remote = r
		} else if r != remote {
			t.Fatalf("request %d came from %s, the first from %s", i, r, remote)
		}
	}
	if remote != c.LocalAddr().String() {
		t.Errorf("the handler saw the client at %s, want %s", remote, c.LocalAddr())
	}
	var all strings.Builder
	for i := range 10 {
		all.WriteString(post(fmt.Sprintf(`{"pipelined":%d}`, i)))
	}
	c.send(t, all.String())
	for i := range 10 {
		if _, got := c.reply(t); got != fmt.Sprintf(`{"pipelined":%d}`, i) {
			t.Fatalf("pipelined reply %d: %q", i, got)
		}
	}
}

// TestServerFraming: chunked bodies, HTTP/1.0 with and without
// keep-alive, Connection: close, and 100-continue.
func TestServerFraming(t *testing.T) {
	_, addr := startServer(t, echo, nil)
	t.Run("chunked", func(t *testing.T) {
		c := dialRaw(t, addr)
		c.send(t, "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")
		if _, got := c.reply(t); got != "abcdefg" {
			t.Fatalf("chunked body arrived as %q", got)
		}
		c.send(t, post("again"))
		if _, got := c.reply(t); got != "again" {
			t.Fatalf("after a chunked request: %q", got)
		}
	})
	t.Run("http1.0", func(t *testing.T) {
		c := dialRaw(t, addr)
		c.send(t, "POST / HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi")
		if resp, got := c.reply(t); got != "hi" || !resp.Close {
			t.Fatalf("%q close=%v, want hi and close", got, resp.Close)
		}
		if !c.closed(t) {
			t.Fatal("an HTTP/1.0 connection without keep-alive stayed open")
		}
		c = dialRaw(t, addr)
		for range 3 {
			c.send(t, "POST / HTTP/1.0\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nka")
			resp, got := c.reply(t)
			if got != "ka" || resp.Close || !strings.EqualFold(resp.Header.Get("Connection"), "keep-alive") {
				t.Fatalf("keep-alive HTTP/1.0: %q close=%v headers %v", got, resp.Close, resp.Header)
			}
		}
	})
	t.Run("connection-close", func(t *testing.T) {
		c := dialRaw(t, addr)
		c.send(t, post("bye", "Connection: close\r\n"))
		if resp, got := c.reply(t); got != "bye" || !resp.Close {
			t.Fatalf("%q close=%v", got, resp.Close)
		}
		if !c.closed(t) {
			t.Fatal("the connection stayed open after Connection: close")
		}
	})
	t.Run("100-continue", func(t *testing.T) {
		c := dialRaw(t, addr)
		c.send(t, "POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
		line, err := c.br.ReadString('\n')
		if err != nil || line != "HTTP/1.1 100 Continue\r\n" {
			t.Fatalf("before the body: %q %v, want 100 Continue", line, err)
		}
		if blank, _ := c.br.ReadString('\n'); blank != "\r\n" {
			t.Fatalf("100 Continue followed by %q", blank)
		}
		c.send(t, "body")
		if resp, got := c.reply(t); resp.StatusCode != 200 || got != "body" {
			t.Fatalf("%d %q", resp.StatusCode, got)
		}
	})
	t.Run("100-continue-http1.0", func(t *testing.T) {
		// An HTTP/1.0 client cannot take a 100 Continue: it gets the reply.
		c := dialRaw(t, addr)
		c.send(t, "POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nold")
		if resp, got := c.reply(t); resp.StatusCode != 200 || got != "old" {
			t.Fatalf("%d %q, want 200 old without 100 Continue", resp.StatusCode, got)
		}
	})
	t.Run("100-continue-refused", func(t *testing.T) {
		// A handler that answers without reading: no 100 Continue, and the
		// connection closes (the client may or may not send the body).
		_, addr := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.Error(w, "no", http.StatusUnauthorized)
		}), nil)
		c := dialRaw(t, addr)
		c.send(t, "POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n")
		if resp, _ := c.reply(t); resp.StatusCode != http.StatusUnauthorized || !resp.Close {
			t.Fatalf("%d close=%v, want 401 and close", resp.StatusCode, resp.Close)
		}
		if !c.closed(t) {
			t.Fatal("connection kept although the announced body was never read")
		}
	})
}

// TestServerRefusesBadRequests: what cannot be read is answered with the
// status net/http would give, and the connection closes.
func TestServerRefusesBadRequests(t *testing.T) {
	_, addr := startServer(t, echo, func(s *proxy.Server) { s.MaxHeaderBytes = 1 << 10 })
	for _, tc := range []struct {
		name, req string
		status    int
	}{
		{"garbage", "POST nonsense\r\n\r\n", http.StatusBadRequest},
		{"no-host", "POST / HTTP/1.1\r\nContent-Length: 0\r\n\r\n", http.StatusBadRequest},
		{"two-lengths", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", http.StatusBadRequest},
		{"huge-header", "POST / HTTP/1.1\r\nHost: x\r\nX-Big: " + strings.Repeat("a", 8<<10) + "\r\n\r\n", http.StatusRequestHeaderFieldsTooLarge},
		{"expect-other", "POST / HTTP/1.1\r\nHost: x\r\nExpect: something\r\nContent-Length: 0\r\n\r\n", http.StatusExpectationFailed},
		{"http2-line", "POST / HTTP/2.0\r\nHost: x\r\nContent-Length: 0\r\n\r\n", http.StatusHTTPVersionNotSupported},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := dialRaw(t, addr)
			c.send(t, tc.req)
			resp, _ := c.reply(t)
			if resp.StatusCode != tc.status || !resp.Close {
				t.Fatalf("%d close=%v, want %d and close", resp.StatusCode, resp.Close, tc.status)
			}
			if !c.closed(t) {
				t.Fatal("connection kept after a request that could not be read")
			}
		})
	}
	// The server still serves.
	c := dialRaw(t, addr)
	c.send(t, post("ok"))
	if _, got := c.reply(t); got != "ok" {
		t.Fatalf("after the bad requests: %q", got)
	}
}

// TestServerUnreadBody: a reply sent before the body was read keeps the
// connection only if the rest of the body is small enough to skip.
func TestServerUnreadBody(t *testing.T) {
	_, addr := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "too large", http.StatusRequestEntityTooLarge)
	}), nil)
	c := dialRaw(t, addr)
	c.send(t, post(strings.Repeat("s", 1000)))
	if resp, _ := c.reply(t); resp.StatusCode != http.StatusRequestEntityTooLarge || resp.Close {
		t.Fatalf("small unread body: %d close=%v, want 413 kept", resp.StatusCode, resp.Close)
	}
	c.send(t, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 20000000\r\n\r\n"+strings.Repeat("b", 1<<20))
	if resp, _ := c.reply(t); resp.StatusCode != http.StatusRequestEntityTooLarge || !resp.Close {
		t.Fatalf("20 MB unread body: %d close=%v, want 413 and close", resp.StatusCode, resp.Close)
	}
}

// TestServerHandsOffTheRest: GETs and WebSocket-style requests reach the
// same handler through net/http, also after POSTs on the same connection.
func TestServerHandsOffTheRest(t *testing.T) {
	_, addr := startServer(t, echo, nil)
	c := dialRaw(t, addr)
	c.send(t, post("first"))
	if _, got := c.reply(t); got != "first" {
		t.Fatalf("%q", got)
	}
	c.send(t, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
	if resp, got := c.reply(t); resp.StatusCode != 200 || got != "std GET /metrics" {
		t.Fatalf("GET after POST: %d %q", resp.StatusCode, got)
	}
	c.send(t, post("then")) // net/http keeps the connection now
	if _, got := c.reply(t); got != "then" {
		t.Fatalf("POST on the handed-off connection: %q", got)
	}
	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "std GET /healthz" {
		t.Fatalf("GET: %q", b)
	}
}

// TestServerHandlerPanic: a panicking handler ends its connection without
// a reply; other connections go on. Header values with line breaks are
// flattened and header names that are not tokens are dropped, so a
// handler cannot split a reply.
func TestServerHandlerPanic(t *testing.T) {
	_, addr := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Panic") != "" {
			panic(http.ErrAbortHandler)
		}
		w.Header().Set("X-Split", "a\r\nInjected: yes")
		w.Header()["X-Key\r\nInjected-Too: yes\r\nX"] = []string{"b"}
		w.Header()["Bad Name"] = []string{"c"}
		_, _ = io.WriteString(w, "fine")
	}), nil)
	c := dialRaw(t, addr)
	c.send(t, post("", "X-Panic: 1\r\n"))
	if !c.closed(t) {
		t.Fatal("connection kept after the handler panicked")
	}
	c = dialRaw(t, addr)
	c.send(t, post(""))
	resp, got := c.reply(t)
	if got != "fine" || resp.Header.Get("Injected") != "" || resp.Header.Get("X-Split") != "a  Injected: yes" ||
		resp.Header.Get("Injected-Too") != "" || len(resp.Header.Values("X")) != 0 || resp.Header.Get("Bad Name") != "" {
		t.Fatalf("%q headers %v: a header name or value must not split the reply", got, resp.Header)
	}
}

// TestServerShutdown: requests in flight finish and get their reply (with
// Connection: close), idle connections close, and Shutdown returns once
// they are done; Serve returns http.ErrServerClosed.
func TestServerShutdown(t *testing.T) {
	entered := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	s := &proxy.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("X-Hold") != "" {
			once.Do(func() { close(entered) })
			<-release
		}
		_, _ = io.WriteString(w, "done")
	}), Logger: testLogger()}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	addr := ln.Addr().String()

	idle := dialRaw(t, addr)
	idle.send(t, post(""))
	idle.reply(t)
	busy := dialRaw(t, addr)
	busy.send(t, post("", "X-Hold: 1\r\n"))
	<-entered

	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(context.Background()) }()
	if !idle.closed(t) {
		t.Fatal("an idle connection stayed open during Shutdown")
	}
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned (%v) with a request in flight", err)
	default:
	}
	close(release)
	resp, got := busy.reply(t)
	if got != "done" || !resp.Close {
		t.Fatalf("the request in flight got %q close=%v, want done and close", got, resp.Close)
	}
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-served; !errors.Is(err, http.ErrServerClosed) {
		t.Fatalf("Serve: %v", err)
	}
	if c, err := net.Dial("tcp", addr); err == nil {
		c.Close()
		t.Fatal("the listener still accepts after Shutdown")
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close after Shutdown: %v", err)
	}
}

// TestServerIdleTimeout: a kept connection with no next request closes
// after IdleTimeout, and one that never completes its headers after
// ReadHeaderTimeout.
func TestServerIdleTimeout(t *testing.T) {
	_, addr := startServer(t, echo, func(s *proxy.Server) {
		s.IdleTimeout = 50 * time.Millisecond
		s.ReadHeaderTimeout = 50 * time.Millisecond
	})
	c := dialRaw(t, addr)
	c.send(t, post("x"))
	c.reply(t)
	if !c.closed(t) {
		t.Fatal("an idle connection outlived IdleTimeout")
	}
	c = dialRaw(t, addr)
	c.send(t, "POST / HTTP/1.1\r\nHost: x\r\n") // and never the rest
	if !c.closed(t) {
		t.Fatal("a connection with incomplete headers outlived ReadHeaderTimeout")
	}
}

// TestServerReadTimeout: a client that announces a body and stops sending
// it mid-way is cut off after ReadTimeout (the handler sees the read fail,
// its answer is sent, and the connection closes) instead of holding its
// connection for ever.
func TestServerReadTimeout(t *testing.T) {
	_, addr := startServer(t, echo, func(s *proxy.Server) {
		s.ReadTimeout = 100 * time.Millisecond
	})
	c := dialRaw(t, addr)
	c.send(t, "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"jsonrpc\"") // and never the rest
	resp, body := c.reply(t)
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "timeout") || !resp.Close {
		t.Fatalf("stalled body: %d %q (close %v), want 400 naming the timeout, with Connection: close", resp.StatusCode, body, resp.Close)
	}
	if !c.closed(t) {
		t.Fatal("a connection with a stalled body outlived ReadTimeout")
	}
	// Each request on a kept connection gets its own ReadTimeout, counted
	// from its first byte: a request that comes after a pause longer than
	// ReadTimeout is served. (The pause only lets time pass; the test
	// cannot fail for want of it.)
	c = dialRaw(t, addr)
	for i := range 3 {
		if i > 0 {
			time.Sleep(150 * time.Millisecond)
		}
		c.send(t, post(fmt.Sprint(i)))
		if resp, body := c.reply(t); resp.StatusCode != http.StatusOK || body != fmt.Sprint(i) {
			t.Fatalf("request %d: %d %q", i, resp.StatusCode, body)
		}
	}
}

// FuzzServer: whatever a client sends, the server does not panic, and
// whatever it answers starts as an HTTP/1.x reply (net/http, which takes
// anything that is not a POST, answers HTTP/1.0 requests in kind).
func FuzzServer(f *testing.F) {
	for _, seed := range []string{
		post(`{"jsonrpc":"2.0","id":1,"method":"eth_blockNumber"}`),
		"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nz\r\n",
		"POST / HTTP/1.0\r\n\r\n",
		"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
		"POST  HTTP/1.1\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
	} {
		f.Add(seed)
	}
	s := &proxy.Server{Handler: echo, Logger: testLogger(), ReadHeaderTimeout: time.Second, IdleTimeout: time.Second}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		f.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(ln) }()
	f.Cleanup(func() {
		_ = s.Close()
		<-served
	})
	f.Fuzz(func(t *testing.T, in string) {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = io.WriteString(c, in)
		_ = c.(*net.TCPConn).CloseWrite()
		out, _ := io.ReadAll(c)
		if len(out) > 0 && !strings.HasPrefix(string(out), "HTTP/1.") {
			t.Fatalf("answered %q", out)
		}
	})
}

// TestServerLingersForTheReply: a request refused before its body is read
// gets its reply, and the connection is not reset while the client is
// still sending within lingerTime, however much it sends. A reset there
// fails the client's send, and Go's client then reports the failed send
// instead of the reply it had not parsed yet (a 20 MB body refused with
// 413 came back as "write: broken pipe" one run in a few). The client
// below sends for a while and must see its own write deadline, not a
// reset, and then the reply.
func TestServerLingersForTheReply(t *testing.T) {
	restore := proxy.SetLingerTime(30 * time.Second) // far past the client's deadline below
	t.Cleanup(restore)
	_, addr := startServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.CopyN(io.Discard, r.Body, 64<<10)
		http.Error(w, "too large", http.StatusRequestEntityTooLarge)
	}), nil)

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const size = 256 << 20 // far more than proxy.LingerBytes and the sockets' buffers
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
		t.Fatalf("all %d bytes sent: the server read past proxy.LingerBytes (%d)", sent, proxy.LingerBytes)
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
