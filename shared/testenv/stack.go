package testenv

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Stack is Guardian's custom Caddy running the repository's Caddyfile with
// the real function binaries, on a free port.
type Stack struct {
	// URL is the edge's base URL, e.g. http://127.0.0.1:41234.
	URL string
	// MetricsURL is where Prometheus would scrape the edge's metrics.
	MetricsURL string
	// Cmd is the running Caddy.
	Cmd *exec.Cmd
	// Admin is an HTTP client for Caddy's admin API (on a unix socket);
	// address it as http://admin/....
	Admin *http.Client
	log   *syncBuffer
	bin   string
	root  string
	env   []string
}

// BuildStack builds the custom Caddy and every function binary once per
// test run and returns the folder that holds bin/caddy-style layout:
// <dir>/caddy and <dir>/functions/<name>.
func BuildStack(t testing.TB) string {
	t.Helper()
	caddy := Build(t, "./cmd/caddy")
	dir := filepath.Join(filepath.Dir(caddy), "stack")
	lock, err := os.OpenFile(dir+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if _, err := os.Stat(filepath.Join(dir, "functions")); err == nil {
		return dir
	}
	root, _ := RepoRoot()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	_ = os.Remove(filepath.Join(dir, "caddy"))
	if err := os.Link(caddy, filepath.Join(dir, "caddy")); err != nil {
		t.Fatal(err)
	}
	tmp := filepath.Join(dir, "functions.tmp") + "/"
	cmd := exec.Command("go", "build", "-o", tmp, "./functions/...")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("testenv: build functions: %v\n%s", err, b)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "functions")); err != nil {
		t.Fatal(err)
	}
	return dir
}

// StackEnv returns the environment a stack needs on the run's shared
// servers: their settings, a migrated database of t's own, and fresh
// secrets.
func StackEnv(t testing.TB) map[string]string {
	t.Helper()
	env, _ := stackEnv(t)
	return env
}

// stackEnv is StackEnv and the migrated database of t's own its DSNs name
// (the edge refuses a database without its migrations).
func stackEnv(t testing.TB) (map[string]string, *PG) {
	t.Helper()
	env := map[string]string{}
	for _, svc := range []string{"postgres", "redis", "clickhouse"} {
		for k, v := range Servers(t, svc) {
			env[k] = v
		}
	}
	pg := Postgres(t)
	env["GUARDIAN_PG_DSN"] = pg.OwnerDSN
	env["GUARDIAN_PG_APP_DSN"] = pg.AppDSN
	for k, v := range pg.FunctionDSNs {
		env[k] = v
	}
	env["GUARDIAN_KEY_PEPPER"] = Name("pepper-") + Name("") + Name("")
	// Stacks share the test Redis; each gets its own buckets, so one
	// test's flood from 127.0.0.1 cannot rate-limit another's requests.
	env["GUARDIAN_REDIS_PREFIX"] = Name("rl-") + ":"
	env["GUARDIAN_SESSION_SECRET"] = Name("session-") + Name("") + Name("")
	env["GUARDIAN_MFA_SECRET"] = Name("mfa-") + Name("") + Name("")
	return env, pg
}

