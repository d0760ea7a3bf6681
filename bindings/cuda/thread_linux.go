//go:build linux

package cuda

import "syscall"

// threadID returns the calling OS thread's id (never 0 on Linux).
func threadID() int { return syscall.Gettid() }
