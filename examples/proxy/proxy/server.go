package proxy

// A lean HTTP/1.1 server for JSON-RPC POSTs.
//
// For every request, net/http's server starts a goroutine that reads ahead
// on the connection (to notice a client that goes away) and stops it again
// before the next request: a goroutine start, a deadline change and a
// hand-off, each of which can cost a thread wake-up on a small, busy
// machine. A proxy adds that to every request it relays. Server reads a
// POST, runs the handler and writes the reply in the connection's own
// goroutine instead. The proxy's handler does not use the request's
// context (a relayed call must finish or time out on its own terms, not
// end because the client left), so nothing is lost by not reading ahead.
//
// Everything else a client may send on the same address, WebSocket
// upgrades and GET /metrics or /healthz, moves its connection to a
// net/http server with the same handler for the rest of the connection's
// life, with the bytes already read in front.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Server serves an http.Handler (the proxy's: see Proxy.Handler) on
// listeners. POST requests over HTTP/1.x take the lean path described
// above; there the handler gets a ResponseWriter that holds the reply
// until the handler returns and then writes it with a Content-Length, and
// that implements neither http.Flusher nor http.Hijacker. Any other
// request moves its connection to an http.Server with the same handler
// and limits.
//
// Set the fields before the first call to Serve and do not change them
// afterwards. A Server serves until Shutdown or Close; it cannot be
// restarted.
type Server struct {
	Handler http.Handler
	// ReadHeaderTimeout bounds reading a request's headers (10 s when 0).
	ReadHeaderTimeout time.Duration
	// ReadTimeout bounds reading a whole request, headers and body (no
	// bound when 0, as in net/http).
	ReadTimeout time.Duration
	// WriteTimeout bounds writing a reply (no bound when 0).
	WriteTimeout time.Duration
	// IdleTimeout bounds the wait for the next request on a kept
	// connection (2 min when 0).
	IdleTimeout time.Duration
	// MaxHeaderBytes bounds a request's line and headers
	// (http.DefaultMaxHeaderBytes when 0).
	MaxHeaderBytes int
	// Logger receives handler panics (slog.Default() when nil).
	Logger *slog.Logger

	init     sync.Once
	std      *http.Server
	handoff  *connQueue
	stdDone  chan struct{}
	ctx      context.Context // the requests' context; ends at Close
	cancel   context.CancelFunc
	mu       sync.Mutex
	lns      map[net.Listener]struct{}
	conns    map[*leanConn]bool // value: idle (waiting for a request)
	shutdown bool
	wg       sync.WaitGroup // Serve loops and connection goroutines
}

const (
	defaultReadHeaderTimeout = 10 * time.Second
	defaultIdleTimeout       = 2 * time.Minute
	maxDrain                 = 256 << 10 // unread body bytes skipped to keep a connection
	lingerBytes              = 4 << 20   // unread body bytes discarded before a close
)

// lingerTime is how long a connection closed with its request unread
// stays half-open for the client to read the reply (as net/http's 500 ms);
// a variable so that a test can stretch it.
var lingerTime = 500 * time.Millisecond

func (s *Server) setup() {
	s.init.Do(func() {
		if s.ReadHeaderTimeout <= 0 {
			s.ReadHeaderTimeout = defaultReadHeaderTimeout
		}
		if s.IdleTimeout <= 0 {
			s.IdleTimeout = defaultIdleTimeout
		}
		if s.MaxHeaderBytes <= 0 {
			s.MaxHeaderBytes = http.DefaultMaxHeaderBytes
		}
		if s.Logger == nil {
			s.Logger = slog.Default()
		}
		s.ctx, s.cancel = context.WithCancel(context.Background())
		s.lns = map[net.Listener]struct{}{}
		s.conns = map[*leanConn]bool{}
		s.handoff = newConnQueue()
		s.std = &http.Server{
			Handler:           s.Handler,
			ReadHeaderTimeout: s.ReadHeaderTimeout,
			ReadTimeout:       s.ReadTimeout,
			WriteTimeout:      s.WriteTimeout,
			IdleTimeout:       s.IdleTimeout,
			MaxHeaderBytes:    s.MaxHeaderBytes,
			ErrorLog:          slog.NewLogLogger(s.Logger.Handler(), slog.LevelWarn),
		}
		s.stdDone = make(chan struct{})
		go func() {
			defer close(s.stdDone)
			_ = s.std.Serve(s.handoff)
		}()
	})
}

