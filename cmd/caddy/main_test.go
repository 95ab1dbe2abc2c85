package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/glassmkr/guardian/shared/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

// The edge collects garbage at gcPercent unless GOGC says otherwise.
func TestGCPercent(t *testing.T) {
	bin := testenv.Build(t, "./cmd/caddy")
	for _, tc := range []struct{ env, want string }{{"", "200"}, {"GOGC=50", "50"}} {
		dir, err := os.MkdirTemp("", "gc") // short: unix socket paths are limited
		if err != nil {
			t.Fatal(err)
		}
		defer os.RemoveAll(dir)
		sock := filepath.Join(dir, "admin.sock")
		cfg := filepath.Join(dir, "Caddyfile")
		if err := os.WriteFile(cfg, []byte("{\n\tadmin unix/"+sock+"\n\tpersist_config off\n}\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command(bin, "run", "--config", cfg, "--adapter", "caddyfile")
		cmd.Env = []string{"HOME=" + dir, "XDG_CONFIG_HOME=" + dir, "XDG_DATA_HOME=" + dir}
		if tc.env != "" {
			cmd.Env = append(cmd.Env, tc.env)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		admin := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		}}}
		var body []byte
		deadline := time.Now().Add(15 * time.Second)
		for {
			if resp, err := admin.Get("http://admin/metrics"); err == nil {
				body, err = io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil {
					t.Fatal(err)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("caddy's admin did not answer")
			}
			time.Sleep(50 * time.Millisecond)
		}
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		m := regexp.MustCompile(`(?m)^go_gc_gogc_percent (\d+)$`).FindSubmatch(body)
		if m == nil || string(m[1]) != tc.want {
			t.Errorf("env %q: GOGC %q, want %s", tc.env, m, tc.want)
		}
	}
}
