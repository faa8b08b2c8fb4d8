package main

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httputil"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/steadfast-go/steadfast/examples/internal/pgtest"

	"github.com/steadfast-go/steadfast/examples/sse/client"
	"github.com/steadfast-go/steadfast/examples/sse/internal/verify"
	"github.com/steadfast-go/steadfast/examples/sse/server"
)

// balancer is a load balancer for the test: it proxies everything,
// streams included, to one backend, which the test switches.
type balancer struct {
	backend atomic.Pointer[url.URL]
	srv     *http.Server
	url     string
}

func newBalancer(t *testing.T, backend string) *balancer {
	t.Helper()
	lb := &balancer{}
	lb.point(t, backend)
	p := &httputil.ReverseProxy{
		Rewrite:       func(r *httputil.ProxyRequest) { r.SetURL(lb.backend.Load()); r.Out.Host = r.In.Host },
		FlushInterval: -1,
		ErrorHandler:  func(w http.ResponseWriter, _ *http.Request, _ error) { w.WriteHeader(http.StatusBadGateway) },
	}
	addr := freeAddr(t)
	lb.url = "http://" + addr
	lb.srv = &http.Server{Addr: addr, Handler: p}
	ln, err := netListen(addr)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { lb.srv.Serve(ln); close(done) }()
	t.Cleanup(func() { lb.srv.Close(); <-done })
	return lb
}

func (lb *balancer) point(t *testing.T, backend string) {
	u, err := url.Parse(backend)
	if err != nil {
		t.Fatal(err)
	}
	lb.backend.Store(u)
}

// waitLog waits until the process has logged want.
func waitLog(t *testing.T, p *proc, want string) {
	t.Helper()
	deadline := time.Now().Add(waitLimit)
	for !strings.Contains(p.log(), want) {
		if time.Now().After(deadline) {
			t.Fatalf("the server never logged %q:\n%s", want, p.log())
		}
		time.Sleep(10 * time.Millisecond) // poll interval
	}
}

// Two replicas on one PostgreSQL database behind a load balancer. A client
// streams through the balancer from A (the leader, running the replies)
// while A is SIGKILLed with replies running and queued: the balancer
// switches to B, the client resumes there by Last-Event-ID and ends with
// exactly B's /history (0 lost, 0 duplicated); B takes over the leadership
// and answers every accepted message once, in order. A send with one
// idempotency key to A and then to B is stored and executed once.
func TestBinaryReplicasShareSessionsAcrossKill(t *testing.T) {
	db := pgtest.NewDatabase(t, "sse")
	addrA, addrB := freeAddr(t), freeAddr(t)
	args := []string{"-db", db, "-typing-delay", "20ms"}
	a := startProc(t, addrA, args...)
	waitLog(t, a, "this replica leads")
	b := startProc(t, addrB, args...)
	lb := newBalancer(t, "http://"+addrA)
	hc := &http.Client{Timeout: 10 * time.Second}

	id, err := client.CreateSession(t.Context(), hc, lb.url)
	if err != nil {
		t.Fatal(err)
	}
	c, evs := followSession(t, lb.url, id)
	evs.waitFor(t, "the stream", func(e []client.Event) bool { return len(e) > 0 })

	var accepted []string
	sendVia := func(base, key, text string) (int, bool) {
		code, fresh := send(hc, base, id, key, text)
		if fresh {
			accepted = append(accepted, key)
		}
		return code, fresh
	}
	// One key, sent to A and then to B: accepted once.
	if code, fresh := sendVia("http://"+addrA, "same-key", "one key two replicas"); !fresh {
		t.Fatalf("first send of the key to A: %d", code)
	}
	if code, fresh := sendVia("http://"+addrB, "same-key", "one key two replicas"); fresh || (code != http.StatusConflict && code != http.StatusAccepted) {
		t.Fatalf("the key again on B: %d fresh=%v, want 409 (in progress) or a replayed 202", code, fresh)
	}
	for i := range 6 {
		if code, fresh := sendVia(lb.url, fmt.Sprintf("a%d", i), fmt.Sprintf("message %d to A with some words", i)); !fresh {
			t.Fatalf("send %d: %d", i, code)
		}
	}
	// Kill A in the middle of a reply, with more queued behind it.
	evs.waitFor(t, "a reply under way on A", func(e []client.Event) bool {
		return count(e, server.TypeDone) >= 2 && e[len(e)-1].Type == server.TypeDelta
	})
	onA := len(accepted)
	killed := time.Now()
	a.kill(t)
	lb.point(t, "http://"+addrB)
	waitLog(t, b, "this replica leads")
	takeover := time.Since(killed)
	// B took over what A had accepted and not answered.
	waitLog(t, b, "session queue resumed")
	for i := range 3 {
		if code, fresh := sendVia(lb.url, fmt.Sprintf("b%d", i), fmt.Sprintf("message %d to B", i)); !fresh {
			t.Fatalf("send %d to B: %d", i, code)
		}
	}
	evs.waitFor(t, "every message answered", func(e []client.Event) bool {
		return count(e, server.TypeUser) == len(accepted) && count(e, server.TypeDone) == len(accepted)
	})
	if code, fresh := send(hc, lb.url, id, "same-key", "one key two replicas"); fresh || code != http.StatusAccepted {
		t.Fatalf("the key once more after its reply: %d fresh=%v, want a replayed 202", code, fresh)
	}
	want := fullHistory(t, c)
	evs.waitFor(t, "the head", func(e []client.Event) bool {
		s := storedOnly(e)
		return len(s) > 0 && s[len(s)-1].ID == want[len(want)-1].ID
	})
	sameEvents(t, storedOnly(evs.snapshot()), want)
	restarts, err := verify.Answered(want, accepted, verify.SimulatorReply)
	if err != nil {
		t.Fatal(err)
	}
	if restarts < 1 {
		t.Fatal("no reply was restarted: A was not killed mid-reply")
	}
	t.Logf("%d events, %d messages accepted on two replicas (%d before the kill), %d replies restarted after the kill; B led %v after the kill",
		len(want), len(accepted), onA, restarts, takeover.Round(time.Millisecond))
}

