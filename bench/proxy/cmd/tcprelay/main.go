// Command tcprelay copies bytes between each accepted connection and a new
// connection to -to, both ways, and does nothing else. It is the floor of
// bench/proxy/compare.sh: what any proxy in a process of its own adds to a
// request just by being one more hop, before it reads a byte of HTTP.
//
//	tcprelay -listen 127.0.0.1:18551 -to 127.0.0.1:18545
package main

import (
	"errors"
	"flag"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:18551", "address to accept on")
	to := flag.String("to", "127.0.0.1:18545", "address to relay to")
	flag.Parse()
	if flag.NArg() > 0 {
		flag.Usage()
		os.Exit(2)
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		slog.Error("listen", "err", err)
		os.Exit(1)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	go func() { <-sig; ln.Close() }()

	var wg sync.WaitGroup
	var mu sync.Mutex
	open := map[net.Conn]bool{}
	for {
		c, err := ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				slog.Error("accept", "err", err)
			}
			break
		}
		mu.Lock()
		open[c] = true
		mu.Unlock()
		wg.Go(func() {
			defer func() {
				mu.Lock()
				delete(open, c)
				mu.Unlock()
				c.Close()
			}()
			up, err := net.Dial("tcp", *to)
			if err != nil {
				slog.Warn("dial", "to", *to, "err", err)
				return
			}
			defer up.Close()
			done := make(chan struct{})
			go func() {
				defer close(done)
				_, _ = io.Copy(c, up)
				c.Close() // the upstream ended: end the client's side too
			}()
			_, _ = io.Copy(up, c)
			up.Close()
			<-done
		})
	}
	mu.Lock()
	for c := range open {
		c.Close()
	}
	mu.Unlock()
	wg.Wait()
}