// StartStack starts Caddy with the repository's Caddyfile and env (see
// StackEnv) and waits until it answers; it is stopped when t ends. The
// port is free and chosen here unless env sets GUARDIAN_HTTP_PORT.
func StartStack(t testing.TB, env map[string]string) *Stack {
	t.Helper()
	s, err := TryStartStack(t, env)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// TryStartStack is StartStack for tests that expect Caddy to refuse to
// start: it returns the error with Caddy's output.
func TryStartStack(t testing.TB, env map[string]string) (*Stack, error) {
	t.Helper()
	return TryStartStackWith(t, env, http.DefaultClient)
}

// TryStartStackWith is TryStartStack asking whether Caddy is up with
// client: with env's GUARDIAN_SCHEME https, one that trusts the site's
// certificate and presents the client certificate it asks for.
func TryStartStackWith(t testing.TB, env map[string]string, client *http.Client) (*Stack, error) {
	t.Helper()
	bin := BuildStack(t)
	root, _ := RepoRoot()
	run := t.TempDir()
	port := FreePort(t)
	if p, err := strconv.Atoi(env["GUARDIAN_HTTP_PORT"]); err == nil && p > 0 {
		port = p // a test that must know its address before Caddy starts
	}
	metricsPort := FreePort(t)
	if p, err := strconv.Atoi(env["GUARDIAN_METRICS_PORT"]); err == nil && p > 0 {
		metricsPort = p
	}
	cmd := exec.Command(filepath.Join(bin, "caddy"), "run", "--config", filepath.Join(root, "Caddyfile"), "--adapter", "caddyfile")
	cmd.Dir = run
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + run,
		"XDG_CONFIG_HOME=" + run,
		"XDG_DATA_HOME=" + run,
		"GUARDIAN_BIN_DIR=" + bin,
		"GUARDIAN_WEB_DIR=" + filepath.Join(root, "web"),
		"GUARDIAN_RUN_DIR=" + run,
		"GUARDIAN_HTTP_PORT=" + strconv.Itoa(port),
		"GUARDIAN_METRICS_PORT=" + strconv.Itoa(metricsPort),
		"GUARDIAN_ADMIN_ADDR=unix/" + filepath.Join(run, "admin.sock"),
		fmt.Sprintf("GUARDIAN_URL=http://127.0.0.1:%d", port),
	}
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	log := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = log, log
	// A test binary that dies without its cleanups (a -timeout panic)
	// takes Caddy with it, and Caddy its functions (theirs is the same).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	baseEnv := cmd.Env
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	adminSock := filepath.Join(run, "admin.sock")
	scheme := "http"
	if env["GUARDIAN_SCHEME"] == "https" {
		scheme = "https"
	}
	s := &Stack{URL: fmt.Sprintf("%s://127.0.0.1:%d", scheme, port), MetricsURL: fmt.Sprintf("http://127.0.0.1:%d/metrics", metricsPort), Cmd: cmd, log: log, bin: bin, root: root, env: baseEnv,
		Admin: &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", adminSock)
		}}}}
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(45 * time.Second): // the Caddyfile's grace_period 30s, then its functions' stop
			_ = cmd.Process.Kill()
			t.Errorf("caddy did not stop within 45 s")
		}
		if t.Failed() {
			t.Logf("caddy log:\n%s", log.String())
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case err := <-exited:
			exited <- err
			return nil, fmt.Errorf("caddy exited (%v):\n%s", err, log.String())
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		req, _ := http.NewRequestWithContext(ctx, "GET", s.URL+"/.well-known/guardian-ready", nil)
		resp, err := client.Do(req)
		cancel()
		if err == nil {
			resp.Body.Close()
			return s, nil
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("caddy did not answer within 30 s:\n%s", log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Reload makes the running Caddy load the Caddyfile again, adapted with the
// stack's environment plus overrides (Caddyfile placeholders are expanded
// when the file is adapted, by the reloading command).
func (s *Stack) Reload(t testing.TB, overrides map[string]string) {
	t.Helper()
	env := append([]string(nil), s.env...)
	for k, v := range overrides {
		env = append(env, k+"="+v)
	}
	var admin string
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "GUARDIAN_ADMIN_ADDR="); ok {
			admin = v
		}
	}
	cmd := exec.Command(filepath.Join(s.bin, "caddy"), "reload", "--force", "--config", filepath.Join(s.root, "Caddyfile"), "--adapter", "caddyfile", "--address", admin)
	cmd.Env = env
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("caddy reload: %v\n%s", err, out)
	}
}

// Metrics returns the text of Caddy's metrics endpoint.
func (s *Stack) Metrics(t testing.TB) string {
	t.Helper()
	resp, err := s.Admin.Get("http://admin/metrics")
	if err != nil {
		t.Fatalf("metrics: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// Log returns what Caddy has written so far.
func (s *Stack) Log() string { return s.log.String() }

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Answer is one response, read whole.
type Answer struct {
	Status int
	Header http.Header
	Raw    string
	Doc    map[string]any // the body as a JSON object, if it is one
}

// Do sends method path with body (as JSON when not empty) and header to
// the stack and reads the answer.
func (s *Stack) Do(t testing.TB, method, path, body string, header map[string]string) Answer {
	t.Helper()
	a, err := s.TryDo(method, path, body, header)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// TryDo is Do for goroutines other than the test's, which must not call
// t.Fatal: it returns the error instead.
func (s *Stack) TryDo(method, path, body string, header map[string]string) (Answer, error) {
	req, err := http.NewRequest(method, s.URL+path, strings.NewReader(body))
	if err != nil {
		return Answer{}, err
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return Answer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return Answer{}, err
	}
	a := Answer{Status: resp.StatusCode, Header: resp.Header, Raw: string(b)}
	_ = json.Unmarshal(b, &a.Doc)
	return a, nil
}
