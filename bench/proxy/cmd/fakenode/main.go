// Command fakenode serves the proxy example's fake execution node (HTTP
// and WebSocket JSON-RPC on one port, a block every -block-time) for the
// side-by-side harness in bench/proxy/compare.sh.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/steadfast-go/steadfast/examples/proxy/fakenode"
)

func main() {
	addr := flag.String("listen", "127.0.0.1:18545", "address")
	blockTime := flag.Duration("block-time", time.Second, "time between blocks")
	blocks := flag.Int("blocks", 10000, "blocks the chain starts with (for varying-block reads)")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintln(os.Stderr, "fakenode: unexpected argument", flag.Arg(0))
		os.Exit(2)
	}
	chain := fakenode.NewManualChain(1337)
	for chain.Head() < uint64(*blocks) {
		chain.Advance()
	}
	n, err := fakenode.Start("node", *addr, chain)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fakenode:", err)
		os.Exit(1)
	}
	n.SetFinalityDepth(uint64(*blocks) + 1<<40) // nothing finalized: no answer is cacheable by number
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	t := time.NewTicker(*blockTime)
	defer t.Stop()
	for {
		select {
		case <-sig:
			n.Close()
			return
		case <-t.C:
			chain.Advance()
		}
	}
}
