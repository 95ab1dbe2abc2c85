package deploy_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	llsys "github.com/landlock-lsm/go-landlock/landlock/syscall"

	"github.com/glassmkr/guardian/shared/fnserve"
	"github.com/glassmkr/guardian/shared/testenv"
)

// A function runs under the edge unit's SystemCallFilter= (its children
// inherit Caddy's filter) and must still confine itself there: install its
// own seccomp filter (which keeps it off unix sockets) and enter its
// Landlock domain. systemd's @system-service allows neither seccomp nor
// landlock_*, so the unit must add them; without them every function
// fails to start. systemd is not running here, so the test expands the
// unit's filter with systemd-analyze and runs testfn under an equivalent
// seccomp allow list (testdata/syscallfilter).
func TestFunctionsConfineThemselvesUnderTheEdgeUnitsFilter(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("systemd-analyze not installed: cannot expand the unit's system call groups")
	}
	u := parseUnit(t, filepath.Join(root(t), "deploy", systemdDir, "guardian-caddy.service"))
	allowed := unitSyscalls(t, u.all("Service", "SystemCallFilter"))
	for _, need := range []string{"seccomp", "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self"} {
		if !allowed[need] {
			t.Errorf("the edge unit's SystemCallFilter does not allow %s, which every function calls at start", need)
		}
	}
	list := filepath.Join(t.TempDir(), "allowed")
	var names []string
	for n := range allowed {
		names = append(names, n)
	}
	slices.Sort(names)
	if err := os.WriteFile(list, []byte(strings.Join(names, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}

	filter := testenv.Build(t, "./deploy/testdata/syscallfilter")
	fn := testenv.Build(t, "./caddymodules/function/testdata/testfn")
	dir, err := os.MkdirTemp("", "sf") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	// As the runtime starts it: an inherited listener, so the function
	// installs its seccomp filter too (a function started by hand does
	// not), and accepts only its parent, this test.
	sock := filepath.Join(dir, "fn.sock")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false) // the function keeps listening on it
	lf, err := ln.File()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, filter, list, fn)
	cmd.Env = []string{"PATH=/usr/bin:/bin", fnserve.EnvListenFD + "=3"}
	cmd.ExtraFiles = []*os.File{lf}
	var logs bytes.Buffer
	cmd.Stderr = &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	// log stops the function, if it still runs, and returns what it
	// logged: only once it has exited is its output all copied.
	stopped := false
	log := func() string {
		if !stopped {
			_ = cmd.Process.Kill()
			<-exited
			stopped = true
		}
		return logs.String()
	}
	defer log()
	lf.Close()
	ln.Close()

	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}, Timeout: 2 * time.Second}
	var answer string
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		select {
		case err := <-exited:
			stopped = true
			t.Fatalf("testfn under the unit's filter exited (%v); its log:\n%s", err, logs.String())
		default:
		}
		resp, err := client.Get("http://fn/ok")
		if err != nil {
			continue
		}
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		resp.Body.Close()
		answer = fmt.Sprintf("%d %s", resp.StatusCode, b.String())
		break
	}
	if !strings.HasPrefix(answer, "200 ") {
		t.Fatalf("testfn under the unit's filter does not answer (%q); its log:\n%s", answer, log())
	}
	if l := log(); !landlockEntered(l) && landlockAvailable() {
		t.Fatalf("testfn under the unit's filter did not enter its Landlock domain; its log:\n%s", l)
	}
}

// unitSyscalls is the set of system calls SystemCallFilter= lines allow,
// by systemd's rules: the first line, an allow list, sets it; later allow
// lines add to it, deny lines (~) take away.
func unitSyscalls(t *testing.T, lines []string) map[string]bool {
	t.Helper()
	if len(lines) == 0 || strings.HasPrefix(lines[0], "~") {
		t.Fatalf("the unit's SystemCallFilter is not an allow list: %q", lines)
	}
	allowed := map[string]bool{}
	for _, line := range lines {
		deny := strings.HasPrefix(line, "~")
		for _, item := range strings.Fields(strings.TrimPrefix(line, "~")) {
			for _, name := range expandSyscalls(t, item, map[string]bool{}) {
				if deny {
					delete(allowed, name)
				} else {
					allowed[name] = true
				}
			}
		}
	}
	return allowed
}

// expandSyscalls returns the system calls of item: itself, or a group's
// members as systemd-analyze lists them, nested groups expanded.
func expandSyscalls(t *testing.T, item string, seen map[string]bool) []string {
	t.Helper()
	if !strings.HasPrefix(item, "@") {
		return []string{item}
	}
	if seen[item] {
		return nil
	}
	seen[item] = true
	out, err := exec.Command("systemd-analyze", "syscall-filter", item).Output()
	if err != nil {
		t.Fatalf("systemd-analyze syscall-filter %s: %v", item, err)
	}
	var names []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for first := true; sc.Scan(); first = false {
		line := strings.TrimSpace(sc.Text())
		if first || line == "" || strings.HasPrefix(line, "#") {
			continue // the group's own name, its description, comments
		}
		names = append(names, expandSyscalls(t, line, seen)...)
	}
	return names
}

// landlockEntered reports whether a function's start log says it entered
// its Landlock domain.
func landlockEntered(log string) bool {
	return strings.Contains(log, "Landlock domain entered")
}

// landlockAvailable reports whether this kernel has Landlock enabled.
func landlockAvailable() bool {
	abi, err := llsys.LandlockGetABIVersion()
	return err == nil && abi > 0
}
