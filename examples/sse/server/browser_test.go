package server_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/steadfast-go/steadfast/examples/sse/server"
)

// browser starts a headless Chromium for the test, or skips it when
// STEADFAST_CHROMIUM does not name one.
func browser(t *testing.T) context.Context {
	t.Helper()
	exe := os.Getenv("STEADFAST_CHROMIUM")
	if exe == "" {
		t.Skip("STEADFAST_CHROMIUM is not set: run examples/sse/scripts/chromium-e2e.sh (or set it to a chromium binary) to run the browser tests")
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(exe),
		chromedp.Headless,
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.NoFirstRun,
		chromedp.NoDefaultBrowserCheck,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()),
	}
	actx, acancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(acancel)
	bctx, bcancel := chromedp.NewContext(actx)
	t.Cleanup(bcancel)
	ctx, cancel := context.WithTimeout(bctx, 90*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// pageTexts returns the text of every element matching sel.
func pageTexts(t *testing.T, ctx context.Context, sel string) []string {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[[]string](`Array.from(document.querySelectorAll("`+sel+`")).map(e => e.textContent)`))
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func pageEval[T any](t *testing.T, ctx context.Context, js string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](js))
	if err != nil {
		t.Fatalf("%s: %v", js, err)
	}
	return v
}

// waitJS polls the page until expr is true (bounded by ctx's deadline).
func waitJS(t *testing.T, ctx context.Context, expr string) {
	t.Helper()
	if _, err := chromedp.Run(ctx, chromedp.Poll[bool](expr, chromedp.WithPollingInterval(20*time.Millisecond))); err != nil {
		t.Fatalf("waiting for %s: %v", expr, err)
	}
}

