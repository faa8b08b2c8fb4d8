// Command bot routes chat-channel messages to one agent session per
// channel: messages in a channel run strictly in arrival order and never
// concurrently, different channels run in parallel. See README.md.
//
// Usage:
//
//	go run ./examples/bot                              # terminal chat, echo agent
//	go run ./examples/bot -http 127.0.0.1:8081         # local web chat
//	DISCORD_TOKEN=... go run ./examples/bot -discord-channels 123,456
//	go run ./examples/bot -agent-cmd 'claude -p --resume {session} --output-format json {prompt}'
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/steadfast-go/steadfast/examples/bot/agent"
	"github.com/steadfast-go/steadfast/examples/bot/chat"
	"github.com/steadfast-go/steadfast/examples/bot/platform/discord"
	"github.com/steadfast-go/steadfast/examples/bot/platform/terminal"
	"github.com/steadfast-go/steadfast/examples/bot/platform/web"
	"github.com/steadfast-go/steadfast/examples/bot/router"
	"github.com/steadfast-go/steadfast/examples/bot/store"
	"github.com/steadfast-go/steadfast/examples/bot/store/pgstate"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	switch {
	case errors.Is(err, flag.ErrHelp):
		os.Exit(0) // -help was asked for and printed, as the flag package does

	case err != nil:
		fmt.Fprintln(os.Stderr, "bot:", err)
		var u usageError
		if errors.As(err, &u) {
			os.Exit(2) // a bad invocation, as the flag package exits for bad flags
		}
		os.Exit(1)
	}
}

// usageError is a bad invocation: an unknown or malformed flag, a stray
// argument, or a flag value that can never work. main exits with status 2
// for it, like the other examples.
type usageError struct{ err error }

func (u usageError) Error() string { return u.err.Error() }
func (u usageError) Unwrap() error { return u.err }

const usage = `Usage: bot [flags]

bot answers chat messages by running an agent CLI once per message, with one
agent session per channel: messages in a channel run strictly in arrival order
and never at once, different channels run in parallel. It reads from the
terminal by default ("#channel> text" lines), serves a local web chat with
-http, or joins Discord when DISCORD_TOKEN is set. Without -agent-cmd a built-in
echo agent answers, so it runs offline. The -agent-cmd template must contain
{prompt}, the placeholder that carries the message; {session}, {model} and
{channel} are optional.

Flags:
`

// hooks let in-process tests swap the agent and learn the web address.
type hooks struct {
	agent    agent.Agent    // replaces the agent chosen by flags
	webReady func(net.Addr) // called once the web chat listens
}

func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	return runWith(ctx, args, stdin, stdout, stderr, hooks{})
}