// Serve accepts connections on ln until Shutdown or Close, which close
// it; it then returns http.ErrServerClosed. Other accept errors end it
// too, after retries with a growing pause for temporary ones.
func (s *Server) Serve(ln net.Listener) error {
	s.setup()
	s.mu.Lock()
	if s.shutdown {
		s.mu.Unlock()
		_ = ln.Close()
		return http.ErrServerClosed
	}
	s.lns[ln] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer s.wg.Done()
	defer func() {
		s.mu.Lock()
		delete(s.lns, ln)
		s.mu.Unlock()
	}()
	var pause time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			done := s.shutdown
			s.mu.Unlock()
			if done {
				return http.ErrServerClosed
			}
			// Out of file descriptors, say: pause and go on, as net/http.
			var te interface{ Temporary() bool }
			if errors.As(err, &te) && te.Temporary() {
				pause = min(max(2*pause, 5*time.Millisecond), time.Second)
				s.Logger.Warn("accept failed; retrying", "err", err, "in", pause)
				select {
				case <-time.After(pause):
				case <-s.ctx.Done():
				}
				continue
			}
			_ = ln.Close()
			return err
		}
		pause = 0
		lc := &leanConn{s: s, c: c}
		s.mu.Lock()
		if s.shutdown {
			s.mu.Unlock()
			_ = c.Close()
			continue
		}
		s.conns[lc] = true
		s.wg.Add(1)
		s.mu.Unlock()
		go lc.serve()
	}
}

// Shutdown closes the listeners and the idle connections, lets the
// requests in flight finish (their connections then close), and shuts the
// net/http side down the same way. It returns ctx's error if ctx ends
// first; Close then ends the rest.
func (s *Server) Shutdown(ctx context.Context) error {
	s.setup()
	s.mu.Lock()
	s.shutdown = true
	for ln := range s.lns {
		_ = ln.Close()
	}
	for lc, idle := range s.conns {
		if idle {
			_ = lc.c.Close()
		}
	}
	s.mu.Unlock()
	s.handoff.Close()
	stdErr := s.std.Shutdown(ctx)
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		return ctx.Err()
	}
	<-s.stdDone
	return stdErr
}

// Close closes the listeners and every connection at once, in flight or
// not, ends the requests' context, and waits for the connections'
// goroutines.
func (s *Server) Close() error {
	s.setup()
	s.mu.Lock()
	s.shutdown = true
	for ln := range s.lns {
		_ = ln.Close()
	}
	for lc := range s.conns {
		_ = lc.c.Close()
	}
	s.mu.Unlock()
	s.cancel()
	s.handoff.Close()
	err := s.std.Close()
	s.wg.Wait()
	<-s.stdDone
	return err
}

// setIdle records whether lc waits for a request. A connection that
// becomes busy once Shutdown has begun is refused: it reports false.
func (s *Server) setIdle(lc *leanConn, idle bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.shutdown {
		return false
	}
	s.conns[lc] = idle
	return true
}

func (s *Server) forget(lc *leanConn) {
	s.mu.Lock()
	delete(s.conns, lc)
	s.mu.Unlock()
	s.wg.Done()
}

// leanConn is one client connection on the lean path.
type leanConn struct {
	s   *Server
	c   net.Conn
	lim limitedReader
	br  *bufio.Reader
	w   leanWriter
}

// limitedReader reads from a connection and reports EOF once n bytes have
// been read: it bounds a request's headers (n is raised for its body).
type limitedReader struct {
	r io.Reader
	n int64
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > l.n {
		p = p[:l.n]
	}
	n, err := l.r.Read(p)
	l.n -= int64(n)
	return n, err
}