// The web page in headless Chromium: create a session, send a message, see
// the streamed reply; restart the server (same SQLite file, same port):
// the page shows reconnecting…, resumes, and a message sent after the
// restart is answered, with nothing shown twice.
//
// Set STEADFAST_CHROMIUM to a Chromium binary to run it
// (scripts/chromium-e2e.sh installs Debian's chromium and does).
func TestWebPageInHeadlessChromium(t *testing.T) {
	db := filepath.Join(t.TempDir(), "events.db")
	cfg := server.Config{DBPath: db, Agent: &server.Simulator{Delay: 5 * time.Millisecond}, RetryHint: 100 * time.Millisecond}
	r := start(t, cfg, "")

	ctx := browser(t)
	texts := func(sel string) []string { return pageTexts(t, ctx, sel) }
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

// An agent failure is a failed event, not EventSource's error: the badge
// stays live, also after a reload that replays it.
func TestWebPageFailKeepsBadgeLive(t *testing.T) {
	ctx := browser(t)
	r := start(t, server.Config{Agent: &server.Simulator{}}, "")
	err := chromedp.Do(ctx,
		chromedp.Navigate(r.url+"/"),
		chromedp.Click(chromedp.CSS("#new")),
		chromedp.WaitVisible(chromedp.CSS(`#status[data-state="live"]`)),
		chromedp.SendKeys(chromedp.CSS("#input"), "/fail"),
		chromedp.Click(chromedp.CSS("#send")),
		chromedp.WaitVisible(chromedp.CSS(`.reply.err[data-done="1"]`)),
	)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if st := pageEval[string](t, ctx, `document.getElementById("status").dataset.state`); st != "live" {
			t.Fatalf("pass %d: badge %q after a failed reply, want live", i, st)
		}
		if i == 0 {
			if err := chromedp.Do(ctx, chromedp.Reload(), chromedp.WaitVisible(chromedp.CSS(`.reply.err[data-done="1"]`)), chromedp.WaitVisible(chromedp.CSS(`#status[data-state="live"]`))); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got := pageTexts(t, ctx, ".reply .text"); len(got) != 1 || !strings.Contains(got[0], "[failed: ") {
		t.Fatalf("replies %q", got)
	}
}

// After a memory-mode restart the session is unknown (404): the page shows
// that it is gone and schedules no more retries of the stream or the
// outbox.
func TestWebPageMemoryRestartShowsGone(t *testing.T) {
	ctx := browser(t)
	cfg := server.Config{Agent: &server.Simulator{}, RetryHint: 100 * time.Millisecond}
	r := start(t, cfg, "")
	err := chromedp.Do(ctx,
		chromedp.Navigate(r.url+"/"),
		chromedp.Click(chromedp.CSS("#new")),
		chromedp.WaitVisible(chromedp.CSS(`#status[data-state="live"]`)),
	)
	if err != nil {
		t.Fatal(err)
	}
	addr := r.addr
	r.stop()
	start(t, cfg, addr)
	if err := chromedp.Do(ctx, chromedp.WaitVisible(chromedp.CSS(`#status[data-state="gone"]`))); err != nil {
		t.Fatalf("the page did not show the gone state: %v", err)
	}
	if idle := pageEval[bool](t, ctx, `es === null && reopenTimer === null && kickTimer === null && gone && outbox.length === 0`); !idle {
		t.Fatal("the page still retries after the session is gone")
	}
	if n := pageEval[int](t, ctx, `document.querySelectorAll(".note.err").length`); n == 0 {
		t.Fatal("no message tells the user the session is gone")
	}
}

// History paging through 1,000 events (500 user messages, each with a
// failed reply): "load earlier", newest pages first, shows every message
// and every failure exactly once and in order, and a live message after it
// is not duplicated either.
func TestWebPageHistoryPagingShowsEachEventOnce(t *testing.T) {
	ctx := browser(t)
	r := start(t, server.Config{Agent: &server.Simulator{}}, "")
	hc := httpClient(t)
	id := createSession(t, hc, r.url)
	l := r.srv.Log()
	const n = 500
	for i := range n {
		if _, err := l.AppendEvent(t.Context(), id, server.TypeUser, fmt.Appendf(nil, `{"key":"k%d","text":"u-%d"}`, i, i)); err != nil {
			t.Fatal(err)
		}
		if _, err := l.AppendEvent(t.Context(), id, server.TypeFailed, fmt.Appendf(nil, `{"reply_to":"k%d","error":"f-%d"}`, i, i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := chromedp.Do(ctx, chromedp.Navigate(r.url+"/#"+id), chromedp.WaitVisible(chromedp.CSS(`#status[data-state="live"]`)), chromedp.WaitVisible(chromedp.CSS("#earlier"))); err != nil {
		t.Fatal(err)
	}
	pages := 0
	for ; pages < 20; pages++ {
		if pageEval[bool](t, ctx, `document.getElementById("earlier").hidden`) {
			break
		}
		before := pageEval[int](t, ctx, `held.size`)
		if err := chromedp.Do(ctx, chromedp.Click(chromedp.CSS("#earlier"))); err != nil {
			t.Fatal(err)
		}
		waitJS(t, ctx, fmt.Sprintf(`held.size > %d || document.getElementById("earlier").hidden`, before))
	}
	check := func(extra int) {
		t.Helper()
		users, replies := pageTexts(t, ctx, ".user .text"), pageTexts(t, ctx, ".reply .text")
		if len(users) != n+extra || len(replies) != n+extra {
			t.Fatalf("after %d pages: %d user messages and %d replies shown, want %d", pages, len(users), len(replies), n+extra)
		}
		for i := range n {
			if users[i] != fmt.Sprintf("u-%d", i) || !strings.Contains(replies[i], fmt.Sprintf("[failed: f-%d]", i)) {
				t.Fatalf("entry %d: %q / %q", i, users[i], replies[i])
			}
		}
	}
	if pages < 5 {
		t.Fatalf("%d history pages loaded for 1,000 events of 200 a page: the page did not page", pages)
	}
	check(0)
	if err := chromedp.Do(ctx,
		chromedp.SendKeys(chromedp.CSS("#input"), "live one"),
		chromedp.Click(chromedp.CSS("#send")),
		chromedp.WaitVisible(chromedp.CSS(`.reply[data-done="1"]:not(.err)`)),
	); err != nil {
		t.Fatal(err)
	}
	check(1)
	if got := pageTexts(t, ctx, ".reply:not(.err) .text"); len(got) != 1 || got[0] != "echo: live one" {
		t.Fatalf("live reply %q", got)
	}
}

// Sends typed while the server is down survive a reload of the page (kept
// in localStorage): when the server is back they go out, in order, once.
func TestWebPageReloadWhileServerDownKeepsPendingSends(t *testing.T) {
	ctx := browser(t)
	cfg := server.Config{DBPath: filepath.Join(t.TempDir(), "events.db"), Agent: &server.Simulator{}, RetryHint: 100 * time.Millisecond}
	r := start(t, cfg, "")
	err := chromedp.Do(ctx,
		chromedp.Navigate(r.url+"/"),
		chromedp.Click(chromedp.CSS("#new")),
		chromedp.WaitVisible(chromedp.CSS(`#status[data-state="live"]`)),
	)
	if err != nil {
		t.Fatal(err)
	}
	page := pageEval[string](t, ctx, `location.href`)
	addr := r.addr
	r.stop()
	if err := chromedp.Do(ctx,
		chromedp.WaitVisible(chromedp.CSS(`#status[data-state="reconnecting"]`)),
		chromedp.SendKeys(chromedp.CSS("#input"), "first while down"),
		chromedp.Click(chromedp.CSS("#send")),
		chromedp.SendKeys(chromedp.CSS("#input"), "second while down"),
		chromedp.Click(chromedp.CSS("#send")),
	); err != nil {
		t.Fatal(err)
	}
	if n := pageEval[int](t, ctx, `JSON.parse(localStorage.getItem("sse-outbox:" + sessionId)).length`); n != 2 {
		t.Fatalf("%d sends kept in localStorage, want 2", n)
	}
	chromedp.Run(ctx, chromedp.Reload()) // fails: the server is down (the browser shows its error page)
	start(t, cfg, addr)
	if err := chromedp.Do(ctx,
		chromedp.Navigate(page),
		chromedp.WaitVisible(chromedp.CSS(`#status[data-state="live"]`)),
	); err != nil {
		t.Fatal(err)
	}
	waitJS(t, ctx, `document.querySelectorAll('.reply[data-done="1"]').length === 2`)
	if users := pageTexts(t, ctx, "#events .user .text"); strings.Join(users, "|") != "first while down|second while down" {
		t.Fatalf("user messages %q", users)
	}
	if replies := pageTexts(t, ctx, ".reply .text"); strings.Join(replies, "|") != "echo: first while down|echo: second while down" {
		t.Fatalf("replies %q", replies)
	}
	if n := pageEval[int](t, ctx, `JSON.parse(localStorage.getItem("sse-outbox:" + sessionId)).length + document.querySelectorAll("#pending .user").length`); n != 0 {
		t.Fatalf("%d sends still pending", n)
	}
}
