// Package router routes chat messages to one agent session per channel:
// messages of one channel run strictly in arrival order and never
// concurrently; different channels run in parallel.
//
// # Ordering at receipt
//
// The incident this example rebuilds: two messages in one Discord channel
// resumed the same agent session at once and corrupted it. A per-channel
// lock fixes the overlap, but not the order: if each message gets its own
// goroutine that then calls Lock, the order in which those goroutines reach
// the lock is up to the scheduler (discordgo even runs every handler in its
// own goroutine, so the order is lost before any lock is reached).
//
// So the router fixes the order before any goroutine exists. Handle, called
// synchronously on the platform's receive path, appends the message to its
// channel's pending queue under a mutex: that append is the message's
// ticket. It then starts one worker goroutine. Workers are interchangeable:
// each one takes the channel's lock (a keyedlock.Map keyed by channel id)
// and, holding it, pops the head of the pending queue and processes that
// message. However the workers are scheduled, the n'th lock holder
// processes the n'th message, and only one runs at a time.
//
// The lock is released when the run ends, whether it succeeded, failed,
// timed out (the agent's process group is killed) or panicked. When a
// channel's queue empties its entry is deleted, and keyedlock deletes an
// unheld key, so idle channels hold no memory.
package router

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/steadfast-go/steadfast/examples/bot/agent"
	"github.com/steadfast-go/steadfast/examples/bot/chat"
	"github.com/steadfast-go/steadfast/examples/bot/chunk"
	"github.com/steadfast-go/steadfast/examples/bot/store"
	"github.com/steadfast-go/steadfast/keyedlock"
)

// Defaults for Config fields left zero.
const (
	DefaultTimeout        = 10 * time.Minute
	DefaultTypingInterval = 8 * time.Second // Discord's typing indicator lasts about 10 s
	DefaultConfirmWindow  = 60 * time.Second
	sendTimeout           = 30 * time.Second
)

// Config configures a Router. Platform, Agent and Store are required.
type Config struct {
	Platform chat.Platform
	Agent    agent.Agent
	Store    *store.Store
	// Timeout bounds one agent run; at the timeout the run is canceled
	// (a command agent's process group is killed) and the channel moves on.
	Timeout time.Duration
	// TypingInterval is how often the typing indicator is refreshed.
	TypingInterval time.Duration
	// ConfirmWindow is how long a /reset waits for "/reset confirm".
	ConfirmWindow time.Duration
	// DefaultModel is the model of channels that have not chosen one with
	// /model; empty leaves the choice to the agent.
	DefaultModel string
	Logger       *slog.Logger
	// Replicas, when set, shares the channel lock and the sessions with
	// every replica of the bot: after the in-process lock (which keeps
	// this process's arrival order), a worker takes the channel's lock in
	// Replicas, runs the agent under that lease's context (so the agent is
	// killed when the lock is lost), and writes the session with the
	// lease's fencing token. Store is then not used and may be nil.
	Replicas Replicas
}

// Replicas is the state a bot shares with its other replicas: a lock per
// channel across processes, and a session store whose writes carry the
// lock's fencing token and are refused when a newer holder has written.
type Replicas interface {
	Lock(ctx context.Context, channel string) (Lease, error)
	Get(channel string) (store.Session, bool, error)
	Put(channel string, token int64, s store.Session) error
	Delete(channel string, token int64) error
}

// A Lease is one grant of a channel's lock: its context ends when the lock
// is lost, and Token fences the writes made under it.
type Lease interface {
	Context() context.Context
	Token() int64
	Unlock() error
}

// localLease is the lease of the in-process lock alone.
type localLease struct{}

func (localLease) Context() context.Context { return context.Background() }
func (localLease) Token() int64             { return 0 }
func (localLease) Unlock() error            { return nil }

type jobKind int

const (
	jobPrompt    jobKind = iota
	jobModel             // /model NAME
	jobShowModel         // /model
	jobAskReset          // /reset
	jobReset             // /reset confirm
)

// job is one admitted message.
type job struct {
	kind  jobKind
	msg   chat.Message
	model string // for jobModel

	// waiting is set at admission when the channel was busy; marked is
	// closed once the worker created for this job has set the "waiting"
	// marker (or decided not to), and markSet tells whether it did.
	waiting bool
	marked  chan struct{}
	markSet bool // written before close(marked)
	started bool // guarded by Router.mu
}

