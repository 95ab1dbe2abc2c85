package sandbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/net/bpf"
	"golang.org/x/sys/unix"

	"github.com/glassmkr/guardian/shared/sandbox/sandboxtest"
)

// The test binary runs again as the processes of the tests, chosen by
// this variable: a victim (a process not sealed yet), a function that
// enters the sandbox, or one that does so on a kernel without Landlock.
const childEnv = "SANDBOX_TEST_CHILD"

func TestMain(m *testing.M) {
	switch os.Getenv(childEnv) {
	case "victim":
		sandboxtest.Victim()
	case "restricted":
		restricted()
	case "nolandlock":
		noLandlock()
	}
	os.Exit(m.Run())
}

// restricted tries, before and after Enter, what a compromised function
// would, then the work a function does, and prints the outcomes as JSON.
func restricted() {
	victimPid, _ := strconv.Atoi(os.Getenv("SANDBOX_TEST_VICTIM"))
	parent := os.Getppid()
	r := map[string]string{
		"mem_before":         sandboxtest.ErrText(sandboxtest.OpenMem(victimPid)),
		"kill_parent_before": sandboxtest.ErrText(unix.Kill(parent, 0)),
	}
	p, err := Enter()
	if err != nil {
		r["enter"] = err.Error()
	} else {
		r["enter"] = "ok"
		r["abi"] = strconv.Itoa(p.ABI)
		r["ptrace"] = strconv.FormatBool(p.Ptrace)
		r["scopes"] = strconv.FormatBool(p.Scopes)
	}
	r["mem_victim"] = sandboxtest.ErrText(sandboxtest.OpenMem(victimPid))
	r["mem_parent"] = sandboxtest.ErrText(sandboxtest.OpenMem(parent))
	r["mem_self"] = sandboxtest.ErrText(sandboxtest.OpenMem(os.Getpid()))
	r["kill_parent"] = sandboxtest.ErrText(unix.Kill(parent, 0))
	r["kill_victim"] = sandboxtest.ErrText(unix.Kill(victimPid, 0))
	r["kill_self"] = sandboxtest.ErrText(unix.Kill(os.Getpid(), 0))
	r["file"] = sandboxtest.ErrText(useFile(os.Getenv("SANDBOX_TEST_DIR")))
	r["dial"] = sandboxtest.ErrText(dial(os.Getenv("SANDBOX_TEST_ADDR")))
	r["preempt_gc"] = sandboxtest.ErrText(preemptAndCollect())
	_ = json.NewEncoder(os.Stdout).Encode(r)
	os.Exit(0)
}

// noLandlock enters the sandbox on a kernel whose Landlock system calls
// fail with the errno in SANDBOX_TEST_ERRNO (a seccomp filter stands in
// for a kernel without Landlock) and prints what Enter returned.
func noLandlock() {
	errno, _ := strconv.Atoi(os.Getenv("SANDBOX_TEST_ERRNO"))
	r := map[string]string{"filter": sandboxtest.ErrText(failLandlock(unix.Errno(errno)))}
	p, err := Enter()
	r["enter"] = sandboxtest.ErrText(err)
	r["protection"] = fmt.Sprintf("%+v", p)
	_ = json.NewEncoder(os.Stdout).Encode(r)
	os.Exit(0)
}

// failLandlock makes every landlock_create_ruleset of the process fail
// with errno.
func failLandlock(errno unix.Errno) error {
	prog, err := bpf.Assemble([]bpf.Instruction{
		bpf.LoadAbsolute{Off: 0, Size: 4}, // seccomp_data.nr
		bpf.JumpIf{Cond: bpf.JumpEqual, Val: unix.SYS_LANDLOCK_CREATE_RULESET, SkipFalse: 1},
		bpf.RetConstant{Val: unix.SECCOMP_RET_ERRNO | uint32(errno)},
		bpf.RetConstant{Val: unix.SECCOMP_RET_ALLOW},
	})
	if err != nil {
		return err
	}
	filter := make([]unix.SockFilter, len(prog))
	for i, r := range prog {
		filter[i] = unix.SockFilter{Code: r.Op, Jt: r.Jt, Jf: r.Jf, K: r.K}
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return err
	}
	fprog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	_, _, e := unix.Syscall(unix.SYS_SECCOMP, unix.SECCOMP_SET_MODE_FILTER, unix.SECCOMP_FILTER_FLAG_TSYNC, uintptr(unsafe.Pointer(&fprog)))
	runtime.KeepAlive(filter)
	if e != 0 {
		return e
	}
	return nil
}

// useFile reads a file the test wrote, then writes and reads one of its own.
func useFile(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, "given"))
	if err != nil {
		return err
	}
	if string(b) != "given" {
		return fmt.Errorf("read %q", b)
	}
	own := filepath.Join(dir, "own")
	if err := os.WriteFile(own, []byte("own"), 0o600); err != nil {
		return err
	}
	if b, err := os.ReadFile(own); err != nil || string(b) != "own" {
		return fmt.Errorf("read back %q: %v", b, err)
	}
	return nil
}

// dial connects to the test's TCP listener and reads its greeting.
func dial(addr string) error {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	b, err := io.ReadAll(c)
	if err != nil {
		return err
	}
	if string(b) != "hello" {
		return fmt.Errorf("greeting %q", b)
	}
	return nil
}

