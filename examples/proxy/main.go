// Command proxy is an Ethereum JSON-RPC proxy for execution nodes: HTTP and
// WebSocket on one address, a primary and backups with health checks
// (eth_blockNumber with a timeout and a lag limit), failback to the primary
// within about 1.5 s of its recovery, and WebSocket subscriptions that
// survive upstream switches with the client's subscription ids unchanged.
//
//	go run ./examples/proxy -demo
//	go run ./examples/proxy -upstream primary=http://10.0.0.1:8545,ws://10.0.0.1:8546 \
//	    -upstream backup=http://10.0.0.2:8545,ws://10.0.0.2:8546
//
// See README.md beside this file.
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
	"syscall"
	"time"

	"github.com/steadfast-go/steadfast/examples/proxy/proxy"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	switch {
	case err == nil:
	case errors.Is(err, flag.ErrHelp):
		os.Exit(0)
	case errors.Is(err, errUsage):
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "proxy:", err)
		os.Exit(1)
	}
}

var errUsage = errors.New("usage error")

// run is the whole program; main only wires signals and exit codes.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o, err := parseArgs(args, stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		fmt.Fprintln(stderr, "proxy:", err)
		return fmt.Errorf("%w: %w", errUsage, err)
	}
	if o.demo {
		err := runDemo(ctx, o, stdout, stderr)
		if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			fmt.Fprintln(stdout, "demo interrupted")
			return nil // SIGINT/SIGTERM: a normal way to stop
		}
		return err
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: o.logLevel}))
	o.cfg.Logger = log
	p, err := proxy.New(o.cfg)
	if err != nil {
		return err
	}
	defer p.Close()
	if err := p.Probe(ctx); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", o.listen)
	if err != nil {
		return fmt.Errorf("-listen: %w", err)
	}
	log.Info("proxy listening", "addr", ln.Addr().String(), "upstreams", len(o.cfg.Upstreams))
	return serve(ctx, p, ln, o.readTimeout, log)
}

// defaultReadTimeout bounds reading one HTTP request from a client,
// headers and body: without it, a client that announces a body and sends
// it a byte at a time would hold its connection open for ever.
const defaultReadTimeout = 30 * time.Second

// serve serves p on ln until ctx ends, then shuts down gracefully: the
// listener closes, WebSocket sessions answer what they queued and close,
// and in-flight HTTP requests get up to 5 s to finish. readTimeout bounds
// reading each HTTP request (a WebSocket connection is not bound by it
// once upgraded).
func serve(ctx context.Context, p *proxy.Proxy, ln net.Listener, readTimeout time.Duration, log *slog.Logger) error {
	srv := &proxy.Server{Handler: p.Handler(), ReadHeaderTimeout: 10 * time.Second, ReadTimeout: readTimeout, Logger: log}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	log.Info("shutting down")
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	err := srv.Shutdown(sctx)
	if cerr := p.Close(); err == nil {
		err = cerr
	}
	<-errc
	return err
}