// Router dispatches messages to the agent. It is safe for concurrent use;
// Handle must be called in arrival order (see the package doc). A Router
// must be created with New and must not be copied.
type Router struct {
	cfg   Config
	log   *slog.Logger
	locks keyedlock.Map[string] // one lock per busy channel

	// life is the router's own lifetime context (not a caller's): canceled
	// by Drain when it gives up waiting, which cancels every run.
	life  context.Context
	abort context.CancelFunc

	mu       sync.Mutex           // guards the fields below
	pending  map[string][]*job    // per channel, admitted and not yet started; no entry when empty
	confirms map[string]time.Time // per channel, /reset confirmation deadline
	closed   bool                 // Drain was called; Handle refuses
	wg       sync.WaitGroup       // workers and reply goroutines; Add only under mu while !closed
	stats    struct{ runs, failed, timedOut, panicked uint64 }
}

// New returns a Router for cfg. It panics if Platform, Agent or Store is
// nil.
func New(cfg Config) *Router {
	if cfg.Platform == nil || cfg.Agent == nil || (cfg.Store == nil && cfg.Replicas == nil) {
		panic("router: Platform, Agent and Store (or Replicas) are required")
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.TypingInterval <= 0 {
		cfg.TypingInterval = DefaultTypingInterval
	}
	if cfg.ConfirmWindow <= 0 {
		cfg.ConfirmWindow = DefaultConfirmWindow
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	life, abort := context.WithCancel(context.Background())
	return &Router{
		cfg:      cfg,
		log:      cfg.Logger,
		life:     life,
		abort:    abort,
		pending:  make(map[string][]*job),
		confirms: make(map[string]time.Time),
	}
}

var modelName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,63}$`)

// HelpText is the reply to /help.
const HelpText = `Talk to this channel's agent session by sending a message. Messages in one channel run one at a time, in order; channels run in parallel.
/status        session, model, queue length, busy or idle, lock contention
/model NAME    use model NAME for this channel's next runs (/model alone shows it)
/reset         forget this channel's session (asks for confirmation)
/reset confirm confirm a /reset within the confirmation window
/help          this text`

// Handle admits m. /help, /status and malformed commands are answered at
// once (they describe the bot and the queue, not the session). Prompts and
// every command that reads or changes the channel's session (/model,
// /model NAME, /reset, /reset confirm) join the channel's queue behind the
// messages that arrived before them, so commands and messages agree on one
// order: /model right after /model NAME shows the new model, and /reset
// sent during the first run sees the session that run creates. Handle
// never blocks on the agent or the platform.
//
// It returns chat.ErrClosed once Drain has been called.
func (r *Router) Handle(m chat.Message) error {
	text := strings.TrimSpace(m.Text)
	j := &job{kind: jobPrompt, msg: m}
	if strings.HasPrefix(text, "/") {
		f := strings.Fields(text)
		switch cmd := strings.ToLower(f[0]); {
		case cmd == "/help":
			return r.replyNow(m, HelpText)
		case cmd == "/status":
			return r.replyNow(m, r.Status(m.Channel))
		case cmd == "/model" && len(f) == 1:
			j.kind = jobShowModel
		case cmd == "/model" && len(f) == 2 && modelName.MatchString(f[1]):
			j.kind, j.model = jobModel, f[1]
		case cmd == "/model":
			return r.replyNow(m, "usage: /model NAME (letters, digits and ._:/@- only)")
		case cmd == "/reset" && len(f) == 1:
			j.kind = jobAskReset
		case cmd == "/reset" && len(f) == 2 && strings.EqualFold(f[1], "confirm"):
			j.kind = jobReset
		default:
			return r.replyNow(m, "unknown command "+f[0]+"; see /help")
		}
	}
	return r.admit(j)
}

// admit is the ticket: the append under mu fixes j's position in its
// channel before any goroutine exists.
func (r *Router) admit(j *job) error {
	ch := j.msg.Channel
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return chat.ErrClosed
	}
	q := r.pending[ch]
	j.waiting = len(q) > 0 || r.locks.Status(ch).Held
	if j.waiting {
		j.marked = make(chan struct{})
	}
	r.pending[ch] = append(q, j)
	r.wg.Add(1)
	r.mu.Unlock()
	go r.worker(ch, j)
	return nil
}

// worker was started for job mine; it marks mine as waiting if needed,
// then serves whichever job is at the head of the channel's queue when it
// gets the lock.
func (r *Router) worker(ch string, mine *job) {
	defer r.wg.Done()
	defer func() {
		if p := recover(); p != nil {
			r.log.Error("panic in channel worker; lock released", "channel", ch, "panic", p)
		}
	}()
	if mine.waiting {
		r.mu.Lock()
		started := mine.started
		r.mu.Unlock()
		if !started {
			r.platformCall("waiting", func(ctx context.Context) error {
				return r.cfg.Platform.Waiting(ctx, mine.msg, true)
			})
			mine.markSet = true
		}
		close(mine.marked)
	}
	if err := r.locks.Lock(r.life, ch); err != nil {
		// Drain gave up: answer one queued message (every worker that
		// fails here answers one, so all of them are answered).
		j := r.pop(ch)
		r.clearWaiting(j)
		r.log.Warn("message not processed: shutting down", "channel", ch, "id", j.msg.ID)
		r.send(j.msg, "Not processed: the bot is shutting down.")
		return
	}
	defer r.locks.Unlock(ch)
	j := r.pop(ch)
	r.clearWaiting(j)
	if r.life.Err() != nil {
		// Aborted while the key was being handed to us: do not start
		// an agent run that would be canceled at once.
		r.send(j.msg, "Not processed: the bot is shutting down.")
		return
	}
	var lease Lease = localLease{}
	if r.cfg.Replicas != nil {
		l, err := r.cfg.Replicas.Lock(r.life, ch)
		if err != nil {
			r.log.Error("channel lock across replicas", "channel", ch, "err", err)
			r.send(j.msg, "Not processed: the channel lock is unavailable ("+err.Error()+").")
			return
		}
		lease = l
		defer func() {
			if err := lease.Unlock(); err != nil {
				r.log.Warn("unlock across replicas", "channel", ch, "err", err)
			}
		}()
	}
	r.execute(j, lease)
}

func (r *Router) pop(ch string) *job {
	r.mu.Lock()
	defer r.mu.Unlock()
	q := r.pending[ch]
	j := q[0]
	q[0] = nil
	if len(q) == 1 {
		delete(r.pending, ch) // idle channel: no memory kept
	} else {
		r.pending[ch] = q[1:]
	}
	j.started = true
	return j
}

func (r *Router) clearWaiting(j *job) {
	if !j.waiting {
		return
	}
	<-j.marked
	if j.markSet {
		r.platformCall("waiting", func(ctx context.Context) error {
			return r.cfg.Platform.Waiting(ctx, j.msg, false)
		})
	}
}

func (r *Router) execute(j *job, lease Lease) {
	if j.kind != jobPrompt {
		r.command(j, lease)
		return
	}
	r.prompt(j, lease)
}

// command runs a session command in its turn, holding the channel's lock.
func (r *Router) command(j *job, lease Lease) {
	ch := j.msg.Channel
	switch j.kind {
	case jobShowModel:
		r.send(j.msg, "model: "+r.modelOf(ch))
	case jobAskReset:
		r.send(j.msg, r.askReset(ch))
	case jobModel:
		if err := r.update(ch, lease, func(s *store.Session) { s.Model = j.model }); err != nil {
			r.send(j.msg, "Could not save the model: "+err.Error())
			return
		}
		r.send(j.msg, "Model for this channel: "+j.model)
	case jobReset:
		if !r.takeConfirm(ch) {
			r.send(j.msg, "Nothing to confirm: send /reset first (a confirmation expires after "+r.cfg.ConfirmWindow.String()+").")
			return
		}
		sess, _ := r.session(ch)
		if err := r.remove(ch, lease); err != nil {
			r.send(j.msg, "Could not reset: "+err.Error())
			return
		}
		r.send(j.msg, fmt.Sprintf("Session %s forgotten; the next message starts a new one.", orNone(sess.SessionID)))
	}
}

// prompt runs the agent for a message in its turn.
func (r *Router) prompt(j *job, lease Lease) {
	ch := j.msg.Channel
	sess, _ := r.session(ch)
	model := sess.Model
	if model == "" {
		model = r.cfg.DefaultModel
	}
	req := agent.Request{Channel: ch, Prompt: j.msg.Text, SessionID: sess.SessionID, Model: model}
	stopTyping := r.typing(ch)
	ctx, cancel := context.WithTimeout(r.life, r.cfg.Timeout)
	stopLost := context.AfterFunc(lease.Context(), cancel) // the lock was lost: kill the agent
	rep, err := r.runAgent(ctx, req)
	stopLost()
	cancel()
	stopTyping()

	r.mu.Lock()
	r.stats.runs++
	if err != nil {
		r.stats.failed++
		if errors.Is(err, context.DeadlineExceeded) {
			r.stats.timedOut++
		}
	}
	r.mu.Unlock()

	if err != nil {
		r.log.Warn("agent run failed", "channel", ch, "id", j.msg.ID, "err", err)
		msg := "⚠️ The agent failed: " + err.Error()
		switch {
		case lease.Context().Err() != nil:
			msg = "⚠️ Stopped: this replica lost the channel's lock, so the run was canceled (" + context.Cause(lease.Context()).Error() + ")."
		case r.life.Err() != nil:
			// Drain gave up (or a second signal came): say so, rather
			// than showing a bare "context canceled".
			msg = "⏹️ Stopped: the bot is shutting down, so this run was canceled before it finished. The session is kept."
		case errors.Is(err, context.DeadlineExceeded):
			msg = fmt.Sprintf("⏱️ The agent did not answer within %s and was stopped. The session is kept; send another message to continue.", r.cfg.Timeout)
		}
		r.send(j.msg, msg)
		return
	}
	if rep.SessionID != "" && rep.SessionID != sess.SessionID {
		if err := r.update(ch, lease, func(s *store.Session) { s.SessionID, s.LastUsed = rep.SessionID, time.Now() }); err != nil {
			r.log.Error("saving session", "channel", ch, "err", err)
		}
	} else {
		r.touch(ch, lease, time.Now())
	}
	text := rep.Text
	if strings.TrimSpace(text) == "" {
		text = "(the agent returned an empty answer)"
	}
	r.send(j.msg, text)
}

// runAgent calls the agent, turning a panic into an error so that the
// deferred Unlock in worker runs and the bot keeps going.
func (r *Router) runAgent(ctx context.Context, req agent.Request) (rep agent.Reply, err error) {
	defer func() {
		if p := recover(); p != nil {
			r.mu.Lock()
			r.stats.panicked++
			r.mu.Unlock()
			err = fmt.Errorf("agent panicked: %v", p)
		}
	}()
	return r.cfg.Agent.Run(ctx, req)
}

// typing shows the typing indicator now and every TypingInterval until the
// returned stop function is called; stop waits for the refresher to exit
// and then tells a platform that is a chat.Idler that the run ended.
func (r *Router) typing(ch string) (stop func()) {
	ctx, cancel := context.WithCancel(r.life)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(r.cfg.TypingInterval)
		defer t.Stop()
		for {
			if err := r.cfg.Platform.Typing(ctx, ch); err != nil && ctx.Err() == nil {
				r.log.Debug("typing indicator", "channel", ch, "err", err)
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return func() {
		cancel()
		<-done
		if idler, ok := r.cfg.Platform.(chat.Idler); ok {
			r.platformCall("idle", func(ctx context.Context) error { return idler.Idle(ctx, ch) })
		}
	}
}

// send delivers text as chunks within the platform limit. Whitespace-only
// chunks (nothing visible; Discord rejects them) are skipped.
func (r *Router) send(m chat.Message, text string) {
	replyTo := m.ID
	for _, c := range chunk.Split(text, r.cfg.Platform.Limit()) {
		if strings.TrimSpace(c) == "" {
			continue
		}
		out := chat.Outgoing{Channel: m.Channel, ReplyTo: replyTo, Text: c}
		r.platformCall("send", func(ctx context.Context) error { return r.cfg.Platform.Send(ctx, out) })
		replyTo = "" // only the first chunk is a reply
	}
}

// platformCall runs a platform call with its own timeout. It is not tied
// to life, so replies still go out while the router shuts down.
func (r *Router) platformCall(what string, f func(ctx context.Context) error) {
	ctx, cancel := context.WithTimeout(context.Background(), sendTimeout)
	defer cancel()
	if err := f(ctx); err != nil {
		r.log.Error("platform call failed", "call", what, "platform", r.cfg.Platform.Name(), "err", err)
	}
}

// replyNow answers a command without queueing it.
func (r *Router) replyNow(m chat.Message, text string) error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return chat.ErrClosed
	}
	r.wg.Add(1)
	r.mu.Unlock()
	go func() {
		defer r.wg.Done()
		r.send(m, text)
	}()
	return nil
}

func (r *Router) askReset(ch string) string {
	sess, ok := r.session(ch)
	if !ok || sess.SessionID == "" && sess.Model == "" {
		return "This channel has no session to reset."
	}
	now := time.Now()
	r.mu.Lock()
	for c, dl := range r.confirms { // forget expired requests
		if now.After(dl) {
			delete(r.confirms, c)
		}
	}
	r.confirms[ch] = now.Add(r.cfg.ConfirmWindow)
	r.mu.Unlock()
	return fmt.Sprintf("This forgets session %s (model %s) for this channel. Send /reset confirm within %s to proceed.",
		orNone(sess.SessionID), r.modelOf(ch), r.cfg.ConfirmWindow)
}

func (r *Router) takeConfirm(ch string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	dl, ok := r.confirms[ch]
	delete(r.confirms, ch)
	return ok && !time.Now().After(dl)
}

func (r *Router) modelOf(ch string) string {
	if s, _ := r.session(ch); s.Model != "" {
		return s.Model
	}
	if r.cfg.DefaultModel != "" {
		return r.cfg.DefaultModel
	}
	return "default"
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

// Stats is a snapshot of the router's state.
type Stats struct {
	Channels int             // channels with queued messages (idle channels are not counted)
	Queued   int             // messages admitted and not yet started, all channels
	Runs     uint64          // agent runs finished
	Failed   uint64          // runs that failed (including timeouts and panics)
	TimedOut uint64          // runs stopped at the timeout
	Panicked uint64          // runs whose agent panicked
	Locks    keyedlock.Stats // the per-channel lock map's counters
}

// Stats returns current counters.
func (r *Router) Stats() Stats {
	r.mu.Lock()
	s := Stats{Channels: len(r.pending), Runs: r.stats.runs, Failed: r.stats.failed,
		TimedOut: r.stats.timedOut, Panicked: r.stats.panicked}
	for _, q := range r.pending {
		s.Queued += len(q)
	}
	r.mu.Unlock()
	s.Locks = r.locks.Stats()
	return s
}

// Status is the /status text for a channel.
func (r *Router) Status(ch string) string {
	sess, _ := r.session(ch)
	r.mu.Lock()
	queued := len(r.pending[ch])
	r.mu.Unlock()
	st := r.locks.Status(ch)
	state := "idle"
	if st.Held || queued > 0 { // queued but not yet locked: a worker is about to start
		state = "busy"
	}
	last := "never"
	if !sess.LastUsed.IsZero() {
		last = sess.LastUsed.UTC().Format(time.RFC3339)
	}
	ls := r.locks.Stats()
	avg := time.Duration(0)
	if ls.Contended > 0 {
		avg = ls.WaitTime / time.Duration(ls.Contended)
	}
	return fmt.Sprintf("session: %s\nmodel: %s\nstate: %s, %d queued\nlast used: %s\nlocks (all channels): %d acquired, %d waited (avg %s), %d canceled; %d busy now, %d waiting",
		orNone(sess.SessionID), r.modelOf(ch), state, queued, last,
		ls.Acquires, ls.Contended, avg.Round(time.Millisecond), ls.Canceled, ls.Held, ls.Waiters)
}

// Drain stops admitting messages (Handle returns chat.ErrClosed) and waits
// until every admitted message has been answered. If ctx ends first, it
// cancels the running agents (their process groups are killed), answers
// the still-queued messages with "not processed", waits for that, and
// returns ctx.Err(). Unsaved LastUsed times are written at the end; a
// write error is returned if nothing else went wrong.
func (r *Router) Drain(ctx context.Context) error {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	done := make(chan struct{})
	go func() { r.wg.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
		r.abort()
		<-done
	}
	r.abort()
	if r.cfg.Store != nil {
		if ferr := r.cfg.Store.Flush(); err == nil {
			err = ferr
		}
	}
	return err
}

// session reads ch's session from the shared store, or the local one.
func (r *Router) session(ch string) (store.Session, bool) {
	if r.cfg.Replicas == nil {
		return r.cfg.Store.Get(ch)
	}
	s, ok, err := r.cfg.Replicas.Get(ch)
	if err != nil {
		r.log.Error("reading the session", "channel", ch, "err", err)
	}
	return s, ok
}

// update changes ch's session with fn; a shared store fences the write
// with the lease's token.
func (r *Router) update(ch string, lease Lease, fn func(*store.Session)) error {
	if r.cfg.Replicas == nil {
		return r.cfg.Store.Update(ch, fn)
	}
	s, _, err := r.cfg.Replicas.Get(ch)
	if err != nil {
		return err
	}
	fn(&s)
	return r.cfg.Replicas.Put(ch, lease.Token(), s)
}

func (r *Router) remove(ch string, lease Lease) error {
	if r.cfg.Replicas == nil {
		return r.cfg.Store.Delete(ch)
	}
	return r.cfg.Replicas.Delete(ch, lease.Token())
}

func (r *Router) touch(ch string, lease Lease, now time.Time) {
	if r.cfg.Replicas == nil {
		r.cfg.Store.Touch(ch, now)
		return
	}
	if err := r.update(ch, lease, func(s *store.Session) { s.LastUsed = now }); err != nil {
		r.log.Warn("saving the last use", "channel", ch, "err", err)
	}
}
