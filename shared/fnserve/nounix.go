package fnserve

import (
	"fmt"
	"runtime"
	"unsafe"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"github.com/elastic/go-seccomp-bpf/arch"
	"golang.org/x/net/bpf"
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
//
// The other ways to a socket are closed too: io_uring (whose socket
// operation makes one without the socket system call) is refused whole,
// and so is every system call made under another architecture than the
// process's own (int 0x80's 32-bit socket and socketcall, which the
// library's filter would let through to its default action).
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
			}, {
				Action: seccomp.ActionErrno,
				Names:  []string{"io_uring_setup", "io_uring_enter", "io_uring_register"},
			}},
		},
	}
	if err := seccomp.LoadFilter(f); err != nil {
		return fmt.Errorf("forbid unix sockets: %w", err)
	}
	if err := loadNativeOnly(); err != nil {
		return fmt.Errorf("forbid unix sockets: %w", err)
	}
	return nil
}

// seccompArchOffset is seccomp_data.arch's offset (after the int nr).
const seccompArchOffset = 4

// nativeOnly is a seccomp program that lets every system call of the
// process's own architecture through (the other filter decides those)
// and refuses, EPERM, every one made under another.
func nativeOnly() ([]bpf.RawInstruction, error) {
	a, err := arch.GetInfo("")
	if err != nil {
		return nil, err
	}
	return bpf.Assemble([]bpf.Instruction{
		bpf.LoadAbsolute{Off: seccompArchOffset, Size: 4},
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: uint32(a.ID), SkipTrue: 1},
		bpf.RetConstant{Val: unix.SECCOMP_RET_ERRNO | uint32(unix.EPERM)},
		bpf.RetConstant{Val: unix.SECCOMP_RET_ALLOW},
	})
}

// loadNativeOnly installs nativeOnly on every thread. The library's
// filter, loaded first, has set no_new_privs, which an unprivileged
// process needs for this.
func loadNativeOnly() error {
	raw, err := nativeOnly()
	if err != nil {
		return err
	}
	filter := make([]unix.SockFilter, len(raw))
	for i, r := range raw {
		filter[i] = unix.SockFilter{Code: r.Op, Jt: r.Jt, Jf: r.Jf, K: r.K}
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	r1, _, errno := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&prog)))
	runtime.KeepAlive(filter)
	if errno != 0 {
		return fmt.Errorf("seccomp: %w", errno)
	}
	if r1 != 0 {
		// TSYNC: a thread that could not take the filter, none took it.
		return fmt.Errorf("seccomp: thread %d could not take the filter", r1)
	}
	return nil
}
