//go:build !linux

package demo

import "os/exec"

// setDeathSignal does nothing where the kernel cannot tie a child's life
// to its parent; the demo still stops its children on every exit it sees.
func setDeathSignal(*exec.Cmd) {}
