package router

import (
	"context"
	"fmt"
	"testing"
	"time"

	"pgregory.net/rapid"

	"github.com/steadfast-go/steadfast/examples/bot/agent"
	"github.com/steadfast-go/steadfast/examples/bot/chat"
)

// stepAgent lets the test run one channel's agent step by step: a run
// announces itself on started[ch], waits for release[ch], then announces
// its end on ended[ch].
type stepAgent struct {
	started, release, ended map[string]chan string
}

func (a *stepAgent) Run(ctx context.Context, req agent.Request) (agent.Reply, error) {
	select {
	case a.started[req.Channel] <- req.Prompt:
	case <-ctx.Done():
		return agent.Reply{}, ctx.Err()
	}
	select {
	case <-a.release[req.Channel]:
	case <-ctx.Done():
		return agent.Reply{}, ctx.Err()
	}
	a.ended[req.Channel] <- req.Prompt
	return agent.Reply{Text: req.Prompt}, nil
}

// TestRouterMatchesFIFOModel is a rapid state-machine test: the model is a
// plain FIFO of prompts per channel. Actions send a message to a channel or
// let the channel's current run finish; the run that starts must be the
// model's head, no other run of that channel may start meanwhile, and
// runs of other channels are unaffected.
func TestRouterMatchesFIFOModel(t *testing.T) {
	channels := []string{"a", "b", "c"}
	rapid.Check(t, func(rt *rapid.T) {
		a := &stepAgent{started: map[string]chan string{}, release: map[string]chan string{}, ended: map[string]chan string{}}
		for _, c := range channels {
			a.started[c], a.release[c], a.ended[c] = make(chan string), make(chan string), make(chan string, 1)
		}
		p := newFakePlatform()
		r := newTestRouter(t, a, p, time.Minute)
		model := map[string][]string{}
		n := 0
		expect := func(what string, c chan string, want string) {
			select {
			case got := <-c:
				if got != want {
					rt.Fatalf("%s: got %q, want %q", what, got, want)
				}
			case <-time.After(10 * time.Second):
				rt.Fatalf("%s: nothing within 10s, want %q", what, want)
			}
		}
		finish := func(ch string) {
			expect("start "+ch, a.started[ch], model[ch][0])
			// While it runs, no second run of this channel may start.
			select {
			case got := <-a.started[ch]:
				rt.Fatalf("run %q of %s started while %q runs", got, ch, model[ch][0])
			default:
			}
			a.release[ch] <- ""
			expect("end "+ch, a.ended[ch], model[ch][0])
			model[ch] = model[ch][1:]
		}
		rt.Repeat(map[string]func(*rapid.T){
			"send": func(rt *rapid.T) {
				ch := rapid.SampledFrom(channels).Draw(rt, "channel")
				n++
				prompt := fmt.Sprintf("%s-%d", ch, n)
				if err := r.Handle(chat.Message{Channel: ch, ID: prompt, Text: prompt}); err != nil {
					rt.Fatal(err)
				}
				model[ch] = append(model[ch], prompt)
			},
			"finish": func(rt *rapid.T) {
				ch := rapid.SampledFrom(channels).Draw(rt, "channel")
				if len(model[ch]) == 0 {
					rt.Skip("channel idle")
				}
				finish(ch)
			},
			"": func(rt *rapid.T) {
				queued := 0
				for _, q := range model {
					queued += len(q)
				}
				// Stats.Queued excludes the running message of each busy channel.
				if st := r.Stats(); st.Queued > queued {
					rt.Fatalf("router queues %d, model %d", st.Queued, queued)
				}
			},
		})
		for _, ch := range channels {
			for len(model[ch]) > 0 {
				finish(ch)
			}
		}
		if err := r.Drain(t.Context()); err != nil {
			rt.Fatal(err)
		}
		if st := r.Stats(); st.Channels != 0 || st.Locks.Held != 0 {
			rt.Fatalf("idle router holds state: %+v", st)
		}
	})
}
