package main

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/steadfast-go/steadfast/examples/internal/pgtest"

	"github.com/jackc/pgx/v5"

	"github.com/steadfast-go/steadfast/examples/bot/agent"
)

// TestReplicasShareChannelLocks: two bot replicas on one database, one
// recording agent. A channel blocked on one replica does not stop another
// channel on the other (channels overlap across replicas); 5 channels × 20
// messages split across both run one at a time per channel, all answered;
// and every channel's session row carries the last grant's token, so no
// stale holder wrote after a newer one.
func TestReplicasShareChannelLocks(t *testing.T) {
	u := pgtest.NewDatabase(t, "bot")
	hold := make(chan struct{})
	blocked := make(chan struct{})
	ag := newRecAgent(func(ctx context.Context, req agent.Request) error {
		if req.Prompt == "block" {
			close(blocked)
			select {
			case <-hold:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	})
	args := []string{"-db", u, "-drain", "10s"}
	h1 := startTerminal(t, args, hooks{agent: ag})
	h2 := startTerminal(t, args, hooks{agent: ag})

	h1.send("a", "block")
	<-blocked
	h2.send("b", "free") // another channel, on the other replica
	if l := h2.nextBot(); l.ch != "b" || l.text != "re: free" {
		t.Fatalf("replica 2 answered %+v while channel a was busy on replica 1", l)
	}
	h2.send("a", "after block") // same channel, other replica: must wait
	close(hold)
	if l := h1.nextBot(); l.text != "re: block" {
		t.Fatalf("replica 1: %+v", l)
	}
	if l := h2.nextBot(); l.text != "re: after block" {
		t.Fatalf("replica 2: %+v", l)
	}

	const channels, perChannel = 5, 20
	for i := range perChannel {
		for c := range channels {
			h := h1
			if (i+c)%2 == 1 {
				h = h2
			}
			h.send(fmt.Sprintf("c%d", c), fmt.Sprintf("m%d", i))
		}
	}
	for range channels * perChannel / 2 {
		h1.nextBot()
		h2.nextBot()
	}
	if err := h1.finish(); err != nil {
		t.Fatal(err)
	}
	if err := h2.finish(); err != nil {
		t.Fatal(err)
	}
	spans, maxActive, maxTotal := ag.snapshot()
	if len(spans) != 3+channels*perChannel {
		t.Fatalf("%d runs, want %d", len(spans), 3+channels*perChannel)
	}
	for ch, n := range maxActive {
		if n != 1 {
			t.Fatalf("channel %s ran %d agents at once across the replicas", ch, n)
		}
	}
	if maxTotal < 2 {
		t.Fatal("channels never overlapped")
	}
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var mismatched int
	err = conn.QueryRow(ctx, `SELECT count(*) FROM bot_sessions s JOIN steadfast_pglock_tokens k ON k.key = s.channel WHERE s.token <> k.token`).Scan(&mismatched)
	if err != nil || mismatched != 0 {
		t.Fatalf("%d sessions not written by their channel's last holder (%v)", mismatched, err)
	}
}

// TestLostLockKillsTheAgent: when the channel's lock connection dies (its
// backend terminated), the lease's context ends, the running agent is
// canceled, and the user is told why.
func TestLostLockKillsTheAgent(t *testing.T) {
	u := pgtest.NewDatabase(t, "bot")
	started := make(chan struct{})
	ag := newRecAgent(func(ctx context.Context, req agent.Request) error {
		close(started)
		<-ctx.Done() // runs until canceled
		return ctx.Err()
	})
	h := startTerminal(t, []string{"-db", u, "-drain", "10s"}, hooks{agent: ag})
	h.send("a", "long run")
	<-started
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, u)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid() AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`); err != nil {
		t.Fatal(err)
	}
	l := h.nextBot() // within the lease's ping bound (about 2 s)
	if l.ch != "a" || !strings.Contains(l.text, "lost the channel's lock") {
		t.Fatalf("reply %+v, want the lost-lock message", l)
	}
	if err := h.finish(); err != nil {
		t.Fatal(err)
	}
}
