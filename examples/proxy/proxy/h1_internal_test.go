package proxy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// rawServer accepts on loopback and runs handle for each connection; it
// counts connections and stops (closing every connection) at cleanup.
type rawServer struct {
	ln    net.Listener
	conns atomic.Int64
	wg    sync.WaitGroup
	mu    sync.Mutex
	open  []net.Conn
}

func startRaw(t *testing.T, handle func(c net.Conn, br *bufio.Reader)) *rawServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &rawServer{ln: ln}
	s.wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.conns.Add(1)
			s.mu.Lock()
			s.open = append(s.open, c)
			s.mu.Unlock()
			s.wg.Go(func() {
				defer c.Close()
				handle(c, bufio.NewReader(c))
			})
		}
	})
	t.Cleanup(func() {
		_ = ln.Close()
		s.mu.Lock()
		for _, c := range s.open {
			_ = c.Close()
		}
		s.mu.Unlock()
		s.wg.Wait()
	})
	return s
}

func (s *rawServer) url() string { return "http://" + s.ln.Addr().String() + "/rpc" }

// readReq reads one request and its body; false at the end of the
// connection.
func readReq(br *bufio.Reader) (*http.Request, []byte, bool) {
	req, err := http.ReadRequest(br)
	if err != nil {
		return nil, nil, false
	}
	body, err := io.ReadAll(req.Body)
	return req, body, err == nil
}

const okReply = `{"jsonrpc":"2.0","id":1,"result":"0x1"}`

func writeOK(c net.Conn, extraHeader string) {
	fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n%sContent-Length: %d\r\n\r\n%s", extraHeader, len(okReply), okReply)
}

func TestH1KeepsOneConnectionAndSendsTheRequest(t *testing.T) {
	var got []string
	var mu sync.Mutex
	s := startRaw(t, func(c net.Conn, br *bufio.Reader) {
		for {
			req, body, ok := readReq(br)
			if !ok {
				return
			}
			mu.Lock()
			got = append(got, req.Method+" "+req.URL.Path+" "+req.Header.Get("Content-Type")+" "+string(body))
			mu.Unlock()
			writeOK(c, "")
		}
	})
	h := newH1Client(s.url(), time.Minute)
	defer h.closeIdle()
	for i := range 20 {
		var dst bytes.Buffer
		payload := fmt.Sprintf(`{"jsonrpc":"2.0","id":%d,"method":"eth_blockNumber"}`, i)
		st, err := h.do(context.Background(), []byte(payload), &dst, 1<<20)
		if err != nil || st != 200 || dst.String() != okReply {
			t.Fatalf("request %d: %d %q %v", i, st, dst.String(), err)
		}
		mu.Lock()
		if want := "POST /rpc application/json " + payload; got[i] != want {
			t.Fatalf("server got %q, want %q", got[i], want)
		}
		mu.Unlock()
	}
	if n := s.conns.Load(); n != 1 {
		t.Fatalf("%d connections for 20 sequential requests, want 1", n)
	}
}

// TestH1ReplacesAConnectionTheServerClosed: a server that closes each
// connection after one reply (without saying so) leaves a stale kept
// connection every time; every request still succeeds, once each.
func TestH1ReplacesAConnectionTheServerClosed(t *testing.T) {
	var reqs atomic.Int64
	s := startRaw(t, func(c net.Conn, br *bufio.Reader) {
		if _, _, ok := readReq(br); ok {
			reqs.Add(1)
			writeOK(c, "")
		}
	})
	h := newH1Client(s.url(), time.Minute)
	defer h.closeIdle()
	for i := range 10 {
		var dst bytes.Buffer
		if st, err := h.do(context.Background(), []byte(`{}`), &dst, 1<<20); err != nil || st != 200 {
			t.Fatalf("request %d: %d %v", i, st, err)
		}
	}
	if n := reqs.Load(); n != 10 {
		t.Fatalf("server answered %d requests for 10", n)
	}
}

