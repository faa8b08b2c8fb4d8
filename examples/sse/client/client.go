// Package client is a Go client of the SSE chat server (examples/sse), built
// on steadfast's sendqueue. It is what the origin's browser client should
// have been:
//
//   - the event stream reconnects with back-off and resumes by Last-Event-ID,
//     so nothing is lost or repeated across disconnects and server restarts;
//   - sends are queued (capped, FIFO) while disconnected and flushed in
//     order on reconnect; a send that fails with 404, 5xx or a network error
//     stays at the head of the queue and is retried, never re-enqueued
//     behind newer ones; each carries an idempotency key so a retry after a
//     lost response is executed once;
//   - stop and interrupt are fire-and-forget: one attempt, never retried;
//   - anything given up on (a dropped, evicted or abandoned send) is passed
//     to Config.OnReport, never dropped silently.
//
// Usage:
//
//	id, _ := client.CreateSession(ctx, nil, "http://127.0.0.1:8080")
//	c, _ := client.New(client.Config{BaseURL: "http://127.0.0.1:8080", Session: id,
//		OnEvent: func(ev client.Event) { fmt.Println(ev.Type, string(ev.Data)) }})
//	defer c.Close()
//	t, _ := c.Send("hello")
//	t.Wait(ctx) // delivered (stored by the server, once)
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/steadfast-go/steadfast/examples/sse/wire"
	"github.com/steadfast-go/steadfast/sendqueue"
)

// Defaults of Config.
const (
	DefaultReconnectMin = 100 * time.Millisecond
	DefaultReconnectMax = 5 * time.Second
)

// Event is one event of the session stream. Data is the JSON payload. ID is
// "<epoch>:<seq>" for stored events; gap, reset, and cutoff events carry
// the cursor the stream continues from (or none); see package server for
// the types.
type Event struct {
	ID   string
	Type string
	Data []byte
}

// Kind says what a queued request does.
type Kind string

// The kinds of queued requests.
const (
	KindSend      Kind = "send"
	KindStop      Kind = "stop"
	KindInterrupt Kind = "interrupt"
)

// Request is a queued request to the server.
type Request struct {
	Kind Kind
	Text string // for KindSend
}

// Report tells about a request the client gave up on: dropped (the server
// refused it), given up (a stop or interrupt whose one attempt failed),
// evicted, or still queued at Close.
type Report struct {
	Key      string
	Request  Request
	Err      error // wraps a sendqueue error (ErrDropped, ErrGaveUp, ...)
	Attempts int
}

// Config configures a Client. BaseURL and Session are required.
type Config struct {
	BaseURL string // e.g. "http://127.0.0.1:8080"
	Session string
	// Cursor is where to resume the stream from ("" for the beginning).
	Cursor string
	// HTTPClient is used for every request; nil means a client with no
	// overall timeout (the stream is long-lived).
	HTTPClient *http.Client
	// OnEvent receives every stream event, in order, from one goroutine.
	OnEvent func(Event)
	// OnConnect is told when the stream connects (true) or drops (false).
	OnConnect func(connected bool)
	// OnReport receives every request the client gave up on; nil logs them
	// with slog at Warn level.
	OnReport func(Report)
	// ReconnectMin and ReconnectMax bound the stream's reconnect back-off.
	ReconnectMin, ReconnectMax time.Duration
	// SendBackOff is the wait between attempts of a failed send; nil means
	// sendqueue's default. It must not be shared between clients.
	SendBackOff sendqueue.BackOff
	// SendCapacity caps the queued requests (default sendqueue.DefaultCapacity).
	SendCapacity int
	// RequestTimeout bounds each POST (default 10 s).
	RequestTimeout time.Duration
}

// Client follows one session. It is safe for concurrent use; create it with
// New and stop it with Close. Requests are sent one at a time in the order
// they were made; stream events are delivered in stream order.
type Client struct {
	cfg    Config
	hc     *http.Client
	ownTr  *http.Transport // the transport New made (closed by Close), or nil
	q      *sendqueue.Queue[Request]
	cancel context.CancelFunc
	done   chan struct{}

	mu        sync.Mutex // protects cursor, connected, ended
	cursor    string
	connected bool
	ended     bool
}

// ErrSessionEnded is returned by Send after the stream reported the end of
// the session.
var ErrSessionEnded = errors.New("client: session ended")

