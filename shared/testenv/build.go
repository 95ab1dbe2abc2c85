package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// BinDirEnv names the folder where `make test` keeps the binaries built for
// the run, so that packages share one build of each.
const BinDirEnv = "GUARDIAN_TEST_BIN_DIR"

var ownBinDir string

// Build compiles the main package pkg (an import path below the module, or
// a ./ path from the repository root) once per test run and returns the
// binary's path.
func Build(t testing.TB, pkg string) string {
	t.Helper()
	root, err := RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	dir := os.Getenv(BinDirEnv)
	if dir == "" {
		mu.Lock()
		if ownBinDir == "" {
			ownBinDir, err = os.MkdirTemp("", "guardian-test-bin-")
		}
		dir = ownBinDir
		mu.Unlock()
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	name := strings.NewReplacer("/", "_", ".", "_").Replace(strings.TrimPrefix(pkg, "./"))
	out := filepath.Join(dir, name)

	// One build per binary per run, even across test processes.
	lock, err := os.OpenFile(out+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if _, err := os.Stat(out); err == nil {
		return out
	}
	cmd := exec.Command("go", "build", "-o", out+".tmp", pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("testenv: go build %s: %v\n%s", pkg, err, b)
	}
	if err := os.Rename(out+".tmp", out); err != nil {
		t.Fatal(err)
	}
	return out
}

func removeOwnBinDir() {
	if ownBinDir != "" {
		_ = os.RemoveAll(ownBinDir)
		ownBinDir = ""
	}
}
