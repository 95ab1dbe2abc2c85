// Command syscallfilter runs a program under a system call allow list, as
// a systemd unit's SystemCallFilter= (with SystemCallErrorNumber=EPERM)
// would: every system call not listed fails with EPERM. deploy_test uses
// it to run a function under the edge unit's filter, which it cannot ask
// systemd for where systemd is not running.
//
//	syscallfilter ALLOWLIST-FILE PROGRAM [ARG...]
//
// ALLOWLIST-FILE holds one system call name per line; names this
// architecture does not have are skipped, as systemd skips them.
package main

import (
	"fmt"
	"os"
	"strings"
	"syscall"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"github.com/elastic/go-seccomp-bpf/arch"
)

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: syscallfilter ALLOWLIST-FILE PROGRAM [ARG...]")
		os.Exit(2)
	}
	if err := run(os.Args[1], os.Args[2:]); err != nil {
		fmt.Fprintln(os.Stderr, "syscallfilter:", err)
		os.Exit(1)
	}
}

func run(list string, argv []string) error {
	raw, err := os.ReadFile(list)
	if err != nil {
		return err
	}
	info, err := arch.GetInfo("")
	if err != nil {
		return err
	}
	var names []string
	for _, n := range strings.Fields(string(raw)) {
		if _, ok := info.SyscallNames[n]; ok {
			names = append(names, n)
		}
	}
	f := seccomp.Filter{
		NoNewPrivs: true,
		Flag:       seccomp.FilterFlagTSync,
		Policy: seccomp.Policy{
			DefaultAction: seccomp.ActionErrno, // EPERM
			Syscalls:      []seccomp.SyscallGroup{{Action: seccomp.ActionAllow, Names: names}},
		},
	}
	if err := seccomp.LoadFilter(f); err != nil {
		return fmt.Errorf("load the filter: %w", err)
	}
	return syscall.Exec(argv[0], argv, os.Environ())
}