const unlimited = 1 << 62

func (lc *leanConn) serve() {
	handedOff := false
	defer func() {
		if !handedOff {
			_ = lc.c.Close()
		}
		lc.s.forget(lc)
	}()
	lc.lim = limitedReader{r: lc.c, n: unlimited}
	lc.br = bufio.NewReaderSize(&lc.lim, 4<<10)
	wait := lc.s.ReadHeaderTimeout // for the first request, as net/http
	for {
		if !lc.s.setIdle(lc, true) {
			return
		}
		// The request line and headers, with what bufio reads ahead,
		// stay within the limit (as net/http: room for the request line).
		lc.lim.n = int64(lc.s.MaxHeaderBytes) + 4096
		_ = lc.c.SetReadDeadline(time.Now().Add(wait))
		wait = lc.s.IdleTimeout
		if _, err := lc.br.Peek(1); err != nil {
			return // closed, idle too long, or Shutdown closed it
		}
		if !lc.s.setIdle(lc, false) {
			return
		}
		start := time.Now()
		_ = lc.c.SetReadDeadline(start.Add(lc.s.ReadHeaderTimeout))
		lead, err := lc.br.Peek(5)
		if err != nil {
			return
		}
		if string(lead) != "POST " {
			// Not ours: net/http takes the connection, bytes read included.
			lc.lim.n = unlimited
			if lc.s.handoff.push(&prefixedConn{Conn: lc.c, br: lc.br}) {
				handedOff = true
			}
			return
		}
		if !lc.serveOne(start) {
			return
		}
	}
}

// serveOne reads one request, answers it, and reports whether the
// connection may carry another.
func (lc *leanConn) serveOne(start time.Time) bool {
	s := lc.s
	req, err := http.ReadRequest(lc.br)
	headerBytesLeft := lc.lim.n
	lc.lim.n = unlimited
	if err != nil {
		switch {
		case headerBytesLeft <= 0:
			lc.writeError(http.StatusRequestHeaderFieldsTooLarge, "431 request header fields too large")
		case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), isTimeout(err):
			// The client went away or stalled mid-request: no one to tell.
		default:
			lc.writeError(http.StatusBadRequest, "400 bad request: "+err.Error())
		}
		return false
	}
	if req.ProtoMajor != 1 {
		lc.writeError(http.StatusHTTPVersionNotSupported, "505 HTTP version not supported")
		return false
	}
	if req.ProtoMinor >= 1 && len(req.Header["Host"]) == 0 && req.Host == "" {
		lc.writeError(http.StatusBadRequest, "400 bad request: missing required Host header")
		return false
	}
	if s.ReadTimeout > 0 {
		_ = lc.c.SetReadDeadline(start.Add(s.ReadTimeout))
	} else {
		_ = lc.c.SetReadDeadline(time.Time{})
	}
	var cont *continueReader
	if e := req.Header.Get("Expect"); e != "" {
		// As net/http: 100-continue is honoured from HTTP/1.1 clients that
		// announce a body, ignored otherwise; any other expectation fails.
		if !strings.EqualFold(e, "100-continue") {
			lc.writeError(http.StatusExpectationFailed, "417 expectation failed")
			return false
		}
		if req.ProtoMinor >= 1 && req.ContentLength != 0 {
			cont = &continueReader{body: req.Body, c: lc.c}
			req.Body = cont
		}
		req.Header.Del("Expect")
	}
	body := req.Body
	req.RemoteAddr = lc.c.RemoteAddr().String()
	req = req.WithContext(s.ctx)

	lc.w.reset()
	if !lc.run(req) {
		return false
	}
	keep := !req.Close && !strings.EqualFold(lc.w.h.Get("Connection"), "close")
	unread := false
	switch {
	case cont != nil && !cont.sent:
		keep = false // the client may or may not send the body it announced
	case keep:
		// Skip what the handler left unread, within reason.
		if n, err := io.CopyN(io.Discard, body, maxDrain+1); n > maxDrain || !errors.Is(err, io.EOF) {
			keep, unread = false, true
		}
	}
	s.mu.Lock()
	if s.shutdown {
		keep = false
	}
	s.mu.Unlock()
	if s.WriteTimeout > 0 {
		_ = lc.c.SetWriteDeadline(time.Now().Add(s.WriteTimeout))
	}
	if err := lc.w.flush(lc.c, req.ProtoMinor == 0, !keep); err != nil {
		return false
	}
	if unread {
		lc.linger()
	}
	if s.WriteTimeout > 0 {
		_ = lc.c.SetWriteDeadline(time.Time{})
	}
	return keep
}