// Stop and interrupt act on the running reply, which the leader runs: sent
// to a follower they are forwarded to the leader and answered as it
// answers. A message sent to the follower runs on the leader.
func TestBinaryReplicasFollowerForwardsControl(t *testing.T) {
	db := pgtest.NewDatabase(t, "sse")
	addrA, addrB := freeAddr(t), freeAddr(t)
	args := []string{"-db", db, "-typing-delay", "20ms"}
	a := startProc(t, addrA, args...)
	waitLog(t, a, "this replica leads")
	b := startProc(t, addrB, args...)
	baseB := "http://" + addrB
	hc := &http.Client{Timeout: 10 * time.Second}
	id, err := client.CreateSession(t.Context(), hc, baseB)
	if err != nil {
		t.Fatal(err)
	}
	_, evs := followSession(t, baseB, id)
	if code, fresh := send(hc, baseB, id, "long", "/long"); !fresh {
		t.Fatalf("send to the follower: %d", code)
	}
	evs.waitFor(t, "the reply (run by the leader)", func(e []client.Event) bool { return count(e, server.TypeDelta) >= 3 })
	post := func(path string) (int, string) {
		resp, err := hc.Post(baseB+"/sessions/"+id+"/"+path, "application/json", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if code, body := post("interrupt"); code != 200 || !strings.Contains(body, `"interrupted":true`) {
		t.Fatalf("interrupt via the follower: %d %s", code, body)
	}
	evs.waitFor(t, "interrupted", func(e []client.Event) bool { return count(e, server.TypeInterrupted) == 1 })
	if code, body := post("stop"); code != 200 || !strings.Contains(body, `"state":"ended"`) {
		t.Fatalf("stop via the follower: %d %s", code, body)
	}
	evs.waitFor(t, "the end", func(e []client.Event) bool { return count(e, "end") == 1 })
	if code, _ := send(hc, baseB, id, "late", "after the stop"); code != http.StatusConflict {
		t.Fatalf("send after the stop: %d, want 409", code)
	}
	if strings.Contains(b.log(), "this replica leads") {
		t.Fatal("the follower took the leadership; the test did not forward")
	}
}

// Sends racing on both replicas, each key sent to both: every key is stored
// once, every message runs once, in stream order, and each sender's
// accepted messages keep their order.
func TestBinaryReplicasConcurrentSendsRunOnceInOrder(t *testing.T) {
	db := pgtest.NewDatabase(t, "sse")
	addrA, addrB := freeAddr(t), freeAddr(t)
	args := []string{"-db", db, "-typing-delay", "1ms"}
	a := startProc(t, addrA, args...)
	waitLog(t, a, "this replica leads")
	startProc(t, addrB, args...)
	bases := []string{"http://" + addrA, "http://" + addrB}
	hc := &http.Client{Timeout: 10 * time.Second}
	id, err := client.CreateSession(t.Context(), hc, bases[1])
	if err != nil {
		t.Fatal(err)
	}
	c, evs := followSession(t, bases[1], id)
	const senders, perSender = 4, 10
	accepted := make([][]string, senders)
	done := make(chan struct{})
	for s := range senders {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := range perSender {
				key, text := fmt.Sprintf("s%d-%d", s, i), fmt.Sprintf("sender %d message %d", s, i)
				first, _ := send(hc, bases[(s+i)%2], id, key, text)
				second, _ := send(hc, bases[(s+i+1)%2], id, key, text) // the same key on the other replica
				if first != http.StatusAccepted || (second != http.StatusAccepted && second != http.StatusConflict) {
					t.Errorf("%s: %d then %d", key, first, second)
					return
				}
				accepted[s] = append(accepted[s], key)
			}
		}()
	}
	for range senders {
		<-done
	}
	total := senders * perSender
	evs.waitFor(t, "every message answered", func(e []client.Event) bool { return count(e, server.TypeDone) >= total })
	want := fullHistory(t, c)
	if n := count(want, server.TypeUser); n != total {
		t.Fatalf("%d user events stored for %d keys", n, total)
	}
	for s := range senders {
		if _, err := verify.Answered(want, accepted[s], verify.SimulatorReply); err != nil {
			t.Fatalf("sender %d: %v", s, err)
		}
	}
}
