package agent_test

import (
	"fmt"

	"github.com/steadfast-go/steadfast/examples/bot/agent"
)

func ExampleCommand_Args() {
	c, err := agent.ParseTemplate(`claude -p --resume {session} --output-format json {prompt}`)
	if err != nil {
		panic(err)
	}
	// First message of a channel: no session yet, so "--resume {session}"
	// is left out. The prompt stays one argument, whatever it contains.
	fmt.Printf("%q\n", c.Args(agent.Request{Prompt: `fix "it"; rm -rf $(pwd)`}))
	fmt.Printf("%q\n", c.Args(agent.Request{Prompt: "and now?", SessionID: "4f1c"}))
	// Output:
	// ["claude" "-p" "--output-format" "json" "fix \"it\"; rm -rf $(pwd)"]
	// ["claude" "-p" "--resume" "4f1c" "--output-format" "json" "and now?"]
}