// New starts following cfg.Session: it connects the stream and starts the
// send queue.
//
// Errors: a description of a missing BaseURL or Session.
func New(cfg Config) (*Client, error) {
	if cfg.BaseURL == "" || cfg.Session == "" {
		return nil, errors.New("client: BaseURL and Session are required")
	}
	cfg.BaseURL = strings.TrimRight(cfg.BaseURL, "/")
	if cfg.ReconnectMin <= 0 {
		cfg.ReconnectMin = DefaultReconnectMin
	}
	if cfg.ReconnectMax <= 0 {
		cfg.ReconnectMax = DefaultReconnectMax
	}
	if cfg.RequestTimeout <= 0 {
		cfg.RequestTimeout = 10 * time.Second
	}
	c := &Client{cfg: cfg, hc: cfg.HTTPClient, cursor: cfg.Cursor, done: make(chan struct{})}
	if c.hc == nil {
		c.ownTr = http.DefaultTransport.(*http.Transport).Clone()
		c.hc = &http.Client{Transport: c.ownTr}
	}
	opts := []sendqueue.Option[Request]{sendqueue.WithReport(c.report)}
	if cfg.SendBackOff != nil {
		opts = append(opts, sendqueue.WithBackOff[Request](cfg.SendBackOff))
	}
	if cfg.SendCapacity > 0 {
		opts = append(opts, sendqueue.WithCapacity[Request](cfg.SendCapacity))
	}
	c.q = sendqueue.New(c.post, opts...)
	c.q.Pause() // until the stream is connected
	ctx, cancel := context.WithCancel(context.Background())
	c.cancel = cancel
	go c.streamLoop(ctx)
	return c, nil
}

func (c *Client) report(r sendqueue.Report[Request]) {
	rep := Report{Key: r.Item.Key, Request: r.Item.Value, Err: r.Err, Attempts: r.Attempts}
	if c.cfg.OnReport != nil {
		c.cfg.OnReport(rep)
		return
	}
	slog.Warn("sse client gave up on a request", "kind", rep.Request.Kind, "key", rep.Key, "err", rep.Err)
}

// Send queues a user message with a new idempotency key and returns its
// ticket: Delivered once the server stored it (exactly once, however many
// attempts it took).
//
// Errors: ErrSessionEnded, or sendqueue.ErrFull, ErrClosed.
func (c *Client) Send(text string) (*sendqueue.Ticket, error) {
	return c.SendKey("", text)
}

// SendKey is Send with the caller's idempotency key ("" generates one).
//
// Errors: as Send.
func (c *Client) SendKey(key, text string) (*sendqueue.Ticket, error) {
	c.mu.Lock()
	ended := c.ended
	c.mu.Unlock()
	if ended {
		return nil, ErrSessionEnded
	}
	return c.q.Push(sendqueue.Item[Request]{Key: key, Value: Request{Kind: KindSend, Text: text}})
}

// Stop queues a stop request: fire-and-forget, one attempt in its turn.
//
// Errors: sendqueue.ErrFull, ErrClosed.
func (c *Client) Stop() (*sendqueue.Ticket, error) {
	return c.q.Push(sendqueue.Item[Request]{Policy: sendqueue.FireAndForget, Value: Request{Kind: KindStop}})
}

// Interrupt queues an interrupt request: fire-and-forget, one attempt.
//
// Errors: sendqueue.ErrFull, ErrClosed.
func (c *Client) Interrupt() (*sendqueue.Ticket, error) {
	return c.q.Push(sendqueue.Item[Request]{Policy: sendqueue.FireAndForget, Value: Request{Kind: KindInterrupt}})
}

// Pending returns the number of queued requests.
func (c *Client) Pending() int { return c.q.Len() }

// Flush waits until every queued request has settled.
//
// Errors: ctx.Err(), or sendqueue.ErrClosed.
func (c *Client) Flush(ctx context.Context) error { return c.q.Flush(ctx) }

// Cursor returns the id of the last event received: where the stream
// resumes from.
func (c *Client) Cursor() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.cursor
}

// Connected reports whether the stream is connected.
func (c *Client) Connected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.connected
}

// Close stops the stream and the send queue and waits for their
// goroutines; a request being posted is canceled. Requests still queued are
// reported once (OnReport, with sendqueue.ErrClosed), not returned. Call
// Flush first to deliver them. Close always returns nil.
func (c *Client) Close() error {
	c.cancel()
	<-c.done
	err := c.q.Close()
	if c.ownTr != nil {
		c.ownTr.CloseIdleConnections()
	}
	return err
}

// post is the queue's send function.
func (c *Client) post(ctx context.Context, it sendqueue.Item[Request]) error {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.RequestTimeout)
	defer cancel()
	url := c.cfg.BaseURL + "/sessions/" + c.cfg.Session + "/" + string(it.Value.Kind)
	var body io.Reader
	if it.Value.Kind == KindSend {
		b, err := json.Marshal(struct {
			Text string `json:"text"`
			Key  string `json:"idempotency_key"`
		}{it.Value.Text, it.Key})
		if err != nil {
			return err
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, body)
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return err // network: retried (Retry items) by the classifier
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode/100 == 2 || inProgress(resp.StatusCode, msg) {
		return nil
	}
	return &sendqueue.HTTPError{StatusCode: resp.StatusCode, Body: strings.TrimSpace(string(msg))}
}

// inProgress reports a 409 answer to a retried send whose original is
// still queued or running on the server: the message was accepted, so the
// send is delivered.
func inProgress(code int, body []byte) bool {
	if code != http.StatusConflict {
		return false
	}
	var b struct {
		State string `json:"state"`
	}
	return json.Unmarshal(body, &b) == nil && b.State == "in-progress"
}

