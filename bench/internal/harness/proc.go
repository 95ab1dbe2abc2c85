// Package harness is what Guardian's benchmark programs (bench/functions,
// bench/edge) share: building binaries, starting and stopping the
// processes they measure, loopback HTTP clients, closed- and open-loop
// load generators, and the statistics over their samples.
//
// Every loop here is bounded by a count or a deadline, and only loopback
// addresses and unix sockets are used.
package harness

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Cleanups runs clean-up functions in the reverse order of their Add.
type Cleanups struct{ fns []func() error }

// Add registers f.
func (c *Cleanups) Add(f func() error) { c.fns = append(c.fns, f) }

// Run calls every registered function, newest first, once, and joins
// their errors.
func (c *Cleanups) Run() error {
	var errs []error
	for i := len(c.fns) - 1; i >= 0; i-- {
		errs = append(errs, c.fns[i]())
	}
	c.fns = nil
	return errors.Join(errs...)
}

// Child is a process we started, with its log file.
type Child struct {
	Name string
	Cmd  *exec.Cmd
	Log  *os.File
	done chan struct{}
}

// Spawn runs bin in its own process group (a terminal's ^C reaches only
// the bench, which stops its children in order), killed if the bench dies,
// with its output in dir/<name>.log and dir as its working directory. The
// caller must Stop it.
func Spawn(dir, name string, env []string, bin string, args ...string) (*Child, error) {
	logPath := filepath.Join(dir, name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("%s log: %w", name, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &Child{Name: name, Cmd: cmd, done: make(chan struct{}), Log: logf}
	go func() {
		_ = cmd.Wait()
		close(c.done)
	}()
	return c, nil
}

// Pid is the process id.
func (c *Child) Pid() int { return c.Cmd.Process.Pid }

// Stop sends SIGTERM and waits up to ten seconds, then kills the process
// group.
func (c *Child) Stop() error {
	defer c.Log.Close()
	select {
	case <-c.done:
		return nil
	default:
	}
	_ = c.Cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(10 * time.Second)
	defer t.Stop()
	select {
	case <-c.done:
		return nil
	case <-t.C:
		_ = syscall.Kill(-c.Cmd.Process.Pid, syscall.SIGKILL)
		<-c.done
		return fmt.Errorf("%s did not stop within 10s of SIGTERM; killed", c.Name)
	}
}

// Exited reports whether the process has ended.
func (c *Child) Exited() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// MinimalEnv is the environment of the processes a bench starts: a PATH
// and a home inside dir, nothing of the caller's, plus extra.
func MinimalEnv(dir string, extra ...string) []string {
	home := filepath.Join(dir, "home")
	return append([]string{
		"PATH=/usr/local/bin:/usr/bin:/bin",
		"HOME=" + home,
		"XDG_CONFIG_HOME=" + filepath.Join(home, ".config"),
		"XDG_DATA_HOME=" + filepath.Join(home, ".local", "share"),
		"TMPDIR=" + dir,
	}, extra...)
}

// GoBuild builds pkg of the module around the working directory into out.
func GoBuild(ctx context.Context, out, pkg string) error {
	modDir, err := ModuleDir(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "building %s ...\n", pkg)
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	cmd.Dir = modDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w\n%s", pkg, err, msg)
	}
	return nil
}

// ModuleDir returns the directory of the Guardian module's go.mod.
func ModuleDir(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside the Guardian module: run from the repository or pass the binaries as flags")
	}
	return filepath.Dir(gomod), nil
}

// Executable makes path absolute and checks that it is an executable file.
func Executable(path string) (string, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return "", fmt.Errorf("binary %s: %w", path, err)
	}
	if st, err := os.Stat(abs); err != nil || !st.Mode().IsRegular() || st.Mode().Perm()&0o111 == 0 {
		return "", fmt.Errorf("binary %s is not an executable file", abs)
	}
	return abs, nil
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// ShortTempRoot returns the temporary directory unless its path is so long
// that socket paths under it would pass the 107-byte unix limit.
func ShortTempRoot() string {
	if d := os.TempDir(); len(d) <= 40 {
		return d
	}
	return "/tmp"
}

