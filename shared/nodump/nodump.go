// Package nodump closes a process to other processes of the same user.
//
// The edge and its functions run as one system user, each function with
// only the secrets it needs in its environment. That separation holds only
// if one process cannot read another's: by default a process of the same
// user may read /proc/<pid>/environ and /proc/<pid>/mem of any other, or
// attach a debugger. A non-dumpable process (prctl PR_SET_DUMPABLE 0) has
// its /proc files owned by root and refuses ptrace from unprivileged
// processes, so a compromised function cannot read Caddy's secrets or
// another function's. It also writes no core file, which would hold the
// same secrets.
package nodump

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// Seal makes the calling process non-dumpable. Call it first thing in
// main: what is in memory before (the environment, from exec) is covered
// too, as the flag guards the files, not the pages. It is reset by execve,
// so every binary seals itself.
func Seal() error {
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("nodump: %w", err)
	}
	return nil
}

// Sealed reports whether the calling process is non-dumpable.
func Sealed() bool {
	v, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
	return err == nil && v == 0
}
