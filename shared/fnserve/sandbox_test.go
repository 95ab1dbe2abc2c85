package fnserve

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/glassmkr/guardian/shared/config"
	"github.com/glassmkr/guardian/shared/sandbox"
	"github.com/glassmkr/guardian/shared/sandbox/sandboxtest"
)

// The test binary runs again as the processes of TestMainSandboxesBeforeSetup,
// chosen by this variable.
const childEnv = "FNSERVE_TEST_CHILD"

func TestMain(m *testing.M) {
	switch os.Getenv(childEnv) {
	case "victim":
		sandboxtest.Victim()
	case "function":
		function()
	}
	os.Exit(m.Run())
}

// function is a function binary: before Main it can open the victim's
// memory; its setup, the first of its code a request could reach, tries
// again and signals the test, and prints the outcomes as JSON.
func function() {
	victimPid, _ := strconv.Atoi(os.Getenv("FNSERVE_TEST_VICTIM"))
	before := sandboxtest.ErrText(sandboxtest.OpenMem(victimPid))
	Main(func(context.Context, *zap.Logger, *config.Loader) (http.Handler, func(), error) {
		_ = json.NewEncoder(os.Stdout).Encode(map[string]string{
			"mem_before":  before,
			"mem_victim":  sandboxtest.ErrText(sandboxtest.OpenMem(victimPid)),
			"kill_parent": sandboxtest.ErrText(unix.Kill(os.Getppid(), 0)),
		})
		os.Exit(0)
		return nil, nil, nil
	})
}

// A function run through Main is in its Landlock domain before any of its
// own code runs: its setup can no longer open the memory of a process not
// sealed yet, nor (ABI 6 and later) signal Caddy, and its log says so.
func TestMainSandboxesBeforeSetup(t *testing.T) {
	victimPid := sandboxtest.StartVictim(t, childEnv)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"=function",
		"FNSERVE_TEST_VICTIM="+strconv.Itoa(victimPid),
		EnvListenFD+"=", EnvSettingsFD+"=",
		EnvSocket+"="+filepath.Join(t.TempDir(), "fn.sock"))
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("function: %v\n%s%s", err, out, stderr.String())
	}
	var r map[string]string
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("function's report %q: %v\n%s", out, err, stderr.String())
	}
	t.Logf("function: %v\n%s", r, stderr.String())
	if r["mem_before"] != "ok" {
		t.Fatalf("before Main, the function could not open the victim's memory: %s", r["mem_before"])
	}
	abi, _, errno := unix.Syscall(unix.SYS_LANDLOCK_CREATE_RULESET, 0, 0, unix.LANDLOCK_CREATE_RULESET_VERSION)
	if errno != 0 {
		t.Skipf("the kernel has no Landlock (%v)", errno)
	}
	if r["mem_victim"] != "EACCES" && r["mem_victim"] != "EPERM" {
		t.Errorf("in its setup, the function opened the victim's memory: %s", r["mem_victim"])
	}
	line := protectionLine(stderr.String())
	if line == nil || line["ptrace_scoped"] != true || line["landlock_abi"] != float64(abi) {
		t.Fatalf("Main logged no Landlock domain of ABI %d: %v", abi, line)
	}
	if line["signals_scoped"] != true {
		t.Skipf("the kernel's Landlock (ABI %d) has no usable signal scoping", abi)
	}
	if r["kill_parent"] != "EPERM" {
		t.Errorf("in its setup, the function could signal its parent: %s", r["kill_parent"])
	}
}

// protectionLine is Main's log line on the confinement that applied, or
// nil.
func protectionLine(log string) map[string]any {
	for _, l := range strings.Split(log, "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil {
			if _, ok := m["landlock_abi"]; ok {
				return m
			}
		}
	}
	return nil
}

// The start line warns, naming what to do, where the kernel gave less.
func TestLogProtection(t *testing.T) {
	for _, tc := range []struct {
		p     sandbox.Protection
		level zapcore.Level
		says  string
	}{
		{sandbox.Protection{}, zapcore.WarnLevel, "docs/deployment.md"},
		{sandbox.Protection{Filtered: true}, zapcore.WarnLevel, "SystemCallFilter"},
		{sandbox.Protection{ABI: 3, Ptrace: true}, zapcore.WarnLevel, "without signal scoping"},
		{sandbox.Protection{ABI: 7, Ptrace: true, Scopes: true}, zapcore.InfoLevel, "Landlock domain entered"},
	} {
		core, logs := observer.New(zapcore.DebugLevel)
		logProtection(zap.New(core), tc.p)
		all := logs.All()
		if len(all) != 1 || all[0].Level != tc.level || !strings.Contains(all[0].Message, tc.says) {
			t.Errorf("%+v: logged %v", tc.p, all)
			continue
		}
		if f := all[0].ContextMap(); f["landlock_abi"] != int64(tc.p.ABI) || f["ptrace_scoped"] != tc.p.Ptrace || f["signals_scoped"] != tc.p.Scopes {
			t.Errorf("%+v: fields %v", tc.p, f)
		}
	}
}