// WaitUnix waits until something accepts on the unix socket sock, at most
// ten seconds, or until c has exited.
func WaitUnix(ctx context.Context, c *Child, sock string) error {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil && !c.Exited() {
		if conn, err := net.DialTimeout("unix", sock, time.Second); err == nil {
			conn.Close()
			return nil
		}
		Sleep(ctx, 10*time.Millisecond)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return fmt.Errorf("%s did not listen on %s within 10s (exited: %v)%s", c.Name, sock, c.Exited(), LogTail(c.Log.Name()))
}

// Sleep sleeps for d or until ctx is done.
func Sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// LogTail returns the last lines of a log file, for error messages.
func LogTail(path string) string {
	data, err := os.ReadFile(path)
	if err != nil || len(data) == 0 {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	lines = lines[max(0, len(lines)-20):]
	return "\n--- last lines of " + filepath.Base(path) + " ---\n" + strings.Join(lines, "\n")
}

// Truncate returns b as a string of at most n bytes (and "...").
func Truncate(b []byte, n int) string {
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}

// SelfCPU returns the user+system CPU time of this process (the load
// generator, when it is the caller), or 0.
func SelfCPU() time.Duration { return RusageCPU(syscall.RUSAGE_SELF) }

// RusageCPU returns the user+system CPU time getrusage(2) reports for who
// (RUSAGE_SELF or RUSAGE_CHILDREN), or 0.
func RusageCPU(who int) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(who, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// ProcCPU returns utime+stime of pid from /proc/<pid>/stat, or 0.
func ProcCPU(pid int) time.Duration {
	f := procStat(pid)
	if len(f) < 13 {
		return 0
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0
	}
	const clockTick = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / clockTick
}

// procStat returns the fields of /proc/<pid>/stat after the command (which
// is in parentheses and may hold spaces): state is [0], ppid [1], utime
// [11] and stime [12] (proc(5) fields 3, 4, 14, 15).
func procStat(pid int) []string {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return nil
	}
	i := bytes.LastIndex(data, []byte(") "))
	if i < 0 {
		return nil
	}
	return strings.Fields(string(data[i+2:]))
}

// ChildrenCPU returns the CPU time of every live process whose parent is
// ppid, plus ppid's own (for PostgreSQL: the postmaster and its backends).
// A child that exits between two readings takes its CPU time with it.
func ChildrenCPU(ppid int) time.Duration {
	total := ProcCPU(ppid)
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return total
	}
	want := strconv.Itoa(ppid)
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == ppid {
			continue
		}
		if f := procStat(pid); len(f) >= 13 && f[1] == want {
			total += ProcCPU(pid)
		}
	}
	return total
}

// ProcStatusKiB returns a "kB" field of /proc/<pid>/status (VmHWM, VmRSS),
// or 0.
func ProcStatusKiB(pid int, field string) int64 {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(data)) {
		name, rest, ok := strings.Cut(line, ":")
		if !ok || name != field {
			continue
		}
		v, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
		if err != nil {
			return 0
		}
		return v
	}
	return 0
}

// ResetPeakRSS sets pid's VmHWM back to its current RSS (clear_refs 5,
// Linux 4.0+), so the next VmHWM reading is the peak since now.
func ResetPeakRSS(pid int) error {
	return os.WriteFile("/proc/"+strconv.Itoa(pid)+"/clear_refs", []byte("5"), 0)
}

// MachineBusy returns the CPU time all CPUs have spent busy since boot
// (/proc/stat: everything but idle and iowait), or 0.
func MachineBusy() time.Duration {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0
	}
	var busy int64
	for i, v := range f[1:] {
		if i == 3 || i == 4 { // idle, iowait
			continue
		}
		if i >= 8 { // guest time is already in user
			break
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0
		}
		busy += n
	}
	const clockTick = 100 // USER_HZ on Linux
	return time.Duration(busy) * time.Second / clockTick
}
