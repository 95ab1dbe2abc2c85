// Package testenv gives tests real PostgreSQL, Redis and ClickHouse servers
// and isolates tests from each other on them.
//
// `make test` starts one set of servers for the whole run and names its
// servers.env in GUARDIAN_TEST_SERVERS_ENV. A package run alone with
// `go test` starts its own set on free ports, through the same
// deploy/stack/servers.sh that `make up` uses, and stops it when the
// package's tests end. Either way each test gets a database of its own
// (PostgreSQL and ClickHouse) or a key prefix of its own (Redis), so tests
// run in parallel.
package testenv

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// EnvFile names the servers.env of servers started for the whole run.
const EnvFile = "GUARDIAN_TEST_SERVERS_ENV"

// PrivateDirEnv names the folder that holds Private's servers (default the
// temp dir). `make test` sets it so that, when a test is killed before its
// cleanup runs (Ctrl-C, a -timeout panic), the run destroys what it left.
const PrivateDirEnv = "GUARDIAN_TEST_PRIVATE_DIR"

var (
	mu      sync.Mutex
	shared  map[string]string // settings of the servers in use
	ownDir  string            // set when this process started its own servers
	started = map[string]bool{}
)

// Main runs a package's tests, then stops any servers the package started
// for itself and gives up its ports (FreePort). Use it as:
// func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }.
func Main(m *testing.M) int {
	code := m.Run()
	mu.Lock()
	defer mu.Unlock()
	removeOwnBinDir()
	releasePorts()
	if ownDir != "" {
		if out, err := runScript("destroy", ownDir); err != nil {
			fmt.Fprintf(os.Stderr, "testenv: stopping servers: %v\n%s", err, out)
			if code == 0 {
				code = 1
			}
		}
		_ = os.RemoveAll(ownDir)
		ownDir = ""
	}
	return code
}

// Servers returns the settings (servers.env keys) of running servers that
// include service ("postgres", "redis" or "clickhouse"), starting them if
// this process has none.
func Servers(t testing.TB, service string) map[string]string {
	t.Helper()
	mu.Lock()
	defer mu.Unlock()
	if shared == nil {
		if f := os.Getenv(EnvFile); f != "" {
			env, err := ReadEnvFile(f)
			if err != nil {
				t.Fatalf("testenv: %v", err)
			}
			shared = env
			started["postgres"], started["redis"], started["clickhouse"] = true, true, true
		}
	}
	if !started[service] {
		if ownDir == "" {
			dir, err := os.MkdirTemp("", "guardian-test-")
			if err != nil {
				t.Fatalf("testenv: %v", err)
			}
			ownDir = dir
		}
		env, err := Start(ownDir, service)
		if err != nil {
			t.Fatalf("testenv: start %s: %v", service, err)
		}
		shared = env
		started[service] = true
	}
	out := make(map[string]string, len(shared))
	for k, v := range shared {
		out[k] = v
	}
	return out
}

// Start starts services in dir with deploy/stack/servers.sh and returns the
// resulting servers.env settings. Ports are chosen free by the script.
func Start(dir string, services ...string) (map[string]string, error) {
	out, err := runScript("start", dir, services...)
	if err != nil {
		return nil, fmt.Errorf("%w\n%s", err, out)
	}
	return ReadEnvFile(filepath.Join(dir, "servers.env"))
}

// Stop stops services in dir.
func Stop(dir string, services ...string) error {
	out, err := runScript("stop", dir, services...)
	if err != nil {
		return fmt.Errorf("%w\n%s", err, out)
	}
	return nil
}

// UseRedis points a stack's environment at the Redis whose servers.env
// settings are r: its address, its password and its unix socket, or no
// socket when r has none (a cluster, a proxy), so that the edge never dials
// the socket of the Redis env named before while its functions reach this
// one.
func UseRedis(env, r map[string]string) {
	env["GUARDIAN_REDIS_ADDR"] = r["GUARDIAN_REDIS_ADDR"]
	env["GUARDIAN_REDIS_PASSWORD"] = r["GUARDIAN_REDIS_PASSWORD"]
	env["GUARDIAN_REDIS_SOCKET"] = r["GUARDIAN_REDIS_SOCKET"] // "" is unset
}

// Private starts services of its own for one test in a temporary directory
// and stops them when the test ends: for tests that stop or break a server.
// It returns the servers.env settings and the directory.
func Private(t testing.TB, services ...string) (map[string]string, string) {
	t.Helper()
	dir, err := os.MkdirTemp(os.Getenv(PrivateDirEnv), "guardian-private-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if out, err := runScript("destroy", dir); err != nil {
			t.Errorf("testenv: stop private servers: %v\n%s", err, out)
		}
		_ = os.RemoveAll(dir)
	})
	env, err := Start(dir, services...)
	if err != nil {
		t.Fatalf("testenv: start private %v: %v", services, err)
	}
	return env, dir
}

func runScript(cmd, dir string, services ...string) ([]byte, error) {
	root, err := RepoRoot()
	if err != nil {
		return nil, err
	}
	args := append([]string{filepath.Join(root, "deploy", "stack", "servers.sh"), cmd, dir}, services...)
	c := exec.Command("bash", args...)
	c.Env = append(os.Environ(), "GUARDIAN_STACK_MODE=test")
	// Leave the ports to the script, not to a developer's shell.
	for _, k := range []string{"PG_PORT", "REDIS_PORT", "CH_TCP_PORT", "CH_HTTP_PORT"} {
		c.Env = append(c.Env, k+"=")
	}
	return c.CombinedOutput()
}

// ReadEnvFile parses a file of shell KEY=value lines.
func ReadEnvFile(path string) (map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read env file: %w", err)
	}
	defer f.Close()
	env := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(strings.TrimPrefix(line, "export "), "=")
		if !ok {
			continue
		}
		env[k] = strings.Trim(v, `"'`)
	}
	return env, sc.Err()
}

// RepoRoot returns the repository's top folder (the one with go.mod).
// Parallel tests ask at once; it is looked for once.
func RepoRoot() (string, error) { return findRepoRoot() }

var findRepoRoot = sync.OnceValues(func() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("testenv: no go.mod above the working directory")
		}
		dir = parent
	}
})

// Name returns a fresh lower-case identifier with prefix, usable as a
// database name or key prefix.
func Name(prefix string) string {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return prefix + hex.EncodeToString(b[:])
}
