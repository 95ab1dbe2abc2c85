package stack

import (
	"crypto/sha256"
	"encoding/hex"
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

// A PostgreSQL whose run dir is too long for its socket path lives under
// /var/tmp, at a name derived from the dir. Another user of the host may
// make that name first, with a postmaster.pid naming any process: start
// refuses a directory there that is not its own instead of stopping what
// it names and removing it.
func TestAPlantedPostgresDirectoryIsRefused(t *testing.T) {
	t.Parallel()
	if os.Geteuid() != 0 {
		t.Skip("needs root: the relocated directory belongs to postgres")
	}
	base, err := os.MkdirTemp(os.Getenv(testenv.PrivateDirEnv), "guardian-private-")
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(base, strings.Repeat("d", 90)) // too long: relocated
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	real, err := filepath.EvalSymlinks(dir)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256([]byte(real))
	planted := "/var/tmp/guardian-pg-" + hex.EncodeToString(sum[:])[:12]
	if err := os.Mkdir(planted, 0o700); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = os.RemoveAll(planted)
		_, _ = servers(t, "destroy", dir)
		_ = os.RemoveAll(base)
	})
	if err := os.Chown(planted, 65534, 65534); err != nil { // nobody's
		t.Fatal(err)
	}
	marker := filepath.Join(planted, "theirs")
	if err := os.WriteFile(marker, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := servers(t, "start", dir, "postgres")
	if err == nil || !strings.Contains(out, "is not ours") {
		t.Fatalf("start with a planted %s: %v\n%s", planted, err, out)
	}
	if _, err := os.Stat(marker); err != nil {
		t.Errorf("the planted directory was removed: %v", err)
	}
}
