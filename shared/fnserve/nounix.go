package fnserve

import (
	"fmt"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"golang.org/x/sys/unix"
)

// forbidUnixSockets makes every later socket(AF_UNIX, ...) of this process
// fail with EPERM, on every thread (seccomp, TSYNC; irreversible, and kept
// across execve).
//
// A function runs as the same user as Caddy, whose admin API listens on a
// unix socket of that user and asks for no credentials: a compromised
// function could otherwise load a config of its own into the edge, and
// with it read Caddy's environment. A function needs no unix socket of
// its own making: its listener is inherited, and it reaches PostgreSQL,
// Redis, ClickHouse, mail and webhooks over TCP. Paths it cannot reach
// this way stay closed whatever their file mode says.
func forbidUnixSockets() error {
	f := seccomp.Filter{
		NoNewPrivs: true,
		Flag:       seccomp.FilterFlagTSync,
		Policy: seccomp.Policy{
			DefaultAction: seccomp.ActionAllow,
			Syscalls: []seccomp.SyscallGroup{{
				Action: seccomp.ActionErrno, // EPERM
				NamesWithCondtions: []seccomp.NameWithConditions{{
					Name:       "socket",
					Conditions: []seccomp.Condition{{Argument: 0, Operation: seccomp.Equal, Value: unix.AF_UNIX}},
				}},
			}},
		},
	}
	if err := seccomp.LoadFilter(f); err != nil {
		return fmt.Errorf("forbid unix sockets: %w", err)
	}
	return nil
}
