package stack

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/glassmkr/guardian/shared/testenv"
)

// fuzz.sh fails on a finding and on any other failure, but not on Go's
// own fuzztime deadline race (golang/go#75804, before Go 1.27), which it
// tries once more. A stand-in `go` on PATH lists one target, FuzzX in a
// package of a module of its own, as go list and go test -list would,
// then plays each outcome of fuzzing it.
func TestFuzzScriptTellsFindingsFromGosDeadlineRace(t *testing.T) {
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, output string
		code         int
		fail         bool
		retried      bool
		noBuild      bool // the package's fuzz test binary does not build
	}{
		{"clean", "", 0, false, false, false},
		{"deadline race", "--- FAIL: FuzzX (3.08s)\n    context deadline exceeded\nFAIL\n", 1, false, true, false},
		{"finding", "--- FAIL: FuzzX (0.10s)\n    panic: boom\n    Failing input written to testdata/fuzz/FuzzX/1a2b\n    context deadline exceeded\n", 1, true, false, false},
		{"other failure", "# build failed\nsyntax error\n", 1, true, false, false},
		{"does not build", "", 0, true, false, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			env := fuzzStub(t, c.output, c.code, c.noBuild)
			cmd := exec.Command("bash", filepath.Join(root, "deploy", "stack", "fuzz.sh"))
			cmd.Env = env
			log, err := cmd.CombinedOutput()
			if failed := err != nil; failed != c.fail {
				t.Fatalf("failed %v, want %v:\n%s", failed, c.fail, log)
			}
			if c.noBuild {
				if !strings.Contains(string(log), "undefined: testing") || !strings.Contains(string(log), "does not build") {
					t.Errorf("the build's failure is not shown:\n%s", log)
				}
				return
			}
			if !strings.Contains(string(log), "FuzzX") {
				t.Errorf("the target was not fuzzed:\n%s", log)
			}
			if retried := strings.Contains(string(log), "once more"); retried != c.retried {
				t.Errorf("retried %v, want %v:\n%s", retried, c.retried, log)
			}
		})
	}
}

// fuzzStub puts a stand-in `go` first on PATH and returns the environment
// to run fuzz.sh in: it lists one target, FuzzX in a package of a module
// of its own, as go list and go test -list would, and fuzzing it says
// output and exits with code; with noBuild, its binary does not build.
// Building it first runs the shell code in $FUZZ_STUB_BUILD, if any.
func fuzzStub(t *testing.T, output string, code int, noBuild bool) []string {
	t.Helper()
	bin := t.TempDir()
	out := filepath.Join(bin, "output")
	if err := os.WriteFile(out, []byte(output), 0o644); err != nil {
		t.Fatal(err)
	}
	mod := t.TempDir()
	if err := os.Mkdir(filepath.Join(mod, "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(mod, "x", "x_test.go"), []byte("package x\n\nfunc FuzzX(f *testing.F) {}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The package's test binary lists FuzzX and, fuzzing it, says what
	// the case has Go say.
	testBin := "#!/bin/sh\n" +
		"case \"$1\" in -test.list) echo FuzzX; exit 0 ;; esac\n" +
		"cat " + out + "\nexit " + strconv.Itoa(code) + "\n"
	if err := os.WriteFile(filepath.Join(bin, "x.test"), []byte(testBin), 0o755); err != nil {
		t.Fatal(err)
	}
	stub := "#!/bin/sh\n" +
		"case \"$1 $2 $3\" in\n" +
		"'list -m -f') echo " + mod + "; exit 0 ;;\n" +
		"'list -m ') echo example.com/m; exit 0 ;;\n" +
		"'list -e -f') echo " + filepath.Join(mod, "x", "x_test.go") + "; exit 0 ;;\n" +
		"'env GOCACHE ') echo " + filepath.Join(bin, "cache") + "; exit 0 ;;\n" +
		"'test -c -fuzz') eval \"$FUZZ_STUB_BUILD\"; " + map[bool]string{false: "cp " + filepath.Join(bin, "x.test") + " \"$6\"; exit 0", true: "echo 'x_test.go:3: undefined: testing'; exit 1"}[noBuild] + " ;;\n" +
		"esac\n" +
		"echo unexpected go \"$@\" >&2; exit 2\n"
	if err := os.WriteFile(filepath.Join(bin, "go"), []byte(stub), 0o755); err != nil {
		t.Fatal(err)
	}
	return append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"))
}

// A pass whose build dies without making a package's binary fails,
// rather than wait for it for ever; fuzz.sh takes no arguments.
func TestFuzzFailsWhenItsBuildDies(t *testing.T) {
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	script := filepath.Join(root, "deploy", "stack", "fuzz.sh")
	env := fuzzStub(t, "", 0, false)
	fuzz := func(hook string, args ...string) (string, error) {
		t.Helper()
		cmd := exec.Command("bash", append([]string{script}, args...)...)
		cmd.Env = append(env, "FUZZ_STUB_BUILD="+hook)
		done := make(chan struct{})
		var out []byte
		var err error
		go func() {
			defer close(done)
			out, err = cmd.CombinedOutput()
		}()
		select {
		case <-done:
		case <-time.After(time.Minute):
			_ = cmd.Process.Kill()
			t.Fatalf("fuzz.sh %v did not end", args)
		}
		return string(out), err
	}
	if out, err := fuzz(""); err != nil || !strings.Contains(out, "1 targets") {
		t.Fatalf("a pass whose build lives: %v\n%s", err, out)
	}
	// The stand-in go's parent is the build: killed mid-way, it makes
	// no binary and writes no end.
	if out, err := fuzz("kill -9 $PPID"); err == nil || !strings.Contains(out, "does not build") {
		t.Fatalf("a pass whose build died: %v\n%s", err, out)
	}
	if out, err := fuzz("", "build", t.TempDir()); err == nil || !strings.Contains(out, "usage") {
		t.Fatalf("fuzz.sh with arguments: %v\n%s", err, out)
	}
}