// preemptAndCollect needs the runtime's signals to its own threads: on one
// P, a goroutine spinning without a preemption point gives the P back only
// when preempted asynchronously (a signal to its thread), which the main
// goroutine waits for, and the collections stop the world with it.
func preemptAndCollect() error {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	var stop atomic.Bool
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() {
			for !stop.Load() {
			}
		})
	}
	var garbage [][]byte
	for i := range 5 {
		time.Sleep(5 * time.Millisecond)
		garbage = append(garbage, make([]byte, 1<<20))
		if i%2 == 0 {
			runtime.GC()
		}
	}
	stop.Store(true)
	wg.Wait()
	if len(garbage) != 5 {
		return errors.New("lost work")
	}
	return nil
}

// runRestricted starts a victim and a restricted child and returns the
// child's outcomes.
func runRestricted(t *testing.T) map[string]string {
	t.Helper()
	victimPid := sandboxtest.StartVictim(t, childEnv)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "given"), []byte("given"), 0o644); err != nil {
		t.Fatal(err)
	}
	addr := greeter(t)
	return runChild(t, "restricted",
		"SANDBOX_TEST_VICTIM="+strconv.Itoa(victimPid),
		"SANDBOX_TEST_DIR="+dir,
		"SANDBOX_TEST_ADDR="+addr)
}

// runChild runs the test binary in a child mode with the extra variables
// and returns its JSON report.
func runChild(t *testing.T, mode string, env ...string) map[string]string {
	t.Helper()
	// A runtime that can no longer signal its own threads hangs.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(append(os.Environ(), childEnv+"="+mode), env...)
	cmd.Stderr = os.Stderr
	cmd.WaitDelay = time.Second
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s child: %v\n%s", mode, err, out)
	}
	var r map[string]string
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("%s child's report %q: %v", mode, out, err)
	}
	t.Logf("%s child: %v", mode, r)
	return r
}

// greeter listens on a local TCP port and says hello to every connection.
func greeter(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			_, _ = io.WriteString(c, "hello")
			_ = c.Close()
		}
	}()
	return ln.Addr().String()
}

func TestEnter(t *testing.T) {
	r := runRestricted(t)
	if r["enter"] != "ok" {
		t.Fatalf("Enter: %s", r["enter"])
	}
	// Not vacuous: unrestricted, the child could read the victim's
	// memory and signal the test.
	if r["mem_before"] != "ok" || r["kill_parent_before"] != "ok" {
		t.Fatalf("unrestricted, the child could not open the victim's memory (%s) or signal the test (%s)",
			r["mem_before"], r["kill_parent_before"])
	}

	t.Run("ptrace", func(t *testing.T) {
		if r["ptrace"] != "true" {
			t.Skipf("the kernel has no Landlock (ABI %s)", r["abi"])
		}
		for _, k := range []string{"mem_victim", "mem_parent"} {
			if r[k] != "EACCES" && r[k] != "EPERM" {
				t.Errorf("%s: %s, want EACCES or EPERM", k, r[k])
			}
		}
		if r["mem_self"] != "ok" {
			t.Errorf("own memory: %s", r["mem_self"])
		}
	})
	t.Run("signals", func(t *testing.T) {
		if r["scopes"] != "true" {
			t.Skipf("the kernel's Landlock (ABI %s) has no signal scoping with signals between threads fixed", r["abi"])
		}
		for _, k := range []string{"kill_parent", "kill_victim"} {
			if r[k] != "EPERM" {
				t.Errorf("%s: %s, want EPERM", k, r[k])
			}
		}
		if r["kill_self"] != "ok" {
			t.Errorf("signal to itself: %s", r["kill_self"])
		}
	})
	t.Run("work", func(t *testing.T) {
		for _, k := range []string{"file", "dial", "preempt_gc"} {
			if r[k] != "ok" {
				t.Errorf("%s: %s", k, r[k])
			}
		}
	})
}

// A kernel without Landlock (not built in, or not enabled at boot) does
// not stop a function: Enter does nothing and says so.
func TestEnterWithoutLandlock(t *testing.T) {
	// EPERM is a system call filter's answer (systemd's, which functions
	// inherit from Caddy): reported apart, so the log names the fix.
	for errno, want := range map[unix.Errno]Protection{unix.ENOSYS: {}, unix.EOPNOTSUPP: {}, unix.EPERM: {Filtered: true}} {
		r := runChild(t, "nolandlock", "SANDBOX_TEST_ERRNO="+strconv.Itoa(int(errno)))
		if r["filter"] != "ok" {
			t.Fatalf("seccomp filter: %s", r["filter"])
		}
		if r["enter"] != "ok" || r["protection"] != fmt.Sprintf("%+v", want) {
			t.Errorf("%s: Enter returned %s, %s", unix.ErrnoName(errno), r["protection"], r["enter"])
		}
	}
}

// The kernel here reports what Enter says it enforces: a Landlock that
// refuses signals must be reported as such.
func TestProbeMatchesKernel(t *testing.T) {
	p, err := probe()
	if err != nil {
		t.Fatal(err)
	}
	abi, _, errno := unix.Syscall(unix.SYS_LANDLOCK_CREATE_RULESET, 0, 0, unix.LANDLOCK_CREATE_RULESET_VERSION)
	switch {
	case errno != 0:
		if p.Ptrace || p.Scopes || p.ABI != 0 {
			t.Fatalf("no Landlock (%v), yet %+v", errno, p)
		}
	case !p.Ptrace || p.ABI != int(abi):
		t.Fatalf("Landlock ABI %d, yet %+v", abi, p)
	case abi < 6 && p.Scopes:
		t.Fatalf("ABI %d has no scopes, yet %+v", abi, p)
	case abi >= 7 && !p.Scopes:
		// ABI 7 kernels have signal scoping with its fix for threads, so
		// TestEnter's signals case (which skips without Scopes) must run.
		t.Fatalf("ABI %d scopes signals, yet %+v", abi, p)
	}
}
