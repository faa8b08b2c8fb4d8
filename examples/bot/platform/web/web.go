// Package web is the bot's local web chat platform: a page with several
// channels, for trying the per-channel ordering and cross-channel
// parallelism by hand.
//
// HTTP API (loopback by default):
//
//	GET  /             the chat page
//	POST /api/send     {"channel":"general","text":"hi","author":"ann"} → 202 {"id":"w1"}
//	GET  /api/events   Server-Sent Events: every user message, reply,
//	                   typing, waiting and started event, as JSON, with ids
//	                   "<boot>-<seq>"; Last-Event-ID (or ?after=N) resumes
//	                   after an id. An id from an earlier run of the server
//	                   (another boot) starts over with a "restart" event,
//	                   so a page left open across a restart keeps working.
//
// Ordering: the POST handler calls the router's Handle before it responds,
// so a client that waits for each 202 before sending the next message gets
// its messages processed in the order it sent them. (Two requests in
// flight at once have no order to keep.)
package web

import (
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/steadfast-go/steadfast/examples/bot/chat"
)

// Limit is the reply chunk size of the web chat.
const Limit = 2000

// MaxText is the longest message accepted, in bytes.
const MaxText = 16 << 10

// MaxEvents is how many events the server keeps for replay; a client that
// falls further behind gets a "gap" event.
const MaxEvents = 10000

//go:embed index.html
var indexHTML []byte

var channelName = regexp.MustCompile(`^[A-Za-z0-9_.-]{1,64}$`)

// Event is one entry of the event stream.
type Event struct {
	Seq     uint64    `json:"seq"`
	Kind    string    `json:"kind"` // user, bot, typing, idle, waiting, started, gap, restart
	Channel string    `json:"channel,omitempty"`
	ID      string    `json:"id,omitempty"`       // message id (user, waiting, started)
	ReplyTo string    `json:"reply_to,omitempty"` // for bot
	Author  string    `json:"author,omitempty"`
	Text    string    `json:"text,omitempty"`
	Time    time.Time `json:"time"`
}

// Web serves the chat page and API. It is safe for concurrent use. Create
// it with New, then Listen, then Run.
type Web struct {
	addr string
	log  *slog.Logger
	boot string // identifies this run of the server in event ids

	ln   net.Listener
	srv  *http.Server
	quit chan struct{} // closed when the server shuts down; ends event streams

	mu     sync.Mutex // guards the fields below
	events []Event    // the last MaxEvents events
	seq    uint64     // last assigned seq
	nextID uint64
	notify chan struct{} // closed and replaced on every append
}

// New returns a Web platform that will listen on addr (host:port; port 0
// picks a free port).
func New(addr string, log *slog.Logger) *Web {
	if log == nil {
		log = slog.Default()
	}
	boot := strconv.FormatUint(rand.Uint64(), 36)
	return &Web{addr: addr, log: log, boot: boot, quit: make(chan struct{}), notify: make(chan struct{})}
}

// Listen binds the address and returns it. It returns the listen error.
func (w *Web) Listen() (net.Addr, error) {
	ln, err := net.Listen("tcp", w.addr)
	if err != nil {
		return nil, fmt.Errorf("web: %w", err)
	}
	w.ln = ln
	return ln.Addr(), nil
}

// Name returns "web".
func (w *Web) Name() string { return "web" }

// Limit returns the reply chunk size.
func (w *Web) Limit() int { return Limit }