// run calls the handler; a panic is logged (http.ErrAbortHandler
// silently) and ends the connection without a reply, as net/http does.
func (lc *leanConn) run(req *http.Request) (ok bool) {
	defer func() {
		if v := recover(); v != nil {
			ok = false
			if v != http.ErrAbortHandler {
				lc.s.Logger.Error("http handler panicked", "remote", req.RemoteAddr, "panic", v, "stack", string(debug.Stack()))
			}
		}
	}()
	lc.s.Handler.ServeHTTP(&lc.w, req)
	return true
}

// writeError answers a request that could not be read, and the connection
// then closes.
func (lc *leanConn) writeError(status int, msg string) {
	if lc.s.WriteTimeout > 0 {
		_ = lc.c.SetWriteDeadline(time.Now().Add(lc.s.WriteTimeout))
	} else {
		_ = lc.c.SetWriteDeadline(time.Now().Add(5 * time.Second))
	}
	lc.w.reset()
	lc.w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	lc.w.WriteHeader(status)
	_, _ = lc.w.Write([]byte(msg + "\n"))
	if lc.w.flush(lc.c, false, true) == nil {
		lc.linger()
	}
}

// linger ends the sending side and gives the client lingerTime to read
// the reply before the connection closes: closing with unread bytes makes
// the kernel reset the connection, and a reset that reaches a client
// still sending its body fails that send, which many clients (Go's among
// them) report instead of the reply they have not parsed yet. It discards
// up to lingerBytes of what the client still sends; past that it stops
// reading, so the client's sends block rather than fail, and waits out
// the rest of lingerTime (or until Close).
func (lc *leanConn) linger() {
	if cw, ok := lc.c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	deadline := time.Now().Add(lingerTime)
	_ = lc.c.SetReadDeadline(deadline)
	n, err := io.Copy(io.Discard, io.LimitReader(lc.c, lingerBytes))
	if err != nil || n < lingerBytes {
		return // the client closed its side, or lingerTime is over
	}
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-t.C:
	case <-lc.s.ctx.Done():
	}
}

// continueReader sends "100 Continue" before the first read of a body
// whose client waits for it.
type continueReader struct {
	body io.ReadCloser
	c    net.Conn
	sent bool
	err  error
}

func (r *continueReader) Read(p []byte) (int, error) {
	if !r.sent {
		r.sent = true
		if _, r.err = io.WriteString(r.c, "HTTP/1.1 100 Continue\r\n\r\n"); r.err != nil {
			return 0, r.err
		}
	}
	if r.err != nil {
		return 0, r.err
	}
	return r.body.Read(p)
}

func (r *continueReader) Close() error { return r.body.Close() }

// leanWriter is the ResponseWriter of the lean path: it holds the reply
// and writes it when the handler has returned.
type leanWriter struct {
	h      http.Header
	status int
	body   bytes.Buffer
	out    []byte
}

func (w *leanWriter) reset() {
	if w.h == nil {
		w.h = make(http.Header, 4)
	} else {
		clear(w.h)
	}
	w.status = 0
	if w.body.Cap() > 64<<10 {
		w.body = bytes.Buffer{} // do not keep a large reply's buffer for a connection's life
	}
	w.body.Reset()
}

func (w *leanWriter) Header() http.Header { return w.h }

func (w *leanWriter) WriteHeader(status int) {
	if w.status != 0 || status < 200 { // informational replies are not sent on this path
		return
	}
	w.status = status
}

