package main

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/glassmkr/guardian/shared/config"
	"github.com/glassmkr/guardian/shared/health"
	"github.com/glassmkr/guardian/shared/logevery"
	"github.com/glassmkr/guardian/shared/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

var securityHeaders = map[string]string{
	"Strict-Transport-Security": "max-age=15552000; includeSubDomains",
	"X-Content-Type-Options":    "nosniff",
	"X-Frame-Options":           "DENY",
	"Referrer-Policy":           "strict-origin-when-cross-origin",
}

func get(t *testing.T, url string) (*http.Response, map[string]any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var doc map[string]any
	if err := json.Unmarshal(body, &doc); err != nil {
		t.Fatalf("GET %s: %d, body is not JSON: %q", url, resp.StatusCode, body)
	}
	for k, v := range securityHeaders {
		if got := resp.Header.Get(k); got != v {
			t.Errorf("GET %s (%d): %s = %q, want %q", url, resp.StatusCode, k, got, v)
		}
	}
	return resp, doc
}

func TestHealthzThroughTheEdgeIsOKWithSecurityHeaders(t *testing.T) {
	t.Parallel()
	stack := testenv.StartStack(t, testenv.StackEnv(t))
	resp, doc := get(t, stack.URL+"/healthz")
	if resp.StatusCode != 200 || doc["status"] != "ok" {
		t.Fatalf("healthz: %d %v", resp.StatusCode, doc)
	}
	checks, _ := doc["checks"].(map[string]any)
	for _, dep := range []string{"postgres", "redis", "clickhouse"} {
		c, _ := checks[dep].(map[string]any)
		if c["status"] != "up" {
			t.Errorf("%s: %v", dep, checks[dep])
		}
	}
	// A monitor whose base URL ends in a slash asks //healthz: the edge
	// serves the one path healthz has.
	if resp, doc := get(t, stack.URL+"//healthz"); resp.StatusCode != 200 || doc["status"] != "ok" {
		t.Fatalf("//healthz: %d %v", resp.StatusCode, doc)
	}
	// One cold start, then warm: the runtime's metrics on Caddy's endpoint.
	metrics := stack.Metrics(t)
	for _, want := range []string{
		`guardian_function_starts_total{function="healthz"} 1`,
		`guardian_function_in_flight_requests{function="healthz"} 0`,
		`guardian_function_request_duration_seconds_count{function="healthz",outcome="proxied"} 2`,
		`guardian_function_cold_start_seconds_count{function="healthz"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

func TestUnknownPathIsA404ProblemWithSecurityHeaders(t *testing.T) {
	t.Parallel()
	stack := testenv.StartStack(t, testenv.StackEnv(t))
	resp, doc := get(t, stack.URL+"/no/such/route")
	if resp.StatusCode != 404 || doc["code"] != "not_found" || resp.Header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("got %d %q %v", resp.StatusCode, resp.Header.Get("Content-Type"), doc)
	}
	if resp.Header.Get("Server") != "" {
		t.Errorf("Server header %q sent", resp.Header.Get("Server"))
	}
}

func TestHealthzNamesRedisWhenItIsDownAndRecovers(t *testing.T) {
	t.Parallel()
	redisEnv, dir := testenv.Private(t, "redis")
	env := testenv.StackEnv(t)
	testenv.UseRedis(env, redisEnv)
	stack := testenv.StartStack(t, env)

	if resp, doc := get(t, stack.URL+"/healthz"); resp.StatusCode != 200 {
		t.Fatalf("before: %d %v", resp.StatusCode, doc)
	}
	if err := testenv.Stop(dir, "redis"); err != nil {
		t.Fatal(err)
	}
	resp, doc := get(t, stack.URL+"/healthz")
	if resp.StatusCode != 503 || resp.Header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("redis down: %d %q %v", resp.StatusCode, resp.Header.Get("Content-Type"), doc)
	}
	if doc["code"] != "dependency_down" || doc["detail"] != "redis is down" {
		t.Fatalf("redis down: %v", doc)
	}
	if failing, _ := doc["failing"].([]any); len(failing) != 1 || failing[0] != "redis" {
		t.Fatalf("failing = %v", doc["failing"])
	}
	// The function's own log line reaches Caddy's log, tagged with its
	// name (through a pipe: it may trail the response a little).
	tagged := func() bool {
		for _, line := range strings.Split(stack.Log(), "\n") {
			if strings.Contains(line, `"function":"healthz"`) && strings.Contains(line, "health check failed") && strings.Contains(line, `"dependency":"redis"`) {
				return true
			}
		}
		return false
	}
	for deadline := time.Now().Add(10 * time.Second); !tagged(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("healthz's warning is not in Caddy's log under its name:\n%s", stack.Log())
		}
	}
	if _, err := testenv.Start(dir, "redis"); err != nil {
		t.Fatal(err)
	}
	if resp, doc := get(t, stack.URL+"/healthz"); resp.StatusCode != 200 {
		t.Fatalf("after restart: %d %v", resp.StatusCode, doc)
	}
}

// TestHealthzFunctionCannotSeeTheKeyPepper: nor any other secret it does
// not need, Redis's and ClickHouse's passwords included (/healthz is
// public).
func TestHealthzFunctionCannotSeeTheKeyPepper(t *testing.T) {
	t.Parallel()
	env := testenv.StackEnv(t)
	stack := testenv.StartStack(t, env)
	if resp, _ := get(t, stack.URL+"/healthz"); resp.StatusCode != 200 {
		t.Fatalf("healthz: %d", resp.StatusCode)
	}
	children := testenv.FunctionChildren(stack.Cmd.Process.Pid, "healthz")
	if len(children) != 1 {
		t.Fatalf("caddy runs healthz as %v, want one process", children)
	}
	environ, err := os.ReadFile("/proc/" + strconv.Itoa(children[0]) + "/environ")
	if err != nil {
		t.Fatal(err)
	}
	vars := strings.Split(string(environ), "\x00")
	seen := map[string]bool{}
	for _, kv := range vars {
		k, _, _ := strings.Cut(kv, "=")
		seen[k] = true
		for _, secret := range []string{env["GUARDIAN_KEY_PEPPER"], env["GUARDIAN_SESSION_SECRET"], env["GUARDIAN_PG_OWNER_PASSWORD"],
			env["GUARDIAN_REDIS_PASSWORD"], env["GUARDIAN_CLICKHOUSE_PASSWORD"]} {
			if secret == "" {
				t.Fatal("the stack's environment lacks a secret this test looks for")
			}
			if strings.Contains(kv, secret) {
				t.Errorf("the healthz function holds a secret it does not need, in %s", k)
			}
		}
	}
	if seen["GUARDIAN_KEY_PEPPER"] || seen["GUARDIAN_SESSION_SECRET"] || seen["GUARDIAN_PG_DSN"] || seen["GUARDIAN_REDIS_PASSWORD"] || seen["GUARDIAN_CLICKHOUSE_USER"] || seen["GUARDIAN_CLICKHOUSE_PASSWORD"] {
		t.Errorf("healthz environment has %v", seen)
	}
	// Its settings reach it over a socket once it is sealed, never its
	// environment (which /proc shows): only the runtime's variables are
	// there.
	for k := range seen {
		if k != "" && k != "PATH" && !strings.HasPrefix(k, "GUARDIAN_FUNCTION_") {
			t.Errorf("healthz's initial environment holds %s", k)
		}
	}
	// What it is sent is what its route lists, in the running config:
	// exactly its database role, the Redis addresses and ClickHouse's
	// HTTP URL.
	resp, err := stack.Admin.Get("http://admin/config/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var cfg any
	if err := json.NewDecoder(resp.Body).Decode(&cfg); err != nil {
		t.Fatal(err)
	}
	var lists [][]string
	var walk func(v any)
	walk = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			if v["handler"] == "guardian_function" && v["name"] == "healthz" {
				var list []string
				for _, e := range v["env"].([]any) {
					list = append(list, e.(string))
				}
				lists = append(lists, list)
			}
			for _, c := range v {
				walk(c)
			}
		case []any:
			for _, c := range v {
				walk(c)
			}
		}
	}
	walk(cfg)
	want := "GUARDIAN_PG_APP_DSN=GUARDIAN_PG_DSN_HEALTHZ GUARDIAN_REDIS_ADDR GUARDIAN_REDIS_CLUSTER GUARDIAN_CLICKHOUSE_HTTP_URL GUARDIAN_HEALTH_TIMEOUT"
	if len(lists) != 1 || strings.Join(lists[0], " ") != want {
		t.Errorf("healthz's routes list %v, want [%s]", lists, want)
	}
}

// TestHealthzReachesARedisCluster: several addresses in
// GUARDIAN_REDIS_ADDR are a cluster's seeds, for healthz as for the edge.
func TestHealthzReachesARedisCluster(t *testing.T) {
	t.Parallel()
	env := testenv.StackEnv(t)
	testenv.UseRedis(env, map[string]string{"GUARDIAN_REDIS_ADDR": strings.Join(testenv.RedisCluster(t), ",")})
	stack := testenv.StartStack(t, env)
	if resp, doc := get(t, stack.URL+"/healthz"); resp.StatusCode != 200 {
		t.Fatalf("cluster: %d %v", resp.StatusCode, doc)
	}
}

// A client that goes away mid-check does not fail the checks: nothing is
// logged as down, and the checks run to their end.
func TestAbandonedRequestDoesNotFailTheChecks(t *testing.T) {
	core, logs := observer.New(zap.DebugLevel)
	ran := make(chan error, 1)
	h := &handler{timeout: time.Second, log: zap.New(core), checks: map[string]health.Check{
		"postgres": func(ctx context.Context) error { ran <- ctx.Err(); return ctx.Err() },
	}}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil).WithContext(ctx))
	if err := <-ran; err != nil {
		t.Fatalf("the check ran with its context already ended: %v", err)
	}
	if rec.Code != 200 || logs.Len() != 0 {
		t.Fatalf("status %d, %d log lines; want 200 and none", rec.Code, logs.Len())
	}
}

// A dependency that stays down is logged once per interval, however many
// requests find it down: anyone may ask /healthz, and each answer would
// otherwise add a line. The line says how many failures it stands for.
func TestAFailingDependencyIsLoggedOncePerInterval(t *testing.T) {
	core, logs := observer.New(zap.DebugLevel)
	down := errors.New("connection refused")
	h := &handler{timeout: time.Second, log: zap.New(core), checks: map[string]health.Check{
		"postgres": func(context.Context) error { return down },
		"redis":    func(context.Context) error { return nil },
	}}
	get := func() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
		if rec.Code != 503 {
			t.Fatalf("status %d, want 503", rec.Code)
		}
	}
	for range 50 {
		get()
	}
	if n := logs.FilterMessage("health check failed").Len(); n != 1 {
		t.Fatalf("50 failed runs logged %d times, want once", n)
	}
	g, _ := h.failed.Load("postgres")
	g.(*logevery.Gate).Pass() // the interval is over
	get()
	lines := logs.FilterMessage("health check failed").All()
	if len(lines) != 2 || lines[1].ContextMap()["failures"] != int64(50) || lines[1].ContextMap()["dependency"] != "postgres" {
		t.Fatalf("after the interval: %d lines, last %v; want 2, the last counting 50 failures of postgres", len(lines), lines[len(lines)-1].ContextMap())
	}
}

// Concurrent requests share one run of the checks, so a flood cannot
// queue checks on the small pools until they time out.
func TestConcurrentRequestsShareOneRunOfTheChecks(t *testing.T) {
	var runs atomic.Int64
	release := make(chan struct{})
	h := &handler{timeout: 5 * time.Second, log: zap.NewNop(), checks: map[string]health.Check{
		"postgres": func(ctx context.Context) error { runs.Add(1); <-release; return nil },
	}}
	const n = 20
	codes := make(chan int, n)
	for range n {
		go func() {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest("GET", "/healthz", nil))
			codes <- rec.Code
		}()
	}
	time.Sleep(200 * time.Millisecond) // all n arrive while the first run waits
	close(release)
	for range n {
		if c := <-codes; c != 200 {
			t.Fatalf("status %d", c)
		}
	}
	if got := runs.Load(); got > 2 {
		t.Fatalf("%d runs of the checks for %d concurrent requests", got, n)
	}
}

// redisReply is an error reply of Redis's (a redis.Error).
type redisReply string

func (e redisReply) Error() string { return string(e) }
func (redisReply) RedisError()     {}

// A Redis that asks for its password has answered; anything else is an
// error of the check.
func TestRedisAnswered(t *testing.T) {
	for _, tc := range []struct {
		err  error
		down bool
	}{
		{nil, false},
		{redisReply("NOAUTH Authentication required."), false},
		{redisReply("ERR max number of clients reached"), true},
		{redisReply("LOADING Redis is loading the dataset in memory"), true},
		{errors.New("dial tcp 127.0.0.1:1: connect: connection refused"), true},
		{errors.New("NOAUTH but not from Redis"), true},
	} {
		if got := redisAnswered(tc.err) != nil; got != tc.down {
			t.Errorf("redisAnswered(%v) down = %t, want %t", tc.err, got, tc.down)
		}
	}
}

// pingClickHouse wants /ping's 200 "Ok."; anything else is down.
func TestPingClickHouse(t *testing.T) {
	for _, tc := range []struct {
		status int
		body   string
		down   bool
	}{
		{200, "Ok.\n", false},
		{200, "<html>a proxy</html>", true},
		{401, "Authentication failed", true},
		{503, "", true},
	} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path != "/ping" || r.Header.Get("Authorization") != "" {
				w.WriteHeader(400)
				return
			}
			w.WriteHeader(tc.status)
			_, _ = io.WriteString(w, tc.body)
		}))
		err := pingClickHouse(context.Background(), srv.Client(), srv.URL)
		srv.Close()
		if (err != nil) != tc.down {
			t.Errorf("%d %q: %v, want down %t", tc.status, tc.body, err, tc.down)
		}
	}
	if err := pingClickHouse(context.Background(), http.DefaultClient, "http://127.0.0.1:1"); err == nil {
		t.Error("nothing listening: up")
	}
}

// TestClickHouseURLWithCredentialsIsRefused: a URL holding a password
// would put it in every failed check's log line (url.Parse's and
// net/http's errors quote the URL), so setup refuses it, without quoting it.
func TestClickHouseURLWithCredentialsIsRefused(t *testing.T) {
	for _, u := range []string{
		"http://default:s3cret@127.0.0.1:81x",
		"http://default:s3cret@127.0.0.1:8123",
		"ftp://127.0.0.1:8123",
		"http://127.0.0.1:8123/?user=default&password=s3cret",
	} {
		env := config.New(func(k string) (string, bool) {
			v, ok := map[string]string{
				config.PGAppDSN:   "postgres://u@127.0.0.1:1/db",
				config.RedisAddr:  "127.0.0.1:1",
				EnvClickHouseHTTP: u,
			}[k]
			return v, ok
		})
		_, _, err := setup(context.Background(), zap.NewNop(), env)
		if err == nil || strings.Contains(err.Error(), "s3cret") || !strings.Contains(err.Error(), EnvClickHouseHTTP) {
			t.Errorf("%s: err = %v", u, err)
		}
	}
}
