// Package sandbox puts a function process in a Landlock domain of its own
// before it takes its secrets or serves a request.
//
// Functions run as Caddy's user. A function just started is dumpable until
// its own code seals it (shared/nodump), and in that window any process of
// the user may open its /proc/<pid>/mem; the kernel checks access only at
// open, so the descriptor stays readable after the victim seals and shows
// the secrets it receives later. A process in a Landlock domain may not
// trace another outside its domain, nor open that one's /proc/<pid>/mem or
// environ, whatever the other's dumpable state. As every function enters a
// domain of its own before it reads a request, a compromised function can
// reach neither a sibling that is not sealed yet nor Caddy.
//
// From Landlock ABI 6 (Linux 6.12) the domain also scopes signals and
// abstract unix sockets: a compromised function cannot kill Caddy or a
// sibling to have it restarted on demand. Signals between the threads of
// one process stay allowed (the kernel's erratum 2 of ABI 6, also in the
// later 6.12 stable kernels); go-landlock leaves the scopes out on a kernel
// without that fix, since before ABI 8 each thread enters a domain of its
// own and the Go runtime signals its threads (to preempt goroutines and to
// run the restriction on each thread).
//
// The ruleset restricts nothing a function does: on the file system it
// handles only making character and block devices, with no rule, which no
// function does (and its user could not anyway).
package sandbox

import (
	"errors"
	"fmt"

	"github.com/landlock-lsm/go-landlock/landlock"
	llsys "github.com/landlock-lsm/go-landlock/landlock/syscall"
	"golang.org/x/sys/unix"
)

// unusedFS are the file system rights the ruleset handles: a ruleset must
// handle some right before ABI 6, and these are rights no function uses.
const unusedFS = landlock.AccessFSSet(llsys.AccessFSMakeChar | llsys.AccessFSMakeBlock)

// scopes are the IPC scopes the domain gets where the kernel has them.
const scopes = landlock.ScopedSet(llsys.ScopeSignal | llsys.ScopeAbstractUnixSocket)

// Protection is what Enter put in place on the running kernel.
type Protection struct {
	// ABI is the kernel's Landlock ABI version, 0 without Landlock.
	ABI int
	// Ptrace: the process is in a Landlock domain and cannot trace, or
	// open /proc/<pid>/mem or environ of, any process outside it.
	Ptrace bool
	// Scopes: signals to processes outside the domain, and connections to
	// abstract unix sockets made outside it, are refused too.
	Scopes bool
	// Filtered: the kernel may have Landlock, but a system call filter
	// (systemd's SystemCallFilter=, inherited from Caddy) refused the
	// call with EPERM, so nothing applied.
	Filtered bool
}

// Enter puts every thread of the process in a new Landlock domain (and
// sets no_new_privs), as far as the kernel supports it: without Landlock
// it does nothing and says so in the Protection. It cannot be undone, and
// the process's children inherit the domain.
func Enter() (Protection, error) {
	p, err := probe()
	if err != nil {
		return Protection{}, err
	}
	cfg := landlock.Config{HandledAccessFS: unusedFS, Scoped: scopes}.BestEffort()
	if err := cfg.Restrict(); err != nil {
		return Protection{}, fmt.Errorf("sandbox: landlock: %w", err)
	}
	return p, nil
}

// probe says what Enter's best-effort restriction enforces on this kernel.
// Whether the scopes apply is go-landlock's decision (by ABI and errata),
// so it is asked for a ruleset of the scopes alone: it makes none when it
// would leave them out.
func probe() (Protection, error) {
	abi, err := llsys.LandlockGetABIVersion()
	if err != nil || abi < 1 {
		// ENOSYS: not built in; EOPNOTSUPP: not enabled at boot; EPERM:
		// a system call filter's answer. Any error means no Landlock to
		// go-landlock too.
		return Protection{Filtered: errors.Is(err, unix.EPERM)}, nil
	}
	p := Protection{ABI: abi, Ptrace: true}
	fd, _, err := landlock.Config{Scoped: scopes}.BestEffort().NewRulesetFD()
	if err != nil {
		return Protection{}, fmt.Errorf("sandbox: landlock scopes: %w", err)
	}
	if fd >= 0 {
		p.Scopes = true
		_ = unix.Close(fd)
	}
	return p, nil
}
