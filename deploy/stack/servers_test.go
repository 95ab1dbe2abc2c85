package stack

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/glassmkr/guardian/shared/testenv"
)

func servers(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(filepath.Join(root, "deploy", "stack", "servers.sh"), args...).CombinedOutput()
	return string(out), err
}

// A start cut short after Redis and ClickHouse came up but before their
// ports were saved (Ctrl-C during a first `make up`) leaves them running
// on ports nothing records. The next start restarts them instead of
// failing on a port it does not know.
func TestStartRecoversServersOfARunThatDidNotFinish(t *testing.T) {
	t.Parallel()
	// Where `make test` destroys what a killed test leaves.
	dir, err := os.MkdirTemp(os.Getenv(testenv.PrivateDirEnv), "guardian-private-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if out, err := servers(t, "destroy", dir); err != nil {
			t.Errorf("destroy: %v\n%s", err, out)
		}
		_ = os.RemoveAll(dir)
	})
	if out, err := servers(t, "start", dir, "redis", "clickhouse"); err != nil {
		t.Fatalf("first start: %v\n%s", err, out)
	}
	// What the cut-short run had saved: the secrets, no port.
	envFile := filepath.Join(dir, "servers.env")
	b, err := os.ReadFile(envFile)
	if err != nil {
		t.Fatal(err)
	}
	var kept []string
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if strings.HasSuffix(strings.SplitN(line, "=", 2)[0], "_PASSWORD") {
			kept = append(kept, line)
		}
	}
	if len(kept) < 3 {
		t.Fatalf("servers.env holds %d passwords, want Redis's and ClickHouse's two:\n%s", len(kept), b)
	}
	if err := os.WriteFile(envFile, []byte(strings.Join(kept, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := servers(t, "start", dir, "redis", "clickhouse")
	if err != nil {
		t.Fatalf("start after a run that did not finish: %v\n%s", err, out)
	}
	for _, svc := range []string{"redis", "clickhouse"} {
		if !strings.Contains(out, svc+": pid") || !strings.Contains(out, "did not finish; restarting it") {
			t.Errorf("%s was not restarted:\n%s", svc, out)
		}
	}
	if out, err := servers(t, "status", dir, "redis", "clickhouse"); err != nil {
		t.Fatalf("status: %v\n%s", err, out)
	}
}
