package release

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/glassmkr/guardian/shared/testenv"
)

// TestEveryBinaryAnswersVersion runs each binary a release ships (Caddy,
// guardianctl, every function and job) with --version, with no settings at
// all: each must print its one version line and exit 0 before it reads a
// setting, takes a lock or serves.
func TestEveryBinaryAnswersVersion(t *testing.T) {
	stack := testenv.BuildStack(t)
	bins := []string{filepath.Join(stack, "caddy"), testenv.Build(t, "./cmd/guardianctl")}
	fns, err := os.ReadDir(filepath.Join(stack, "functions"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fns {
		bins = append(bins, filepath.Join(stack, "functions", f.Name()))
	}
	if len(bins) < 10 {
		t.Fatalf("only %d binaries found in %s", len(bins), stack)
	}
	for _, bin := range bins {
		cmd := exec.Command(bin, "--version")
		cmd.Env = []string{"PATH=/usr/bin:/bin", "HOME=" + t.TempDir()}
		cmd.Dir = t.TempDir()
		out, err := cmd.CombinedOutput()
		got := string(out)
		if err != nil || !strings.HasPrefix(got, "guardian devel (") || strings.Count(got, "\n") != 1 {
			t.Errorf("%s --version: %v, output %q; want one line \"guardian devel (...)\" and exit 0", filepath.Base(bin), err, got)
		}
	}
}
