package server_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/steadfast-go/steadfast/examples/sse/server"
)

// The web page in headless Chromium: create a session, send a message, see
// the streamed reply; restart the server (same SQLite file, same port):
// the page shows reconnecting…, resumes, and a message sent after the
// restart is answered, with nothing shown twice.
//
// Set STEADFAST_CHROMIUM to a Chromium binary to run it
// (scripts/chromium-e2e.sh installs Debian's chromium and does).
func TestWebPageInHeadlessChromium(t *testing.T) {
	exe := os.Getenv("STEADFAST_CHROMIUM")
	if exe == "" {
		t.Skip("STEADFAST_CHROMIUM is not set: run examples/sse/scripts/chromium-e2e.sh (or set it to a chromium binary) to run the browser test")
	}
	db := filepath.Join(t.TempDir(), "events.db")
	cfg := server.Config{DBPath: db, Agent: &server.Simulator{Delay: 5 * time.Millisecond}, RetryHint: 100 * time.Millisecond}
	r := start(t, cfg, "")

	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(exe),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
	}
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer acancel()
	bctx, bcancel := chromedp.NewContext(actx)
	defer bcancel()
	ctx, cancel := context.WithTimeout(bctx, 90*time.Second)
	defer cancel()

	texts := func(sel string) []string {
		t.Helper()
		v, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`Array.from(document.querySelectorAll("`+sel+`")).map(e => e.textContent)`))
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	err := chromedp.Do(ctx,
		chromedp.Navigate(r.url+"/"),
		chromedp.Click(chromedp.CSS("#new")),
		chromedp.WaitVisible(chromedp.CSS(`#status[data-state="live"]`)),
		chromedp.SendKeys(chromedp.CSS("#input"), "hello browser"),
		chromedp.Click(chromedp.CSS("#send")),
		chromedp.WaitVisible(chromedp.CSS(`.user[data-send="sent"]`)),
		chromedp.WaitVisible(chromedp.CSS(`.reply[data-done="1"]`)),
	)
	if err != nil {
		t.Fatal(err)
	}
	replies := texts(".reply .text")
	if len(replies) != 1 || replies[0] != "echo: hello browser" {
		t.Fatalf("replies %q", replies)
	}

	addr := r.addr
	r.stop()
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(`#status[data-state="reconnecting"]`))); err != nil {
		t.Fatalf("the page did not show reconnecting: %v", err)
	}
	// Typed while the server is down: pending, then sent after it returns.
	if err := chromedp.Do(ctx,
		chromedp.SendKeys(chromedp.CSS("#input"), "after restart"),
		chromedp.Click(chromedp.CSS("#send")),
	); err != nil {
		t.Fatal(err)
	}
	start(t, cfg, addr)
	err = chromedp.Do(ctx,
		chromedp.WaitVisible(chromedp.CSS(`#status[data-state="live"]`)),
		chromedp.WaitVisible(chromedp.CSS(`.reply[data-done="1"] ~ .user[data-send="sent"] ~ .reply[data-done="1"]`)),
	)
	if err != nil {
		t.Fatal(err)
	}
	replies, users := texts(".reply .text"), texts(".user .text")
	if strings.Join(users, "|") != "hello browser|after restart" {
		t.Fatalf("user messages shown: %q", users)
	}
	if strings.Join(replies, "|") != "echo: hello browser|echo: after restart" {
		t.Fatalf("replies shown: %q", replies)
	}
}