func runWith(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer, h hooks) error {
	fs := flag.NewFlagSet("bot", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	var (
		agentCmd     = fs.String("agent-cmd", "", "agent command template, e.g. 'claude -p --resume {session} --output-format json {prompt}' (placeholders: {prompt} {session} {model} {channel}); empty: built-in echo agent")
		echoDelay    = fs.Duration("echo-delay", time.Second, "delay of the built-in echo agent, to make queuing visible")
		timeout      = fs.Duration("timeout", router.DefaultTimeout, "per-run agent timeout; the agent's process group is killed when it expires")
		sessions     = fs.String("sessions", store.DefaultPath(), "session store file (JSON, written atomically)")
		httpAddr     = fs.String("http", "", "serve the local web chat on this address (e.g. 127.0.0.1:8081) instead of the terminal")
		discordChans = fs.String("discord-channels", "", "comma-separated Discord channel ids to serve (default: every channel where the bot is mentioned); Discord is used when DISCORD_TOKEN is set")
		model        = fs.String("model", "", "default model for channels without /model (passed as {model})")
		typingEvery  = fs.Duration("typing-interval", router.DefaultTypingInterval, "typing indicator refresh interval")
		showTyping   = fs.Bool("show-typing", false, "terminal: print a line when the typing indicator is refreshed")
		drain        = fs.Duration("drain", 30*time.Second, "on SIGINT/SIGTERM, how long queued messages may still run before they are canceled")
		logLevel     = fs.String("log-level", "info", "log level: debug, info, warn, error")
		db           = fs.String("db", "", "postgres://... URL: share the channel locks and sessions with every replica of the bot on that database (fenced by the lock's tokens); empty: an in-process lock and the -sessions file")
	)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return usageError{err}
	}
	if fs.NArg() > 0 {
		return usageError{fmt.Errorf("unexpected arguments %q (every option is a flag; see -help)", fs.Args())}
	}
	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return usageError{fmt.Errorf("-log-level: %w", err)}
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	var ag agent.Agent = &agent.Echo{Delay: *echoDelay}
	if *agentCmd != "" {
		c, err := agent.ParseTemplate(*agentCmd)
		if err != nil {
			return usageError{fmt.Errorf("-agent-cmd: %w", err)}
		}
		if !strings.Contains(*agentCmd, "{prompt}") {
			return usageError{fmt.Errorf("-agent-cmd: the template has no {prompt}, so the agent would never see the message: %q", *agentCmd)}
		}
		if err := c.Check(); err != nil {
			return fmt.Errorf("-agent-cmd: %w", err)
		}
		ag = c
	}
	if h.agent != nil {
		ag = h.agent
	}

	var st *store.Store
	var replicas router.Replicas
	where := *sessions
	if *db != "" {
		if !strings.HasPrefix(*db, "postgres://") && !strings.HasPrefix(*db, "postgresql://") {
			return usageError{fmt.Errorf("-db: %q is not a postgres:// URL", *db)}
		}
		ps, err := pgstate.Open(ctx, *db)
		if err != nil {
			return err
		}
		defer ps.Close()
		replicas, where = ps, "postgres"
	} else {
		var err error
		if st, err = store.Open(*sessions); err != nil {
			return err
		}
	}

	var p chat.Platform
	switch token := os.Getenv("DISCORD_TOKEN"); {
	case token != "":
		var chans []string
		if *discordChans != "" {
			chans = strings.Split(*discordChans, ",")
		}
		d, err := discord.New(discord.Config{Token: token, Channels: chans, Logger: log})
		if err != nil {
			return err
		}
		defer func() {
			cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			d.Close(cctx)
		}()
		p = d
	case *httpAddr != "":
		w := web.New(*httpAddr, log)
		addr, err := w.Listen()
		if err != nil {
			return err
		}
		if !isLoopback(addr) {
			log.Warn("the web chat has no authentication: anyone who can reach this address can run the agent; prefer 127.0.0.1", "addr", addr.String())
		}
		if h.webReady != nil {
			h.webReady(addr)
		}
		p = w
	default:
		t := terminal.New(stdin, stdout)
		t.ShowTyping = *showTyping
		t.Hint = isTerminal(stdin)
		p = t
	}

	r := router.New(router.Config{
		Platform: p, Agent: ag, Store: st, Replicas: replicas, Timeout: *timeout,
		TypingInterval: *typingEvery, DefaultModel: *model, Logger: log,
	})
	log.Info("bot started", "platform", p.Name(), "agent", agentName(ag), "sessions", where, "timeout", *timeout)

	runErr := p.Run(ctx, r)
	if runErr != nil {
		log.Error("platform stopped", "err", runErr)
	}

	// Input ended (end of file) or a signal arrived: answer what was
	// admitted. After a signal, queued work gets -drain to finish; at end of
	// input it runs to completion unless a signal arrives.
	dctx := ctx
	if ctx.Err() != nil {
		var cancel context.CancelFunc
		dctx, cancel = context.WithTimeout(context.Background(), *drain)
		defer cancel()
		// A second SIGINT/SIGTERM ends the drain at once (running agents
		// are killed, queued messages answered "not processed", the
		// session store is still written). Registered before the log
		// line below, so a signal sent after reading it is caught.
		var stopSignals context.CancelFunc
		dctx, stopSignals = signal.NotifyContext(dctx, os.Interrupt, syscall.SIGTERM)
		defer stopSignals()
		s := r.Stats()
		log.Info("shutting down: finishing admitted messages; send SIGINT (Ctrl-C) again to stop them now",
			"queued", s.Queued, "drain", *drain)
	}
	drainErr := r.Drain(dctx)
	s := r.Stats()
	log.Info("bot stopped", "runs", s.Runs, "failed", s.Failed, "timed_out", s.TimedOut,
		"lock_acquires", s.Locks.Acquires, "lock_contended", s.Locks.Contended, "lock_wait", s.Locks.WaitTime)
	if errors.Is(drainErr, context.DeadlineExceeded) || errors.Is(drainErr, context.Canceled) {
		log.Warn("shutdown canceled queued work", "err", drainErr)
		drainErr = nil
	}
	return errors.Join(runErr, drainErr)
}

// isLoopback reports whether a listener's address is reachable only from
// this machine.
func isLoopback(a net.Addr) bool {
	ta, ok := a.(*net.TCPAddr)
	return ok && ta.IP.IsLoopback()
}

// isTerminal reports whether r is a character device (a person typing),
// not a pipe or file.
func isTerminal(r io.Reader) bool {
	f, ok := r.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

func agentName(a agent.Agent) string {
	switch a := a.(type) {
	case *agent.Command:
		return a.Program()
	case *agent.Echo:
		return "echo"
	}
	return fmt.Sprintf("%T", a)
}