func (w *leanWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if !bodyAllowed(w.status) {
		return 0, http.ErrBodyNotAllowed
	}
	return w.body.Write(b)
}

func bodyAllowed(status int) bool {
	return status != http.StatusNoContent && status != http.StatusNotModified
}

// flush writes the status line, the headers and the body; http10 keeps
// an HTTP/1.0 client's connection with an explicit keep-alive.
func (w *leanWriter) flush(c net.Conn, http10, closing bool) error {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	b := append(w.out[:0], "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(w.status), 10)
	b = append(b, ' ')
	if text := http.StatusText(w.status); text != "" {
		b = append(b, text...)
	} else {
		b = append(b, "status code "...)
		b = strconv.AppendInt(b, int64(w.status), 10)
	}
	b = append(b, "\r\n"...)
	if w.body.Len() > 0 && w.h.Get("Content-Type") == "" {
		w.h.Set("Content-Type", http.DetectContentType(w.body.Bytes()))
	}
	for k, vs := range w.h {
		if !validHeaderName(k) {
			continue // dropped, as net/http does: it could split the reply
		}
		switch http.CanonicalHeaderKey(k) {
		case "Content-Length", "Transfer-Encoding", "Connection", "Date":
			continue // set below from what is actually sent
		}
		for _, v := range vs {
			b = appendHeader(b, k, v)
		}
	}
	b = append(b, "Date: "...)
	b = time.Now().UTC().AppendFormat(b, http.TimeFormat)
	b = append(b, "\r\n"...)
	if bodyAllowed(w.status) {
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, int64(w.body.Len()), 10)
		b = append(b, "\r\n"...)
	}
	switch {
	case closing:
		b = append(b, "Connection: close\r\n"...)
	case http10:
		b = append(b, "Connection: keep-alive\r\n"...)
	}
	b = append(b, "\r\n"...)
	b = append(b, w.body.Bytes()...)
	w.out = b
	if cap(w.out) > 64<<10 {
		w.out = nil
	}
	_, err := c.Write(b)
	return err
}

// validHeaderName reports whether k is an HTTP token (RFC 9110 5.1), the
// only thing that may stand before a header's colon.
func validHeaderName(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// appendHeader writes one header line; line breaks in a value become
// spaces, so a handler cannot split the reply.
func appendHeader(b []byte, k, v string) []byte {
	b = append(b, k...)
	b = append(b, ": "...)
	for i := 0; i < len(v); i++ {
		if c := v[i]; c == '\r' || c == '\n' {
			b = append(b, ' ')
		} else {
			b = append(b, c)
		}
	}
	return append(b, "\r\n"...)
}

// prefixedConn is a connection handed to net/http with the bytes that
// were already read from it in front.
type prefixedConn struct {
	net.Conn
	br *bufio.Reader
}

func (c *prefixedConn) Read(p []byte) (int, error) {
	if c.br != nil {
		if c.br.Buffered() > 0 {
			return c.br.Read(p)
		}
		c.br = nil // drained: read the connection directly from now on
	}
	return c.Conn.Read(p)
}

// connQueue is the net.Listener through which connections move to the
// net/http server.
type connQueue struct {
	ch   chan net.Conn
	done chan struct{}
	once sync.Once
}

func newConnQueue() *connQueue {
	return &connQueue{ch: make(chan net.Conn), done: make(chan struct{})}
}

// push hands c over; it reports false (and closes c) once the queue is
// closed.
func (q *connQueue) push(c net.Conn) bool {
	select {
	case q.ch <- c:
		return true
	case <-q.done:
		_ = c.Close()
		return false
	}
}

func (q *connQueue) Accept() (net.Conn, error) {
	select {
	case c := <-q.ch:
		return c, nil
	case <-q.done:
		return nil, net.ErrClosed
	}
}

func (q *connQueue) Close() error {
	q.once.Do(func() { close(q.done) })
	return nil
}

func (q *connQueue) Addr() net.Addr { return queueAddr{} }

type queueAddr struct{}

func (queueAddr) Network() string { return "steadfast-handoff" }
func (queueAddr) String() string  { return "handoff" }