// TestH1NeverRepeatsARequestThatGotAnAnswerStarted: a reply cut off
// midway is an error, and the request is not sent again.
func TestH1NeverRepeatsARequestThatGotAnAnswerStarted(t *testing.T) {
	var reqs atomic.Int64
	s := startRaw(t, func(c net.Conn, br *bufio.Reader) {
		for {
			if _, _, ok := readReq(br); !ok {
				return
			}
			if reqs.Add(1) == 1 {
				writeOK(c, "") // the first: kept
				continue
			}
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"jsonrpc\"")
			return
		}
	})
	h := newH1Client(s.url(), time.Minute)
	defer h.closeIdle()
	var dst bytes.Buffer
	if _, err := h.do(context.Background(), []byte(`{}`), &dst, 1<<20); err != nil {
		t.Fatal(err)
	}
	dst.Reset()
	_, err := h.do(context.Background(), []byte(`{}`), &dst, 1<<20)
	if err == nil || !isConnError(err) {
		t.Fatalf("cut reply: %v, want a connection error", err)
	}
	if n := reqs.Load(); n != 2 {
		t.Fatalf("server got %d requests, want 2", n)
	}
}

func TestH1ReadsChunkedRepliesAndStopsAtTheLimit(t *testing.T) {
	big := strings.Repeat("x", 5000)
	s := startRaw(t, func(c net.Conn, br *bufio.Reader) {
		for {
			req, _, ok := readReq(br)
			if !ok {
				return
			}
			body := okReply
			if req.URL.Query().Get("big") != "" {
				body = `{"jsonrpc":"2.0","id":1,"result":"` + big + `"}`
			}
			_, _ = io.WriteString(c, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
			for len(body) > 0 {
				n := min(len(body), 7)
				fmt.Fprintf(c, "%x\r\n%s\r\n", n, body[:n])
				body = body[n:]
			}
			_, _ = io.WriteString(c, "0\r\n\r\n")
		}
	})
	h := newH1Client(s.url(), time.Minute)
	defer h.closeIdle()
	for range 3 {
		var dst bytes.Buffer
		if st, err := h.do(context.Background(), []byte(`{}`), &dst, 1<<20); err != nil || st != 200 || dst.String() != okReply {
			t.Fatalf("chunked reply: %d %q %v", st, dst.String(), err)
		}
	}
	if n := s.conns.Load(); n != 1 {
		t.Fatalf("%d connections for 3 chunked replies, want 1", n)
	}
	hb := newH1Client(s.url()+"?big=1", time.Minute)
	defer hb.closeIdle()
	var dst bytes.Buffer
	if _, err := hb.do(context.Background(), []byte(`{}`), &dst, 1000); err != nil || dst.Len() != 1001 {
		t.Fatalf("reply over the limit: read %d bytes, %v; want 1001 (the caller's signal)", dst.Len(), err)
	}
	if len(hb.idle) != 0 {
		t.Fatal("a connection with an unread reply was kept")
	}
}

// TestH1CancelAndTimeoutEndAHungRequest: a server that never answers is
// left when the context ends (context.Canceled) or the timeout passes (a
// timeout error).
func TestH1CancelAndTimeoutEndAHungRequest(t *testing.T) {
	got := make(chan struct{}, 4)
	s := startRaw(t, func(c net.Conn, br *bufio.Reader) {
		if _, _, ok := readReq(br); ok {
			got <- struct{}{}
			_, _ = io.Copy(io.Discard, br) // until the client gives up
		}
	})
	h := newH1Client(s.url(), time.Minute)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		var dst bytes.Buffer
		_, err := h.do(ctx, []byte(`{}`), &dst, 1<<20)
		done <- err
	}()
	<-got
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled request: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("cancel did not end the request")
	}
	ht := newH1Client(s.url(), 50*time.Millisecond)
	var dst bytes.Buffer
	if _, err := ht.do(context.Background(), []byte(`{}`), &dst, 1<<20); !isTimeout(err) {
		t.Fatalf("hung request with a 50 ms timeout: %v, want a timeout", err)
	}
}

func TestH1OnlyForPlainHTTP(t *testing.T) {
	for _, u := range []string{"https://node:8545", "http://user:pw@node:8545", "ws://node", "::"} {
		if newH1Client(u, time.Second) != nil {
			t.Errorf("%s: want net/http", u)
		}
	}
	h := newH1Client("http://node", time.Second)
	if h == nil || h.addr != "node:80" || !bytes.HasPrefix(h.head, []byte("POST / HTTP/1.1\r\nHost: node\r\n")) {
		t.Fatalf("http://node: %+v", h)
	}
}
