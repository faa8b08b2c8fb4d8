//go:build !unix

package agent

import "os/exec"

// setGroup is a no-op where process groups are not available: the default
// cancellation kills only the direct child.
func setGroup(cmd *exec.Cmd) {}
