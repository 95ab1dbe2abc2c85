// Package stack tests the scripts in this folder as a user runs them:
// `make up` and `make down` with the real servers on free ports, and the
// fuzz runner's verdicts.
package stack

import (
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/crypto/bcrypt"

	"github.com/glassmkr/guardian/shared/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

func script(t *testing.T, runDir string, port int, name string, args ...string) string {
	t.Helper()
	out, err := tryScript(t, runDir, port, name, args...)
	if err != nil {
		t.Fatalf("%s %v: %v\n%s", name, args, err, out)
	}
	return out
}

// tryScript runs a script of this folder as script does, for a run that
// is to fail: its output and its error.
func tryScript(t *testing.T, runDir string, port int, name string, args ...string) (string, error) {
	t.Helper()
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(root, "deploy", "stack", name), args...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(),
		"GUARDIAN_RUN_DIR="+runDir,
		"GUARDIAN_HTTP_PORT="+strconv.Itoa(port),
	)
	cmd.Env = append(cmd.Env, stackPorts(t, runDir)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// ports holds each stack's ports (by run dir), chosen once: a make up
// that is given other settings than the running Caddy's restarts it.
var ports sync.Map

// stackPorts are the ports of the test's own servers and OpenID provider
// for the stack in runDir, clear of a developer's `make up`.
func stackPorts(t *testing.T, runDir string) []string {
	if v, ok := ports.Load(runDir); ok {
		return v.([]string)
	}
	var env []string
	for _, k := range []string{"PG_PORT", "REDIS_PORT", "CH_TCP_PORT", "CH_HTTP_PORT", "GUARDIAN_METRICS_PORT", "DEV_OIDC_PORT"} {
		env = append(env, k+"="+strconv.Itoa(testenv.FreePort(t)))
	}
	ports.Store(runDir, env)
	return env
}

func healthz(t *testing.T, port int) *http.Response {
	t.Helper()
	resp, err := http.Get("http://localhost:" + strconv.Itoa(port) + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp
}

func TestUpTwiceThenDownThenClean(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and starts the whole stack")
	}
	runDir := filepath.Join(t.TempDir(), "run")
	port := testenv.FreePort(t)
	t.Cleanup(func() {
		if _, err := os.Stat(runDir); err == nil {
			script(t, runDir, port, "down.sh", "clean")
		}
	})

	// Another server on the port: make up says so rather than take its
	// answers for Caddy's.
	other, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(port))
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = http.Serve(other, http.HandlerFunc(func(http.ResponseWriter, *http.Request) {})) }() // 200 to all
	out, err := tryScript(t, runDir, port, "up.sh")
	other.Close()
	if err == nil || !strings.Contains(out, "port "+strconv.Itoa(port)+" is in use") {
		t.Fatalf("make up with the port taken: %v\n%s", err, out)
	}

	out = script(t, runDir, port, "up.sh")
	if !strings.Contains(out, "http://localhost:"+strconv.Itoa(port)) || !strings.Contains(out, "demo login:") {
		t.Fatalf("make up did not print the URL and demo login:\n%s", out)
	}
	if resp := healthz(t, port); resp.StatusCode != 200 || resp.Header.Get("X-Frame-Options") != "DENY" {
		t.Fatalf("healthz after up: %d %v", resp.StatusCode, resp.Header)
	}

	envFile := filepath.Join(runDir, "stack.env")
	st, err := os.Stat(envFile)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("stack.env: %v, mode %v", err, st.Mode().Perm())
	}
	env, err := testenv.ReadEnvFile(envFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"GUARDIAN_URL", "GUARDIAN_PG_DSN", "GUARDIAN_PG_APP_DSN", "GUARDIAN_REDIS_ADDR", "GUARDIAN_CLICKHOUSE_ADDR", "GUARDIAN_DEMO_EMAIL", "GUARDIAN_DEMO_PASSWORD", "GUARDIAN_KEY_PEPPER", "GUARDIAN_SESSION_SECRET", "GUARDIAN_MFA_SECRET"} {
		if env[k] == "" {
			t.Errorf("stack.env lacks %s", k)
		}
	}

	// The demo user signs in with the printed password.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, env["GUARDIAN_PG_DSN"])
	if err != nil {
		t.Fatal(err)
	}
	var hash string
	err = conn.QueryRow(ctx, "SELECT password_hash FROM users WHERE email = $1", env["GUARDIAN_DEMO_EMAIL"]).Scan(&hash)
	conn.Close(ctx)
	if err != nil || bcrypt.CompareHashAndPassword([]byte(hash), []byte(env["GUARDIAN_DEMO_PASSWORD"])) != nil {
		t.Fatalf("demo password does not match the stored hash (%v)", err)
	}
	if cost, _ := bcrypt.Cost([]byte(hash)); cost != 12 {
		t.Errorf("bcrypt cost %d, want 12", cost)
	}

	before := testenv.ProcessesMentioning(runDir)
	out = script(t, runDir, port, "up.sh")
	if !strings.Contains(out, "caddy: already running") || !strings.Contains(out, "reloading config") {
		t.Errorf("second make up did not reuse the running stack:\n%s", out)
	}
	if after := testenv.ProcessesMentioning(runDir); len(after) != len(before) {
		t.Errorf("second make up changed the processes:\nbefore %v\nafter  %v", before, after)
	}
	if again, _ := testenv.ReadEnvFile(envFile); again["GUARDIAN_KEY_PEPPER"] != env["GUARDIAN_KEY_PEPPER"] || again["GUARDIAN_MFA_SECRET"] != env["GUARDIAN_MFA_SECRET"] || again["GUARDIAN_DEMO_PASSWORD"] != env["GUARDIAN_DEMO_PASSWORD"] {
		t.Error("second make up changed the secrets")
	}

	// A rebuilt Caddy (a new file at bin/caddy) is restarted, so that it
	// runs the new modules, where a reload would keep the old ones.
	caddyPid, _ := os.ReadFile(filepath.Join(runDir, "caddy.pid"))
	root, _ := testenv.RepoRoot()
	rebuilt := filepath.Join(root, "bin", "caddy")
	if b, err := exec.Command("cp", "-p", rebuilt, rebuilt+".new").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, b)
	}
	if err := os.Rename(rebuilt+".new", rebuilt); err != nil {
		t.Fatal(err)
	}
	out = script(t, runDir, port, "up.sh")
	if again, _ := os.ReadFile(filepath.Join(runDir, "caddy.pid")); !strings.Contains(out, "was rebuilt; restarting") || string(again) == string(caddyPid) {
		t.Errorf("make up after a rebuild kept caddy (pid %q, now %q):\n%s", caddyPid, again, out)
	}
	if resp := healthz(t, port); resp.StatusCode != 200 {
		t.Fatalf("healthz after the restart: %d", resp.StatusCode)
	}
	// Other settings (here the OpenID provider's port, which the oidc
	// function takes from Caddy's environment) restart Caddy too: a
	// reload would keep the environment it started with.
	caddyPid, _ = os.ReadFile(filepath.Join(runDir, "caddy.pid"))
	moved := slices.Clone(stackPorts(t, runDir))
	moved[len(moved)-1] = "DEV_OIDC_PORT=" + strconv.Itoa(testenv.FreePort(t))
	ports.Store(runDir, moved)
	out = script(t, runDir, port, "up.sh")
	if again, _ := os.ReadFile(filepath.Join(runDir, "caddy.pid")); !strings.Contains(out, "changed since it started; restarting") || string(again) == string(caddyPid) {
		t.Errorf("make up with another OpenID port kept caddy (pid %q, now %q):\n%s", caddyPid, again, out)
	}

	oidcPid, _ := os.ReadFile(filepath.Join(runDir, "dev-oidc.pid"))
	script(t, runDir, port, "down.sh")
	if pid, err := strconv.Atoi(strings.TrimSpace(string(oidcPid))); err != nil || testenv.Alive(pid) {
		t.Fatalf("the local OpenID provider (pid %q) survived make down", oidcPid)
	}
	if left := testenv.ProcessesMentioning(runDir); len(left) != 0 {
		t.Fatalf("make down left processes running:\n%s", strings.Join(left, "\n"))
	}
	if _, err := http.Get("http://localhost:" + strconv.Itoa(port) + "/healthz"); err == nil {
		t.Fatal("caddy still answers after make down")
	}
	if _, err := os.Stat(filepath.Join(runDir, "data", "servers.env")); err != nil {
		t.Fatalf("make down removed the data: %v", err)
	}

	script(t, runDir, port, "down.sh", "clean")
	if _, err := os.Stat(runDir); !os.IsNotExist(err) {
		t.Fatalf("clean left %s: %v", runDir, err)
	}
}

// A pidfile left by a crash or a reboot may name an unrelated process by
// now: make down must not signal it, only forget the pidfile.
func TestDownSparesAProcessAStalePidfileNames(t *testing.T) {
	runDir := filepath.Join(t.TempDir(), "run")
	if err := os.MkdirAll(runDir, 0o700); err != nil {
		t.Fatal(err)
	}
	stranger := exec.Command("sleep", "300")
	if err := stranger.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stranger.Process.Kill(); _ = stranger.Wait() })
	pid := []byte(strconv.Itoa(stranger.Process.Pid) + "\n")
	for _, name := range []string{"caddy.pid", "dev-oidc.pid"} {
		if err := os.WriteFile(filepath.Join(runDir, name), pid, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	script(t, runDir, testenv.FreePort(t), "down.sh")
	if !testenv.Alive(stranger.Process.Pid) {
		t.Fatal("make down killed a process its stale pidfiles named")
	}
	for _, name := range []string{"caddy.pid", "dev-oidc.pid"} {
		if _, err := os.Stat(filepath.Join(runDir, name)); !os.IsNotExist(err) {
			t.Errorf("%s kept: %v", name, err)
		}
	}
}