func (c *Client) setConnected(on bool) {
	c.mu.Lock()
	changed := c.connected != on
	c.connected = on
	c.mu.Unlock()
	if on {
		c.q.Resume() // flush the backlog, in order
	} else {
		c.q.Pause()
	}
	if changed && c.cfg.OnConnect != nil {
		c.cfg.OnConnect(on)
	}
}

// streamLoop keeps the event stream connected until Close or the end of
// the session.
func (c *Client) streamLoop(ctx context.Context) {
	defer close(c.done)
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = c.cfg.ReconnectMin
	bo.MaxInterval = c.cfg.ReconnectMax
	bo.MaxElapsedTime = 0
	bo.Reset()
	var t *time.Timer
	for {
		got, ended, err := c.streamOnce(ctx)
		c.setConnected(false)
		if ctx.Err() != nil {
			return
		}
		if ended {
			c.mu.Lock()
			c.ended = true
			c.mu.Unlock()
			c.q.Resume() // let queued requests meet the server's answer
			return
		}
		if got {
			bo.Reset()
		}
		wait := bo.NextBackOff()
		slog.Debug("sse client reconnecting", "session", c.cfg.Session, "in", wait, "err", err)
		if t == nil {
			t = time.NewTimer(wait)
			defer t.Stop()
		} else {
			t.Reset(wait)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// streamOnce runs one connection: got reports whether it connected, ended
// whether the session is over.
func (c *Client) streamOnce(ctx context.Context) (got, ended bool, err error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.cfg.BaseURL+"/sessions/"+c.cfg.Session+"/events", nil)
	if err != nil {
		return false, false, err
	}
	req.Header.Set("Accept", "text/event-stream")
	if cur := c.Cursor(); cur != "" {
		req.Header.Set("Last-Event-ID", cur)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return false, false, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return false, false, fmt.Errorf("client: stream: HTTP %d: %s", resp.StatusCode, bytes.TrimSpace(msg))
	}
	c.setConnected(true)
	r := wire.NewReader(resp.Body, 0)
	for {
		ev, err := r.Next()
		if err != nil {
			return true, false, err
		}
		if ev.ID != "" {
			c.mu.Lock()
			c.cursor = ev.ID
			c.mu.Unlock()
		}
		if ev.Type == "end" {
			c.mu.Lock()
			c.ended = true // before OnEvent: a Send it triggers must see it
			c.mu.Unlock()
		}
		if c.cfg.OnEvent != nil {
			id := ev.ID
			if ev.Type == "end" || ev.Type == "cutoff" {
				id = "" // those carry no id of their own
			}
			c.cfg.OnEvent(Event{ID: id, Type: ev.Type, Data: []byte(ev.Data)})
		}
		if ev.Type == "end" {
			return true, true, nil
		}
	}
}

// CreateSession creates a session on the server at baseURL and returns its
// id. hc nil means http.DefaultClient.
//
// Errors: the transport's, or one describing a non-201 answer.
func CreateSession(ctx context.Context, hc *http.Client, baseURL string) (string, error) {
	if hc == nil {
		hc = http.DefaultClient
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimRight(baseURL, "/")+"/sessions", nil)
	if err != nil {
		return "", err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var body struct {
		ID    string `json:"id"`
		Error string `json:"error"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4096)).Decode(&body); err != nil {
		return "", fmt.Errorf("client: create session: HTTP %d: %w", resp.StatusCode, err)
	}
	if resp.StatusCode != http.StatusCreated {
		return "", fmt.Errorf("client: create session: HTTP %d: %s", resp.StatusCode, body.Error)
	}
	return body.ID, nil
}

// HistoryEvent is one older event returned by History.
type HistoryEvent struct {
	ID   string          `json:"id"`
	Type string          `json:"type"`
	Data json.RawMessage `json:"data"`
}

// History fetches up to limit events with a seq below before ("<epoch>:<seq>"
// or a seq; "" for the newest), oldest first, and whether older ones exist:
// how a client fills in what a gap event skipped (start with the before of
// the gap's history URL, then page with the first id returned).
//
// Errors: the transport's, or one describing a non-200 answer (410 when that
// history is no longer retained, 409 for a cursor from another epoch).
func (c *Client) History(ctx context.Context, before string, limit int) (events []HistoryEvent, more bool, err error) {
	q := url.Values{}
	if before != "" {
		q.Set("before", before)
	}
	if limit > 0 {
		q.Set("limit", strconv.Itoa(limit))
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.cfg.BaseURL+"/sessions/"+c.cfg.Session+"/history?"+q.Encode(), nil)
	if err != nil {
		return nil, false, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, false, err
	}
	defer resp.Body.Close()
	var body struct {
		Events []HistoryEvent `json:"events"`
		More   bool           `json:"more"`
		Error  string         `json:"error"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 16<<20)).Decode(&body); err != nil {
		return nil, false, fmt.Errorf("client: history: HTTP %d: %w", resp.StatusCode, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, false, fmt.Errorf("client: history: HTTP %d: %s", resp.StatusCode, body.Error)
	}
	return body.Events, body.More, nil
}