// Run serves HTTP until ctx ends, then shuts the server down, ending open
// event streams. It calls Listen first if needed and returns its error, or
// the server's error.
func (w *Web) Run(ctx context.Context, h chat.Handler) error {
	if w.ln == nil {
		if _, err := w.Listen(); err != nil {
			return err
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(rw http.ResponseWriter, r *http.Request) {
		rw.Header().Set("Content-Type", "text/html; charset=utf-8")
		rw.Write(indexHTML)
	})
	mux.HandleFunc("POST /api/send", func(rw http.ResponseWriter, r *http.Request) { w.send(rw, r, h) })
	mux.HandleFunc("GET /api/events", w.stream)
	w.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	w.srv.RegisterOnShutdown(func() { close(w.quit) })
	errc := make(chan error, 1)
	go func() { errc <- w.srv.Serve(w.ln) }()
	w.log.Info("web chat listening", "url", "http://"+w.ln.Addr().String()+"/")
	select {
	case err := <-errc:
		return fmt.Errorf("web: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := w.srv.Shutdown(sctx)
	if serr := <-errc; !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	return err
}

type sendRequest struct {
	Channel string `json:"channel"`
	Text    string `json:"text"`
	Author  string `json:"author"`
}

func (w *Web) send(rw http.ResponseWriter, r *http.Request, h chat.Handler) {
	var req sendRequest
	if err := json.NewDecoder(http.MaxBytesReader(rw, r.Body, MaxText+1024)).Decode(&req); err != nil {
		http.Error(rw, "bad JSON: "+err.Error(), http.StatusBadRequest)
		return
	}
	switch {
	case !channelName.MatchString(req.Channel):
		http.Error(rw, "bad channel name", http.StatusBadRequest)
		return
	case strings.TrimSpace(req.Text) == "" || len(req.Text) > MaxText:
		// Blank text would start an agent run with an empty prompt.
		http.Error(rw, "text must be 1 to 16384 bytes, not only blanks", http.StatusBadRequest)
		return
	}
	if req.Author == "" {
		req.Author = "web"
	}
	w.mu.Lock()
	w.nextID++
	id := "w" + strconv.FormatUint(w.nextID, 10)
	w.mu.Unlock()
	w.publish(Event{Kind: "user", Channel: req.Channel, ID: id, Author: req.Author, Text: req.Text})
	if err := h.Handle(chat.Message{Channel: req.Channel, ID: id, Author: req.Author, Text: req.Text}); err != nil {
		http.Error(rw, err.Error(), http.StatusServiceUnavailable)
		return
	}
	rw.Header().Set("Content-Type", "application/json")
	rw.WriteHeader(http.StatusAccepted)
	fmt.Fprintf(rw, "{\"id\":%q}\n", id)
}

func (w *Web) publish(e Event) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.seq++
	e.Seq, e.Time = w.seq, time.Now().UTC()
	if len(w.events) >= MaxEvents {
		copy(w.events, w.events[1:])
		w.events = w.events[:len(w.events)-1]
	}
	w.events = append(w.events, e)
	close(w.notify)
	w.notify = make(chan struct{})
}

// after returns the events after seq, whether some were evicted, and the
// channel closed on the next append.
func (w *Web) after(seq uint64) ([]Event, bool, <-chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.events) == 0 || w.events[len(w.events)-1].Seq <= seq {
		return nil, false, w.notify
	}
	first := w.events[0].Seq
	gap := seq+1 < first
	i := 0
	if !gap {
		i = int(seq + 1 - first)
	}
	return append([]Event(nil), w.events[i:]...), gap, w.notify
}

func (w *Web) stream(rw http.ResponseWriter, r *http.Request) {
	fl, ok := rw.(http.Flusher)
	if !ok {
		http.Error(rw, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	last := r.Header.Get("Last-Event-ID")
	if last == "" {
		last = r.URL.Query().Get("after")
	}
	cursor, restarted, err := w.parseCursor(last)
	if err != nil {
		http.Error(rw, "bad Last-Event-ID", http.StatusBadRequest)
		return
	}
	rw.Header().Set("Content-Type", "text/event-stream")
	rw.Header().Set("Cache-Control", "no-cache")
	rw.WriteHeader(http.StatusOK)
	if restarted {
		// The client saw events of an earlier run: its ids mean nothing
		// here, so it gets all of this run's events after a marker.
		b, _ := json.Marshal(Event{Kind: "restart", Text: "the bot restarted", Time: time.Now().UTC()})
		fmt.Fprintf(rw, "data: %s\n\n", b)
	}
	fl.Flush()
	for {
		evs, gap, changed := w.after(cursor)
		if gap {
			b, _ := json.Marshal(Event{Kind: "gap", Seq: evs[0].Seq - 1, Text: "older events were dropped"})
			fmt.Fprintf(rw, "data: %s\n\n", b)
		}
		for _, e := range evs {
			b, _ := json.Marshal(e)
			if _, err := fmt.Fprintf(rw, "id: %s-%d\ndata: %s\n\n", w.boot, e.Seq, b); err != nil {
				return
			}
			cursor = e.Seq
		}
		fl.Flush()
		select {
		case <-changed:
		case <-r.Context().Done():
			return
		case <-w.quit:
			return
		}
	}
}

// parseCursor reads a Last-Event-ID: "" (from the start), "<boot>-<seq>"
// as sent by this server, or a bare "<seq>". An id of another boot means
// the server restarted since the client's last event: the client starts
// over (restarted is true).
func (w *Web) parseCursor(id string) (cursor uint64, restarted bool, err error) {
	if id == "" {
		return 0, false, nil
	}
	boot, seq, ok := strings.Cut(id, "-")
	if !ok {
		seq = boot
	}
	n, err := strconv.ParseUint(seq, 10, 64)
	if err != nil {
		return 0, false, err
	}
	if ok && boot != w.boot {
		return 0, true, nil
	}
	return n, false, nil
}

// Send publishes a bot reply.
func (w *Web) Send(_ context.Context, o chat.Outgoing) error {
	w.publish(Event{Kind: "bot", Channel: o.Channel, ReplyTo: o.ReplyTo, Author: "bot", Text: o.Text})
	return nil
}

// Typing publishes a typing event.
func (w *Web) Typing(_ context.Context, ch string) error {
	w.publish(Event{Kind: "typing", Channel: ch})
	return nil
}

// Idle publishes an idle event: the agent run in ch has ended.
func (w *Web) Idle(_ context.Context, ch string) error {
	w.publish(Event{Kind: "idle", Channel: ch})
	return nil
}

// Waiting publishes a waiting (true) or started (false) event.
func (w *Web) Waiting(_ context.Context, m chat.Message, on bool) error {
	kind := "started"
	if on {
		kind = "waiting"
	}
	w.publish(Event{Kind: kind, Channel: m.Channel, ID: m.ID})
	return nil
}
