// Package verify checks the transcripts of the SSE example's crash tests:
// that every message the server accepted is answered exactly once, in
// order, with no silent duplicate of a half reply.
package verify

import (
	"encoding/json"
	"fmt"
	"strings"

	"github.com/steadfast-go/steadfast/examples/sse/client"
	"github.com/steadfast-go/steadfast/examples/sse/server"
)

// SimulatorReply is the full reply of a server.Simulator to text.
func SimulatorReply(text string) string {
	return strings.Join(strings.Fields("echo: "+strings.TrimSpace(text)), " ")
}

// Answered checks the stored events of one session, in stream order:
//
//   - each user event has a new key, and every key of accepted is among
//     them, in the order given (accepted is in the order the sends were
//     answered 202, one at a time);
//   - every user message (also one whose 202 was lost in a crash) has
//     exactly one outcome, done, and the outcomes come in message order;
//   - no reply event precedes its message or follows its outcome;
//   - the deltas after the last restarted event of a reply spell reply(text)
//     exactly: a reply cut mid-way and run again never reads as a duplicate.
//
// It returns the number of restarted events, or an error naming the first
// broken rule.
func Answered(evs []client.Event, accepted []string, reply func(string) string) (restarts int, err error) {
	var (
		order []string
		text  = map[string]string{}
		body  = map[string]*strings.Builder{}
		done  = map[string]bool{}
		outs  []string
	)
	for i, ev := range evs {
		switch ev.Type {
		case server.TypeUser:
			var u server.UserEvent
			if err := json.Unmarshal(ev.Data, &u); err != nil {
				return 0, fmt.Errorf("event %d: %v", i, err)
			}
			if _, dup := text[u.Key]; dup {
				return 0, fmt.Errorf("event %d: message %s stored twice", i, u.Key)
			}
			order = append(order, u.Key)
			text[u.Key] = u.Text
			body[u.Key] = &strings.Builder{}
		case server.TypeDelta, server.TypeRestarted, server.TypeDone, server.TypeFailed, server.TypeInterrupted:
			var re server.ReplyEvent
			if err := json.Unmarshal(ev.Data, &re); err != nil {
				return 0, fmt.Errorf("event %d: %v", i, err)
			}
			b := body[re.ReplyTo]
			switch {
			case b == nil:
				return 0, fmt.Errorf("event %d: %s for %s before its message", i, ev.Type, re.ReplyTo)
			case done[re.ReplyTo]:
				return 0, fmt.Errorf("event %d: %s for %s after its outcome", i, ev.Type, re.ReplyTo)
			}
			switch ev.Type {
			case server.TypeDelta:
				b.WriteString(re.Text)
			case server.TypeRestarted:
				restarts++
				b.Reset()
			case server.TypeDone:
				done[re.ReplyTo] = true
				outs = append(outs, re.ReplyTo)
			default:
				return 0, fmt.Errorf("event %d: message %s answered %s %s", i, re.ReplyTo, ev.Type, re.Error)
			}
		}
	}
	if err := inOrder(order, accepted); err != nil {
		return 0, err
	}
	for i, k := range order {
		if i >= len(outs) {
			return 0, fmt.Errorf("message %d (%s) has no outcome (%d of %d answered)", i, k, len(outs), len(order))
		}
		if outs[i] != k {
			return 0, fmt.Errorf("outcome %d is for %s, want %s: out of order", i, outs[i], k)
		}
		if got, want := body[k].String(), reply(text[k]); got != want {
			return 0, fmt.Errorf("reply to %s is %q, want %q", k, got, want)
		}
	}
	return restarts, nil
}

// inOrder checks that accepted is a subsequence of order.
func inOrder(order, accepted []string) error {
	j := 0
	for _, k := range order {
		if j < len(accepted) && accepted[j] == k {
			j++
		}
	}
	if j < len(accepted) {
		return fmt.Errorf("accepted message %s (#%d) missing or out of order among the %d stored", accepted[j], j, len(order))
	}
	return nil
}
