// Package sandboxtest holds what tests of the function sandbox share: a
// victim process (a function just started, not sealed yet) and the
// attacker's attempt on it.
package sandboxtest

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"testing"

	"golang.org/x/sys/unix"
)

// Victim is the body of a victim process, run by a test binary started
// again with StartVictim's variable: dumpable, holding what an attacker
// wants, until its stdin closes. Under Yama's ptrace_scope 1 it lets any
// process of its user trace it, as it could be traced without Yama, so
// that unrestricted attempts succeed for non-root too. It exits.
func Victim() {
	_ = unix.Prctl(unix.PR_SET_PTRACER, unix.PR_SET_PTRACER_ANY, 0, 0, 0)
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	os.Exit(0)
}

// StartVictim starts the test binary again with env=victim (whose
// TestMain must then call Victim) and returns its pid; it ends with the
// test.
func StartVictim(t testing.TB, env string) int {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), env+"=victim")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = stdin.Close()
		_ = cmd.Wait()
	})
	line := make([]byte, len("ready\n"))
	if _, err := io.ReadFull(stdout, line); err != nil || string(line) != "ready\n" {
		t.Fatalf("victim: %q, %v", line, err)
	}
	return cmd.Process.Pid
}

// OpenMem opens another process's memory for reading, as the attack does
// in the window before that process seals itself.
func OpenMem(pid int) error {
	f, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return err
	}
	return f.Close()
}

// ErrText is "ok" for nil, an errno's name (EACCES), or the error's text.
func ErrText(err error) string {
	if err == nil {
		return "ok"
	}
	var errno unix.Errno
	if errors.As(err, &errno) {
		return unix.ErrnoName(errno)
	}
	return err.Error()
}
