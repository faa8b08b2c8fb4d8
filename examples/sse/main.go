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
	case err != nil:
		fmt.Fprintln(os.Stderr, "sse:", err)
		stop()
		os.Exit(1)
	}
}

// run parses args, serves until ctx ends, then shuts down gracefully.
// ready, if not nil, is told the listening address.
func run(ctx context.Context, args []string, stderr io.Writer, ready func(addr string)) error {
	fs := flag.NewFlagSet("sse", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("addr", "127.0.0.1:8080", "listen address")
	db := fs.String("db", "", "SQLite file for the event log (empty: in memory, lost on restart)")
	agentCmd := fs.String("agent-cmd", "", "shell command run per message instead of the echo simulator (message on stdin, reply lines on stdout)")
	typing := fs.Duration("typing-delay", 60*time.Millisecond, "simulator: delay between streamed words")
	gapCap := fs.Int("gap-cap", server.DefaultGapCap, "most events replayed to a reconnecting client; further behind gets a gap event")
	maxLag := fs.Int("max-lag", server.DefaultMaxLag, "events a client may fall behind before it is cut off")
	heartbeat := fs.Duration("heartbeat", server.DefaultHeartbeat, "SSE heartbeat comment interval")
	endedRetention := fs.Duration("ended-retention", server.DefaultEndedRetention, "how long an ended session is kept before it is deleted (negative: forever)")
	verbose := fs.Bool("v", false, "debug logging")
	if err := fs.Parse(args); err != nil {
		return err
	}

	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	lg := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: level}))

	var agent server.Agent = &server.Simulator{Delay: *typing}
	if *agentCmd != "" {
		agent = &server.Command{Cmd: *agentCmd}
	}
	srv, err := server.New(server.Config{
		DBPath: *db, Agent: agent, GapCap: *gapCap, MaxLag: *maxLag,
		Heartbeat: *heartbeat, EndedRetention: *endedRetention, Logger: lg,
	})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", *addr)
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
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
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
