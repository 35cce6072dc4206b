package demo

import (
	"os/exec"
	"syscall"
)

// setDeathSignal makes the kernel kill the child if the demo dies without
// cleaning up (kill -9): no p2pserver is left holding its port.
func setDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
