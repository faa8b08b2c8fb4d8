//go:build unix

package agent

import (
	"os/exec"
	"syscall"
)

// setGroup puts the command in a new process group and makes context
// cancellation kill that whole group, so children of the agent (a shell, a
// build, a test run) die with it instead of lingering after a timeout.
func setGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error {
		// With Setpgid the group id is the child's pid; a negative pid
		// signals every process in the group.
		return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
}
