package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/steadfast-go/steadfast/examples/bot/agent"
)

// chromium starts a headless Chromium for the test, or skips it when
// STEADFAST_CHROMIUM does not name one (.ci/run sets it).
func chromium(t *testing.T) context.Context {
	t.Helper()
	exe := os.Getenv("STEADFAST_CHROMIUM")
	if exe == "" {
		t.Skip("STEADFAST_CHROMIUM is not set: set it to a chromium binary to run the browser tests")
	}
	opts := []chromedp.ExecAllocatorOption{
		chromedp.ExecPath(exe), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck,
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

// poll evaluates expr in the current page every 20 ms until it is true,
// for at most 30 s. Each try evaluates afresh, so a navigation in between
// (whose old execution context disappears) is not an error.
func poll(t *testing.T, ctx context.Context, expr string) {
	t.Helper()
	var last error
	for end := time.Now().Add(30 * time.Second); time.Now().Before(end); {
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](expr))
		if err == nil && ok {
			return
		}
		last = err
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v (last error %v)", expr, ctx.Err(), last)
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Fatalf("waiting for %s: not true within 30 s (last error %v)", expr, last)
}

func eval[T any](t *testing.T, ctx context.Context, expr string) T {
	t.Helper()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("%s: %v", expr, err)
	}
	return v
}

// typeAndSend types text into the page's box and submits it.
func typeAndSend(t *testing.T, ctx context.Context, text string) {
	t.Helper()
	js, _ := json.Marshal(text)
	eval[bool](t, ctx, `(document.querySelector("textarea[name=text]").value = `+string(js)+`, document.getElementById("f").requestSubmit(), true)`)
}

// webBot runs the bot's web chat on addr until the returned stop is called.
func webBot(t *testing.T, addr string, ag agent.Agent) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(t.Context())
	ready := make(chan net.Addr, 1)
	errc := make(chan error, 1)
	args := append(sessionsFlag(t), "-http", addr, "-drain", "1s")
	go func() {
		errc <- runWith(ctx, args, nil, io.Discard, io.Discard, hooks{agent: ag, webReady: func(a net.Addr) { ready <- a }})
	}()
	select {
	case <-ready:
	case err := <-errc:
		t.Fatalf("bot: %v", err)
	}
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			cancel()
			<-errc
		}
	}
	t.Cleanup(stop)
	return stop
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

const typingShown = `Array.from(document.querySelectorAll("#log .sys")).some(e => e.textContent === "bot is typing…")`

// TestWebChatTypingSurvivesACommandReply: "bot is typing…" and the busy
// marker used to disappear, while the agent still ran, as soon as any bot
// message (a /status answer) arrived in the channel. They now last until
// the run ends.
func TestWebChatTypingSurvivesACommandReply(t *testing.T) {
	ctx := chromium(t)
	release := make(chan struct{})
	ag := newRecAgent(func(ctx context.Context, req agent.Request) error {
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	addr := freeAddr(t)
	webBot(t, addr, ag)
	if err := chromedp.Do(ctx, chromedp.Navigate("http://"+addr+"/")); err != nil {
		t.Fatal(err)
	}
	typeAndSend(t, ctx, "first")
	poll(t, ctx, typingShown)
	typeAndSend(t, ctx, "/status")
	poll(t, ctx, `Array.from(document.querySelectorAll("#log .bot")).some(e => e.textContent.includes("state: busy"))`)
	if !eval[bool](t, ctx, typingShown) || !eval[bool](t, ctx, `document.querySelector("#channels .busy") !== null`) {
		t.Fatal("the /status reply cleared the typing line or the busy marker while the agent still runs")
	}
	close(release)
	poll(t, ctx, `Array.from(document.querySelectorAll("#log .bot")).some(e => e.textContent === "bot: re: first")`)
	poll(t, ctx, `!(`+typingShown+`) && document.querySelector("#channels .busy") === null`)
}

// TestWebChatOutboxKeepsSendsWhileDown: sending while the bot was down used
// to pop a blocking alert and lose the message. Now it waits in the page's
// outbox (kept in localStorage, so closing or reloading the page keeps it)
// and goes out, in order, once the bot is back.
func TestWebChatOutboxKeepsSendsWhileDown(t *testing.T) {
	ctx := chromium(t)
	ag := newRecAgent(func(context.Context, agent.Request) error { return nil })
	addr := freeAddr(t)
	stop := webBot(t, addr, ag)
	if err := chromedp.Do(ctx, chromedp.Navigate("http://"+addr+"/")); err != nil {
		t.Fatal(err)
	}
	typeAndSend(t, ctx, "before")
	poll(t, ctx, `Array.from(document.querySelectorAll("#log .bot")).some(e => e.textContent === "bot: re: before")`)
	stop()
	typeAndSend(t, ctx, "one")
	typeAndSend(t, ctx, "two")
	poll(t, ctx, `JSON.parse(localStorage.getItem("bot-outbox") || "[]").length === 2`)
	poll(t, ctx, `document.getElementById("outbox").textContent.startsWith("2 message")`)
	// Close the page (as a reload or a closed tab does), bring the bot back
	// on the same address, and open the page again: the sends survive.
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank")); err != nil {
		t.Fatal(err)
	}
	webBot(t, addr, ag)
	if err := chromedp.Do(ctx, chromedp.Navigate("http://"+addr+"/")); err != nil {
		t.Fatal(err)
	}
	poll(t, ctx, `Array.from(document.querySelectorAll("#log .bot")).some(e => e.textContent === "bot: re: two")`)
	poll(t, ctx, `JSON.parse(localStorage.getItem("bot-outbox") || "[]").length === 0`)
	spans, _, _ := ag.snapshot()
	var prompts []string
	for _, s := range spans {
		prompts = append(prompts, s.prompt)
	}
	if len(prompts) != 3 || prompts[0] != "before" || prompts[1] != "one" || prompts[2] != "two" {
		t.Fatalf("the agent saw %q, want before, one, two (each once, in order)", prompts)
	}
}
