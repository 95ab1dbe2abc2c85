package release

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestReproducibleSignedRelease builds one small binary twice with build.sh
// (the release flags), checks both are byte-identical, free of local
// paths and stamped with the version, then signs SHA256SUMS with a throwaway key via sign.sh and checks
// that verify.sh and the documented commands accept it, and reject a
// swapped artefact and a corrupted signature.
func TestReproducibleSignedRelease(t *testing.T) {
	for _, tool := range []string{"ssh-keygen", "sha256sum", "git", "bash"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed", tool)
		}
	}
	here, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(here, "..", "..")

	// The version is stamped into the binary (shared/version); a
	// malformed one is refused before anything is built.
	t.Setenv("GUARDIAN_VERSION", "1.2.3")
	mustFail(t, root, "env", "GUARDIAN_VERSION=1.2.3 evil", filepath.Join(here, "build.sh"), t.TempDir(), "linux", "amd64", "./functions/whoami")
	head := strings.TrimSpace(run(t, root, "git", "rev-parse", "HEAD"))

	var sums [2]string
	dirs := [2]string{t.TempDir(), t.TempDir()}
	for i, dir := range dirs {
		run(t, root, filepath.Join(here, "build.sh"), dir, "linux", "amd64", "./functions/whoami")
		b, err := os.ReadFile(filepath.Join(dir, "whoami"))
		if err != nil {
			t.Fatal(err)
		}
		h := sha256.Sum256(b)
		sums[i] = hex.EncodeToString(h[:])
		for _, local := range []string{root, here, os.Getenv("HOME"), dir} {
			// With a trailing slash: "/root" alone is in crypto/x509/root.go.
			if local != "" && local != "/" && bytes.Contains(b, []byte(filepath.Clean(local)+"/")) {
				t.Errorf("build %d contains the local path %s", i, local)
			}
		}
		if i == 0 {
			if out, want := run(t, root, filepath.Join(dir, "whoami"), "--version"), "guardian 1.2.3 (commit "+head[:12]; !strings.HasPrefix(out, want) {
				t.Errorf("whoami --version = %q, want it to start %q", out, want)
			}
			// -ldflags is not recorded under -trimpath; the rest is.
			info := run(t, root, "go", "version", "-m", filepath.Join(dir, "whoami"))
			for _, want := range []string{"-trimpath=true", "CGO_ENABLED=0", "vcs.revision="} {
				if !strings.Contains(info, want) {
					t.Errorf("go version -m lacks %q:\n%s", want, info)
				}
			}
		}
	}
	if sums[0] != sums[1] {
		t.Fatalf("two builds of the same commit differ: %s vs %s", sums[0], sums[1])
	}

	rel := dirs[0]
	run(t, root, filepath.Join(here, "config.sh"), rel)
	key := filepath.Join(t.TempDir(), "id_ed25519")
	run(t, root, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "test", "-f", key)
	run(t, root, filepath.Join(here, "sign.sh"), rel, key)
	// What the edge runs besides the binaries is signed with them: an
	// edited Caddyfile or dashboard script is refused like a binary.
	listed, err := os.ReadFile(filepath.Join(rel, "SHA256SUMS"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"config/Caddyfile", "config/web/static/app.js", "config/guardian-cron-job"} {
		if !strings.Contains(string(listed), "  "+f+"\n") {
			t.Errorf("SHA256SUMS does not cover %s", f)
		}
	}
	for _, f := range []string{"config/Caddyfile", "config/web/static/app.js"} {
		p := filepath.Join(rel, f)
		orig, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		os.WriteFile(p, append(append([]byte(nil), orig...), '\n'), 0o644)
		mustFail(t, rel, filepath.Join(here, "verify.sh"), "--own-key", rel)
		os.WriteFile(p, orig, 0o644)
	}
	run(t, root, filepath.Join(here, "verify.sh"), "--own-key", rel)
	// The commands the release notes give, against a trusted copy of the
	// key taken now (never the download's own allowed_signers).
	const notesVerify = `ssh-keygen -Y verify -f "$TRUSTED" -I release@guardian -n guardian-release -s SHA256SUMS.sig < SHA256SUMS`
	notes, err := os.ReadFile(filepath.Join(here, "NOTES.template.md"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(notes), notesVerify) || !strings.Contains(string(notes), "sha256sum --strict -c SHA256SUMS") {
		t.Fatal("NOTES.template.md does not give the commands this test runs")
	}
	trustedCopy := filepath.Join(t.TempDir(), "trusted_signers")
	if b, err := os.ReadFile(filepath.Join(rel, "allowed_signers")); err != nil || os.WriteFile(trustedCopy, b, 0o644) != nil {
		t.Fatal("copy the release key")
	}
	sigVerify := "TRUSTED=" + trustedCopy + " && " + notesVerify
	run(t, rel, "bash", "-c", sigVerify)
	run(t, rel, "sha256sum", "--strict", "-c", "SHA256SUMS")

	// A swapped artefact: the signature still holds, the sums do not.
	artefact := filepath.Join(rel, "whoami")
	orig, _ := os.ReadFile(artefact)
	if err := os.WriteFile(artefact, append(append([]byte(nil), orig...), 0), 0o755); err != nil {
		t.Fatal(err)
	}
	mustFail(t, rel, "sha256sum", "-c", "SHA256SUMS")
	mustFail(t, rel, filepath.Join(here, "verify.sh"), "--own-key", rel)
	os.WriteFile(artefact, orig, 0o755)
	run(t, root, filepath.Join(here, "verify.sh"), "--own-key", rel)

	// A link (an install after the check would follow it).
	if err := os.Symlink("/etc/passwd", filepath.Join(rel, "config", "extra")); err != nil {
		t.Fatal(err)
	}
	mustFail(t, rel, filepath.Join(here, "verify.sh"), "--own-key", rel)
	os.Remove(filepath.Join(rel, "config", "extra"))
	// A listed file become a FIFO: refused before anything reads it
	// (sha256sum would wait on it for ever).
	wrapper := filepath.Join(rel, "config", "guardian-cron-job")
	wrapped, err := os.ReadFile(wrapper)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(wrapper)
	if err := syscall.Mkfifo(wrapper, 0o644); err != nil {
		t.Fatal(err)
	}
	mustFail(t, rel, filepath.Join(here, "verify.sh"), "--own-key", rel)
	os.Remove(wrapper)
	if err := os.WriteFile(wrapper, wrapped, 0o755); err != nil {
		t.Fatal(err)
	}

	// An extra file not covered by SHA256SUMS.
	os.WriteFile(filepath.Join(rel, "evil"), []byte("x"), 0o755)
	mustFail(t, rel, filepath.Join(here, "verify.sh"), "--own-key", rel)
	os.Remove(filepath.Join(rel, "evil"))
	// Nor one in a subdirectory that bears the name of a signature file
	// (only the release's top-level ones are left out of SHA256SUMS).
	sub := filepath.Join(rel, "functions")
	if err := os.Mkdir(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"SHA256SUMS", "SHA256SUMS.sig", "allowed_signers"} {
		p := filepath.Join(sub, name)
		os.WriteFile(p, []byte("x"), 0o755)
		mustFail(t, rel, filepath.Join(here, "verify.sh"), "--own-key", rel)
		os.Remove(p)
	}
	os.Remove(sub)

	// A tampered SHA256SUMS (an attacker's hash for his binary): bad signature.
	sumsFile := filepath.Join(rel, "SHA256SUMS")
	sumsOrig, _ := os.ReadFile(sumsFile)
	os.WriteFile(sumsFile, bytes.Replace(sumsOrig, []byte(sums[0][:8]), []byte("00000000"), 1), 0o644)
	mustFail(t, rel, "bash", "-c", sigVerify)
	os.WriteFile(sumsFile, sumsOrig, 0o644)

	// A corrupted signature.
	sigFile := filepath.Join(rel, "SHA256SUMS.sig")
	sig, _ := os.ReadFile(sigFile)
	lines := strings.Split(string(sig), "\n")
	mid := len(lines) / 2
	b := []byte(lines[mid])
	if b[5] == 'A' {
		b[5] = 'B'
	} else {
		b[5] = 'A'
	}
	lines[mid] = string(b)
	os.WriteFile(sigFile, []byte(strings.Join(lines, "\n")), 0o644)
	mustFail(t, rel, "bash", "-c", sigVerify)
	mustFail(t, rel, filepath.Join(here, "verify.sh"), "--own-key", rel)
	os.WriteFile(sigFile, sig, 0o644)

	// A signature by another key.
	other := filepath.Join(t.TempDir(), "other")
	run(t, root, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", other)
	os.Remove(sigFile)
	run(t, rel, "ssh-keygen", "-q", "-Y", "sign", "-n", "guardian-release", "-f", other, "SHA256SUMS")
	mustFail(t, rel, "bash", "-c", sigVerify)

	// A release swapped whole, its allowed_signers included: it holds
	// together, so only a trusted copy of the release key refuses it.
	trusted := filepath.Join(t.TempDir(), "allowed_signers")
	if b, err := os.ReadFile(filepath.Join(rel, "allowed_signers")); err != nil || os.WriteFile(trusted, b, 0o644) != nil {
		t.Fatal(err)
	}
	run(t, root, filepath.Join(here, "sign.sh"), rel, other)
	if out := run(t, root, filepath.Join(here, "verify.sh"), "--own-key", rel); !strings.Contains(out, "WARNING") {
		t.Fatalf("verified against the release's own key without a warning:\n%s", out)
	}
	// Without a trusted key, verify.sh (and make release-verify) refuse:
	// exit status 0 must mean the release key signed it.
	mustFail(t, root, filepath.Join(here, "verify.sh"), rel)
	mustFail(t, root, filepath.Join(here, "verify.sh"), rel, trusted)
	run(t, root, filepath.Join(here, "sign.sh"), rel, key)
	run(t, root, filepath.Join(here, "verify.sh"), rel, trusted)
}

func run(t *testing.T, dir, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func mustFail(t *testing.T, dir, name string, args ...string) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Fatalf("%s %s succeeded, want failure:\n%s", name, strings.Join(args, " "), out)
	}
}

// With the real release key, release.sh refuses a tree that is not its
// commit, before anything is built: a stray file counts however git is
// set to show untracked files.
func TestAReleaseWithTheKeyIsOfACleanCommit(t *testing.T) {
	here, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	clone := filepath.Join(t.TempDir(), "guardian")
	run(t, here, "git", "clone", "-q", "--no-hardlinks", filepath.Join(here, "..", ".."), clone)
	run(t, clone, "git", "config", "status.showUntrackedFiles", "no")
	if err := os.WriteFile(filepath.Join(clone, "stray"), []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("bash", filepath.Join(clone, "deploy", "release", "release.sh"), "1.0.0")
	cmd.Dir = clone
	cmd.Env = append(os.Environ(), "GUARDIAN_RELEASE_KEY=/nonexistent")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "working tree differs from HEAD") {
		t.Fatalf("a release with a stray file: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(clone, "dist")); err == nil {
		t.Error("release.sh built before refusing")
	}
}
