// Command sse is the chat-session server of the SSE incident, rebuilt on
// steadfast's eventlog: an SSE event stream per session with Last-Event-ID
// resume, a gap cap instead of replay storms, idempotent sends, and an agent
// whose crashes never take the server down. Open http://127.0.0.1:8080/.
//
//	go run ./examples/sse [-addr 127.0.0.1:8080] [-db sessions.db] [-agent-cmd 'tr a-z A-Z']
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/steadfast-go/steadfast/examples/sse/server"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stderr, nil)
	switch {
	case errors.Is(err, flag.ErrHelp):
		stop()
		os.Exit(0) // -help was asked for and printed, as the flag package does
	case errors.Is(err, errUsage):
		stop()
		os.Exit(2) // the message and the usage are printed already
	case err != nil:
		fmt.Fprintln(os.Stderr, "sse:", err)
		stop()
		os.Exit(1)
	}
}

// errUsage marks bad command lines (exit status 2).
var errUsage = errors.New("usage error")

const usage = `Usage: sse [flags]

sse serves chat sessions with an agent over Server-Sent Events on -addr: a
web page at /, and a JSON API under /sessions whose streams resume from any
disconnect by Last-Event-ID, with a gap cap instead of replay storms. A send
answered 202 is stored before the answer and is answered exactly once, also
across crashes and restarts. Events live in memory by default, in a SQLite
file with -db FILE, or in PostgreSQL with -db postgres://... (then several
servers share the sessions behind a load balancer). SIGINT or SIGTERM drain
running replies for up to -drain, then stop; queued messages run on the next
start.

Flags:
`

// options are the parsed flags.
type options struct {
	addr, db, agentCmd, advertise       string
	typing, heartbeat, retention, drain time.Duration
	gapCap, maxLag                      int
	verbose                             bool
}

// parseArgs parses args; a bad command line is errUsage (after printing
// what is wrong and the usage to stderr), -help is flag.ErrHelp.
func parseArgs(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("sse", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), usage)
		fs.PrintDefaults()
	}
	fs.StringVar(&o.addr, "addr", "127.0.0.1:8080", "listen address")
	fs.StringVar(&o.db, "db", "", "event log: a SQLite file, or a postgres:// URL shared by several servers (empty: in memory, lost on restart)")
	fs.StringVar(&o.advertise, "advertise", "", "with -db postgres://...: the URL other replicas reach this one at (default http://<addr>)")
	fs.StringVar(&o.agentCmd, "agent-cmd", "", "shell command run per message instead of the echo simulator (message on stdin, reply lines on stdout)")
	fs.DurationVar(&o.typing, "typing-delay", 60*time.Millisecond, "simulator: delay between streamed words")
	fs.IntVar(&o.gapCap, "gap-cap", server.DefaultGapCap, "most events replayed to a reconnecting client (> 0); further behind gets a gap event")
	fs.IntVar(&o.maxLag, "max-lag", server.DefaultMaxLag, "events a client may fall behind before it is cut off (> 0)")
	fs.DurationVar(&o.heartbeat, "heartbeat", server.DefaultHeartbeat, "SSE heartbeat comment interval")
	fs.DurationVar(&o.retention, "ended-retention", server.DefaultEndedRetention, "how long an ended session is kept before it is deleted (negative: forever)")
	fs.DurationVar(&o.drain, "drain", server.DefaultDrain, "on SIGINT/SIGTERM, how long running replies may finish (0: none)")
	fs.BoolVar(&o.verbose, "v", false, "debug logging")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return o, err
		}
		return o, fmt.Errorf("%w: %w", errUsage, err) // the flag package printed it
	}
	var bad string
	switch {
	case fs.NArg() > 0:
		bad = fmt.Sprintf("unexpected argument %q (did you mean -db %s?)", fs.Arg(0), fs.Arg(0))
	case o.gapCap <= 0:
		bad = fmt.Sprintf("-gap-cap %d: must be at least 1", o.gapCap)
	case o.maxLag <= 0:
		bad = fmt.Sprintf("-max-lag %d: must be at least 1", o.maxLag)
	case o.heartbeat <= 0:
		bad = fmt.Sprintf("-heartbeat %v: must be positive", o.heartbeat)
	case o.drain < 0:
		bad = fmt.Sprintf("-drain %v: must not be negative", o.drain)
	}
	if bad != "" {
		fmt.Fprintln(stderr, "sse:", bad)
		fs.Usage()
		return o, fmt.Errorf("%w: %s", errUsage, bad)
	}
	return o, nil
}

// run parses args, serves until ctx ends, then shuts down gracefully.
// ready, if not nil, is told the listening address.
func run(ctx context.Context, args []string, stderr io.Writer, ready func(addr string)) error {
	o, err := parseArgs(args, stderr)
	if err != nil {
		return err
	}
	drain := o.drain
	if drain == 0 {
		drain = -1 // the server's "no drain"
	}

	level := slog.LevelInfo
	if o.verbose {
		level = slog.LevelDebug
	}
	lg := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	var agent server.Agent = &server.Simulator{Delay: o.typing}
	if o.agentCmd != "" {
		agent = &server.Command{Cmd: o.agentCmd}
	}
	srv, err := server.New(server.Config{
		DBPath: o.db, AdvertiseURL: o.advertise, Agent: agent, GapCap: o.gapCap, MaxLag: o.maxLag,
		Heartbeat: o.heartbeat, EndedRetention: o.retention, Drain: drain, Logger: lg,
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", o.addr)
	if err != nil {
		srv.Shutdown(context.Background())
		return err
	}
	lg.Info("listening", "url", "http://"+ln.Addr().String()+"/")
	if ready != nil {
		ready(ln.Addr().String())
	}

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	served := false
	select {
	case err = <-serveErr:
		served = true
	case <-ctx.Done():
		lg.Info("shutting down")
	}
	sctx, cancel := context.WithTimeout(context.Background(), max(o.drain, 0)+10*time.Second)
	defer cancel()
	serr := srv.Shutdown(sctx)
	if !served {
		err = <-serveErr // Serve returns once Shutdown has started
	}
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return errors.Join(err, serr)
}
