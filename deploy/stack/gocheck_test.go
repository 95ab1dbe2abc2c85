package stack

import (
	"archive/zip"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/glassmkr/guardian/shared/testenv"
)

// fakeVersion is the Go the tests' toolchain zip claims to be: newer than
// go.mod's, as the pinned one is.
const fakeVersion = "1.26.99"

// fakeToolchain writes a module proxy into a directory holding one
// toolchain zip laid out as golang.org/toolchain's, whose bin/go answers
// `go env GOVERSION`. It returns the proxy's file:// URL, the zip's path and
// its SHA-256.
func fakeToolchain(t *testing.T, arch string) (proxy, zipPath, sum string) {
	t.Helper()
	dir := t.TempDir()
	mod := "golang.org/toolchain@v0.0.1-go" + fakeVersion + ".linux-" + arch
	zipPath = filepath.Join(dir, "golang.org", "toolchain", "@v", "v0.0.1-go"+fakeVersion+".linux-"+arch+".zip")
	if err := os.MkdirAll(filepath.Dir(zipPath), 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(zipPath)
	if err != nil {
		t.Fatal(err)
	}
	zw := zip.NewWriter(f)
	for name, body := range map[string]string{
		mod + "/bin/go":                   "#!/bin/sh\n[ \"$1 $2\" = 'env GOVERSION' ] && echo go" + fakeVersion + "\n",
		mod + "/pkg/tool/linux_x/vet":     "#!/bin/sh\n",
		mod + "/VERSION":                  "go" + fakeVersion + "\n",
		"elsewhere/not-the-toolchain.txt": "left out\n",
	} {
		w, err := zw.Create(name) // no mode bits, as the proxy's zips may have none
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write([]byte(body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(zipPath)
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(b)
	return "file://" + dir, zipPath, hex.EncodeToString(h[:])
}

// toolsOnly is a PATH of the commands gocheck.sh uses and no go, plus
// extra (a directory of stand-ins) first.
func toolsOnly(t *testing.T, extra string) string {
	t.Helper()
	dir := t.TempDir()
	for _, tool := range []string{"bash", "sed", "sort", "head", "curl", "unzip", "sha256sum", "mktemp", "dirname",
		"mkdir", "chmod", "rm", "mv", "flock", "dpkg", "uname", "cat"} {
		p, err := exec.LookPath(tool)
		if err != nil {
			t.Skipf("%s is not installed", tool)
		}
		if err := os.Symlink(p, filepath.Join(dir, tool)); err != nil {
			t.Fatal(err)
		}
	}
	if extra != "" {
		return extra + ":" + dir
	}
	return dir
}

// needGo sources gocheck.sh in the repository root, pins the fake
// toolchain (version and SHA-256) in place of the real one, hides this
// machine's /usr/local/go, and runs
// need_go, then prints the go it leaves on PATH and that go's version.
func needGo(t *testing.T, path, proxy, home, pin string) (string, error) {
	t.Helper()
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	script := `. deploy/stack/gocheck.sh
GO_TOOLCHAIN=` + fakeVersion + `
GO_SYSTEM_ROOT=/nonexistent
GO_TOOLCHAIN_SHA256[$(dpkg --print-architecture)]=` + pin + `
need_go
echo "go=$(command -v go) $(go env GOVERSION)"`
	cmd := exec.Command("/bin/bash", "-c", script)
	cmd.Dir = root
	cmd.Env = []string{"PATH=" + path, "HOME=" + t.TempDir(), "GOPROXY=" + proxy + ",direct", "GUARDIAN_GO_HOME=" + home}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func debArch(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("dpkg", "--print-architecture").Output()
	if err != nil {
		t.Skipf("dpkg: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// On a machine without Go, make up and make test install the pinned Go
// from the module proxy into the user's cache, and use it; once there it
// is used again without a download.
func TestNeedGoInstallsThePinnedGo(t *testing.T) {
	t.Parallel()
	proxy, zipPath, sum := fakeToolchain(t, debArch(t))
	home := filepath.Join(t.TempDir(), "cache", "go")
	out, err := needGo(t, toolsOnly(t, ""), proxy, home, sum)
	if err != nil {
		t.Fatalf("need_go: %v\n%s", err, out)
	}
	if !strings.Contains(out, "go="+home+"/bin/go go"+fakeVersion) {
		t.Fatalf("need_go left another go on PATH:\n%s", out)
	}
	for _, p := range []string{"bin/go", "pkg/tool/linux_x/vet"} {
		if fi, err := os.Stat(filepath.Join(home, p)); err != nil || fi.Mode()&0o100 == 0 {
			t.Errorf("%s: %v, mode %v: want an executable", p, err, fi)
		}
	}
	if _, err := os.Stat(filepath.Join(home, "not-the-toolchain.txt")); err == nil {
		t.Error("a file outside the toolchain's folder was unpacked into it")
	}
	leftovers, _ := filepath.Glob(filepath.Join(filepath.Dir(home), ".go-install.*"))
	if len(leftovers) != 0 {
		t.Errorf("scratch left behind: %v", leftovers)
	}

	// Installed: the next run uses it, with nothing to download.
	if err := os.Remove(zipPath); err != nil {
		t.Fatal(err)
	}
	if out, err := needGo(t, toolsOnly(t, ""), proxy, home, sum); err != nil || strings.Contains(out, "installing") {
		t.Fatalf("second run: %v\n%s", err, out)
	}
}

// A Go older than go.mod's on PATH (Debian's golang-go) is passed over for
// the pinned one.
func TestNeedGoReplacesAnOldGoOnPath(t *testing.T) {
	t.Parallel()
	proxy, _, sum := fakeToolchain(t, debArch(t))
	old := t.TempDir()
	if err := os.WriteFile(filepath.Join(old, "go"), []byte("#!/bin/sh\necho go1.19.8\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	home := filepath.Join(t.TempDir(), "go")
	out, err := needGo(t, toolsOnly(t, old), proxy, home, sum)
	if err != nil {
		t.Fatalf("need_go: %v\n%s", err, out)
	}
	if !strings.Contains(out, "Go 1.19.8, older than") || !strings.Contains(out, "go="+home+"/bin/go go"+fakeVersion) {
		t.Fatalf("the old go was kept, or not named:\n%s", out)
	}
}

// A Go as new as go.mod's line but older than the pinned one (a release
// without the standard library's later security fixes) is passed over
// too; a newer one is kept.
func TestNeedGoReplacesAGoOlderThanThePin(t *testing.T) {
	t.Parallel()
	proxy, _, sum := fakeToolchain(t, debArch(t))
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	mod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	line, _, _ := strings.Cut(strings.SplitN(string(mod), "\ngo ", 2)[1], "\n")
	for _, tc := range []struct {
		have string
		kept bool
	}{{line, false}, {"1.27.0", true}} {
		old := t.TempDir()
		if err := os.WriteFile(filepath.Join(old, "go"), []byte("#!/bin/sh\necho go"+tc.have+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		home := filepath.Join(t.TempDir(), "go")
		out, err := needGo(t, toolsOnly(t, old), proxy, home, sum)
		if err != nil {
			t.Fatalf("need_go with Go %s: %v\n%s", tc.have, err, out)
		}
		if tc.kept && !strings.Contains(out, "go="+old+"/go go"+tc.have) {
			t.Errorf("Go %s, newer than the pin, was not kept:\n%s", tc.have, out)
		}
		if !tc.kept && (!strings.Contains(out, "Go "+tc.have+", older than "+fakeVersion) || !strings.Contains(out, "go="+home+"/bin/go go"+fakeVersion)) {
			t.Errorf("Go %s (go.mod's line), older than the pin, was kept:\n%s", tc.have, out)
		}
	}
}

// A download that is not the pinned one is refused: nothing is installed,
// nothing is left, and the exit says so.
func TestNeedGoRefusesADownloadOfAnotherHash(t *testing.T) {
	t.Parallel()
	proxy, _, sum := fakeToolchain(t, debArch(t))
	wrong := strings.Repeat("0", len(sum))
	home := filepath.Join(t.TempDir(), "go")
	out, err := needGo(t, toolsOnly(t, ""), proxy, home, wrong)
	if err == nil {
		t.Fatalf("a download of another hash was installed:\n%s", out)
	}
	if !strings.Contains(out, "does not have the pinned SHA-256") || !strings.Contains(out, "Nothing else was installed") {
		t.Fatalf("the refusal does not say why:\n%s", out)
	}
	if _, err := os.Stat(home); err == nil {
		t.Fatal("the refused download was installed")
	}
	leftovers, _ := filepath.Glob(filepath.Join(filepath.Dir(home), ".go-install.*"))
	if len(leftovers) != 0 {
		t.Fatalf("scratch left behind: %v", leftovers)
	}
}

// deps.sh tells a package the repositories offer from one they do not,
// every time (a check through grep -q lost apt-cache to SIGPIPE under
// pipefail most of the time) and in any locale (apt translates the word
// "Candidate").
func TestDepsTellsAvailablePackagesFromMissingOnes(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("apt-cache"); err != nil {
		t.Skip("no apt-cache")
	}
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		cmd := exec.Command(filepath.Join(root, "deploy", "stack", "deps.sh"), "--classify", "bash", "no-such-package-of-guardian")
		cmd.Env = append(os.Environ(), "LANG=de_DE.UTF-8", "LC_ALL=", "LANGUAGE=de")
		out, err := cmd.CombinedOutput()
		if err != nil || string(out) != "available: bash\nunavailable: no-such-package-of-guardian\n" {
			t.Fatalf("run %d: %v\n%s", i, err, out)
		}
	}
}
