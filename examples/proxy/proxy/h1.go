package proxy

// A lean HTTP/1.1 client for reads to a plain-http upstream.
//
// net/http's Transport hands every request to two goroutines of the
// connection (a writer and a reader) and back; with one client at a time
// each hand-off can cost a thread wake-up, which on a small VM is most of
// what the proxy adds to a request's latency. This client writes the
// request and reads the reply in the caller's goroutine, on keep-alive
// connections of its own. It is used only for requests that merely read
// (safeToRepeat), only on http:// URLs without user info; writes, TLS and
// everything else keep net/http (see transportFor).

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"
)

type h1Client struct {
	addr    string // host:port to dial
	head    []byte // request line and fixed headers, up to Content-Length's value
	timeout time.Duration
	dialer  net.Dialer

	mu     sync.Mutex
	idle   []*h1Conn
	closed bool
}

// maxIdleH1 bounds the idle connections kept per upstream (as the
// Transport's MaxIdleConnsPerHost).
const maxIdleH1 = 512

type h1Conn struct {
	c  net.Conn
	br *bufio.Reader
	bw *bufio.Writer
}

// newH1Client returns a client for rawURL, or nil when the URL needs what
// only net/http does (TLS, user info).
func newH1Client(rawURL string, timeout time.Duration) *h1Client {
	u, err := url.Parse(rawURL)
	if err != nil || u.Scheme != "http" || u.User != nil || u.Host == "" {
		return nil
	}
	addr := u.Host
	if u.Port() == "" {
		addr = net.JoinHostPort(u.Hostname(), "80")
	}
	head := "POST " + u.RequestURI() + " HTTP/1.1\r\nHost: " + u.Host +
		"\r\nUser-Agent: steadfast-proxy\r\nContent-Type: application/json\r\nContent-Length: "
	return &h1Client{addr: addr, head: []byte(head), timeout: timeout,
		dialer: net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}}
}

// do posts payload and reads the whole reply into dst (at most limit+1
// bytes: the caller checks the limit). A kept connection that the server
// had closed meanwhile is replaced once by a fresh one; the request only
// reads, so sending it again is safe.
func (h *h1Client) do(ctx context.Context, payload []byte, dst *bytes.Buffer, limit int64) (int, error) {
	for attempt := 0; ; attempt++ {
		x, reused, err := h.get(ctx)
		if err != nil {
			return 0, err
		}
		status, keep, sent, err := h.exchange(ctx, x, payload, dst, limit)
		if keep && err == nil {
			h.put(x)
		} else {
			_ = x.c.Close()
		}
		if err != nil && reused && !sent && attempt == 0 && ctx.Err() == nil {
			dst.Reset()
			continue // a stale keep-alive connection: nothing came back
		}
		return status, err
	}
}

func (h *h1Client) get(ctx context.Context) (*h1Conn, bool, error) {
	h.mu.Lock()
	if n := len(h.idle); n > 0 {
		x := h.idle[n-1]
		h.idle = h.idle[:n-1]
		h.mu.Unlock()
		return x, true, nil
	}
	h.mu.Unlock()
	c, err := h.dialer.DialContext(ctx, "tcp", h.addr)
	if err != nil {
		return nil, false, err
	}
	return &h1Conn{c: c, br: bufio.NewReaderSize(c, 16<<10), bw: bufio.NewWriterSize(c, 16<<10)}, false, nil
}

func (h *h1Client) put(x *h1Conn) {
	h.mu.Lock()
	if h.closed || len(h.idle) >= maxIdleH1 {
		h.mu.Unlock()
		_ = x.c.Close()
		return
	}
	h.idle = append(h.idle, x)
	h.mu.Unlock()
}

// closeIdle closes the idle connections, and every one returned later.
func (h *h1Client) closeIdle() {
	h.mu.Lock()
	idle := h.idle
	h.idle, h.closed = nil, true
	h.mu.Unlock()
	for _, x := range idle {
		_ = x.c.Close()
	}
}

// errStaleConn marks a kept connection that failed before any reply byte.
var errStaleConn = errors.New("kept connection closed by the upstream")

// exchange writes one request on x and reads its reply. sent reports
// whether any of the reply arrived (so the request certainly reached the
// server); keep whether x may be used again.
func (h *h1Client) exchange(ctx context.Context, x *h1Conn, payload []byte, dst *bytes.Buffer, limit int64) (status int, keep, sent bool, err error) {
	if h.timeout > 0 {
		_ = x.c.SetDeadline(time.Now().Add(h.timeout))
	}
	if ctx.Done() != nil {
		stop := context.AfterFunc(ctx, func() { _ = x.c.SetDeadline(time.Unix(1, 0)) })
		defer func() {
			if !stop() { // it ran, or is running: x's deadline is spoilt
				keep = false
			}
		}()
	}
	fail := func(err error) (int, bool, bool, error) {
		if ctx.Err() != nil {
			return 0, false, sent, ctx.Err()
		}
		return 0, false, sent, err
	}
	bw := x.bw
	_, _ = bw.Write(h.head)
	var num [20]byte
	_, _ = bw.Write(strconv.AppendInt(num[:0], int64(len(payload)), 10))
	_, _ = bw.WriteString("\r\n\r\n")
	_, _ = bw.Write(payload)
	if err := bw.Flush(); err != nil {
		return fail(err)
	}
	if _, err := x.br.Peek(1); err != nil {
		if err == io.EOF {
			err = fmt.Errorf("%w: %w", errStaleConn, io.EOF)
		}
		return fail(err)
	}
	sent = true
	resp, err := http.ReadResponse(x.br, nil)
	if err != nil {
		return fail(err)
	}
	if resp.ContentLength > 0 && resp.ContentLength <= limit {
		dst.Grow(int(resp.ContentLength))
	}
	n, err := dst.ReadFrom(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return fail(err)
	}
	if n > limit {
		return resp.StatusCode, false, true, nil // the rest is unread: the connection cannot be reused
	}
	_ = x.c.SetDeadline(time.Time{})
	return resp.StatusCode, !resp.Close, true, nil
}
