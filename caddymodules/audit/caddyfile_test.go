package audit

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

func TestUnmarshalCaddyfile(t *testing.T) {
	good := `guardian_audit {
		spool_dir /var/spool/guardian
		max_spool_bytes 1048576
		timeout 5s
		linger 2ms
	}`
	var h Handler
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(good)); err != nil {
		t.Fatal(err)
	}
	if h.SpoolDir != "/var/spool/guardian" || h.MaxSpoolBytes != 1<<20 || h.Timeout != caddy.Duration(5*time.Second) || h.Linger != caddy.Duration(2*time.Millisecond) {
		t.Fatalf("%+v", h)
	}
	h = Handler{}
	if err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("guardian_audit {\n spool_dir /s\n linger off\n}")); err != nil || h.Linger >= 0 {
		t.Fatalf("linger off: %+v %v", h, err)
	}

	for _, tc := range []struct{ name, in, want string }{
		{"no spool_dir", "guardian_audit {\n timeout 5s\n}", "needs spool_dir"},
		{"an argument", "guardian_audit /s", "wrong argument count"},
		{"unknown setting", "guardian_audit {\n spool_dir /s\n spool /t\n}", "unknown guardian_audit setting"},
		{"setting without value", "guardian_audit {\n spool_dir\n}", "wrong argument count"},
		{"two values", "guardian_audit {\n spool_dir /s /t\n}", "wrong argument count"},
		{"negative spool", "guardian_audit {\n spool_dir /s\n max_spool_bytes -1\n}", "max_spool_bytes"},
		{"bad timeout", "guardian_audit {\n spool_dir /s\n timeout soon\n}", "timeout"},
		{"zero linger", "guardian_audit {\n spool_dir /s\n linger 0s\n}", "linger"},
		{"long linger", "guardian_audit {\n spool_dir /s\n linger 2s\n}", "linger"},
		{"bad linger", "guardian_audit {\n spool_dir /s\n linger later\n}", "linger"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var h Handler
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one about %q", err, tc.want)
			}
		})
	}
}

// JSON config reaches Provision without the Caddyfile's checks: settle
// applies the defaults and the bound there.
func TestSettle(t *testing.T) {
	h := Handler{SpoolDir: "/s"}
	if err := h.settle(); err != nil || h.Linger != caddy.Duration(DefaultLinger) || h.Timeout != caddy.Duration(10*time.Second) {
		t.Fatalf("defaults: %+v %v", h, err)
	}
	for _, bad := range []Handler{{}, {SpoolDir: "/s", Linger: caddy.Duration(30 * time.Second)}} {
		if err := bad.settle(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
	off := Handler{SpoolDir: "/s", Linger: -1}
	if err := off.settle(); err != nil || off.Linger != -1 {
		t.Fatalf("linger off: %+v %v", off, err)
	}
}

// A spool directory spelled two ways (a trailing slash, a relative path,
// a symbolic link) is one writer's, not two that would refuse each other.
func TestSpoolPathIsOneSpelling(t *testing.T) {
	dir := t.TempDir()
	spool := filepath.Join(dir, "spool")
	if err := os.Mkdir(spool, 0o700); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(spool, link); err != nil {
		t.Fatal(err)
	}
	t.Chdir(dir)
	want, err := spoolPath(spool)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{spool + "/", "spool", "./spool/", link, "link/"} {
		if got, err := spoolPath(p); err != nil || got != want {
			t.Errorf("%s: %s %v, want %s", p, got, err, want)
		}
	}
	if got, err := spoolPath(filepath.Join(dir, "not-yet")); err != nil || got != filepath.Join(dir, "not-yet") {
		t.Errorf("a directory not made yet: %s %v", got, err)
	}
}
