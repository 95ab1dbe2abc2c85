package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/template"
	"time"

	"github.com/glassmkr/guardian/bench/internal/harness"
)

// config is one configuration of the edge: a route of the bench's Caddy.
type config struct {
	ID   string `json:"id"`
	Path string `json:"path"`
	Desc string `json:"what"`
	// The modules on the route, for the start-up checks.
	headers, auth, limit, audit bool
}

// configs are measured in this order (rotated by one per repetition).
// Every one gets the same request: GET <path>/ok with the account key in
// Authorization: Bearer; a, fn and b ignore it.
var configs = []config{
	{"a", "/a/ok", "bare Caddy: reverse_proxy to a hand-started testfn on a unix socket (idle pool as large as the runtime's)", false, false, false, false},
	{"fn", "/fn/ok", "guardian_function alone (the runtime; the upstream of b-e)", false, false, false, false},
	{"b", "/b/ok", "guardian_headers + guardian_function", true, false, false, false},
	{"c", "/c/ok", "b + guardian_auth (account key, scope read)", true, true, false, false},
	{"d", "/d/ok", "c + guardian_ratelimit ip (mode failures) before auth and account (key+account buckets) after", true, true, true, false},
	{"e", "/e/ok", "d + guardian_audit first in the chain: the full production chain", true, true, true, true},
}

// caddyfileData fills caddyfileTmpl.
type caddyfileData struct {
	AdminSocket, BareSocket, Testfn, SocketDir, SpoolDir string
	Port, MaxConcurrent                                  int
	SpeculateBelow                                       int
}

// The routes differ only in their modules. The runtime routes share one
// guardian_function configuration, so they share one warm process.
// Capacities are so high that the limiter never refuses.
var caddyfileTmpl = template.Must(template.New("Caddyfile").Parse(`{
	admin unix/{{.AdminSocket}}
	persist_config off
	auto_https off
	grace_period 5s
	guardian
	servers {
		timeouts {
			read_header 10s
			read_body 30s
			write 60s
			idle 2m
		}
		max_header_size 32KB
	}
}

(fn) {
	guardian_function bench_edge {
		bin {{.Testfn}}
		min_warm 1
		max_concurrent {{.MaxConcurrent}}
		socket_dir {{.SocketDir}}
	}
}

(auth) {
	guardian_auth {
		allow session key
		scope read
	}
}

(limit_ip) {
	guardian_ratelimit ip {
		mode failures
		ip 1000000000 1000000000
	}
}

(limit_account) {
	guardian_ratelimit account {
		key 1000000000 1000000000
		account 1000000000 1000000000
		speculate_below {{.SpeculateBelow}}
	}
}

http://127.0.0.1:{{.Port}} {
	bind 127.0.0.1

	handle_path /a/* {
		# Idle connections kept as many as the runtime keeps (Caddy's
		# default is 32), so that a is not re-dialling its upstream at
		# higher concurrency while fn-e are not.
		reverse_proxy unix/{{.BareSocket}} {
			transport http {
				keepalive_idle_conns_per_host {{.MaxConcurrent}}
				keepalive_idle_conns {{.MaxConcurrent}}
			}
		}
	}
	handle_path /fn/* {
		route {
			import fn
		}
	}
	handle_path /b/* {
		route {
			guardian_headers
			import fn
		}
	}
	handle_path /c/* {
		route {
			guardian_headers
			import auth
			import fn
		}
	}
	handle_path /d/* {
		route {
			guardian_headers
			import limit_ip
			import auth
			import limit_account
			import fn
		}
	}
	handle_path /e/* {
		route {
			guardian_headers
			guardian_audit {
				spool_dir {{.SpoolDir}}
			}
			import limit_ip
			import auth
			import limit_account
			import fn
		}
	}
	handle {
		respond "no such bench route" 404
	}
	handle_errors {
		guardian_headers
		guardian_problem
	}
}
`))

func writeCaddyfile(dir string, d caddyfileData) (string, error) {
	var buf bytes.Buffer
	if err := caddyfileTmpl.Execute(&buf, d); err != nil {
		return "", fmt.Errorf("caddyfile: %w", err)
	}
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		return "", fmt.Errorf("caddyfile: %w", err)
	}
	return path, nil
}

// startCaddy runs Caddy on cfg with the edge's settings in its environment
// and waits until the admin endpoint and /a/ok answer.
func (b *bench) startCaddy(ctx context.Context, bin, cfg string) error {
	env := harness.MinimalEnv(b.dir,
		"GUARDIAN_KEY_PEPPER="+b.pepper,
		"GUARDIAN_SESSION_SECRET="+secret(32),
		"GUARDIAN_PG_APP_DSN="+b.stack.env["GUARDIAN_PG_APP_DSN"],
		"GUARDIAN_REDIS_ADDR="+b.stack.env["GUARDIAN_REDIS_ADDR"],
		"GUARDIAN_REDIS_PASSWORD="+b.stack.env["GUARDIAN_REDIS_PASSWORD"],
	)
	if b.stack.redisSocket {
		env = append(env, "GUARDIAN_REDIS_SOCKET="+b.stack.env["GUARDIAN_REDIS_SOCKET"])
	}
	c, err := b.spawn("caddy", env, bin, "run", "--config", cfg, "--adapter", "caddyfile")
	if err != nil {
		return err
	}
	b.caddy = c
	client := harness.NewClient(1)
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil && !c.Exited() {
		if st, _, err := harness.Get(ctx, b.admin, "http://localhost/config/"); err == nil && st == http.StatusOK && harness.Hit(ctx, client, b.base+"/a/ok") {
			return nil
		}
		harness.Sleep(ctx, 20*time.Millisecond)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if c.Exited() {
		return b.withLogTail(fmt.Errorf("caddy exited during start-up (%s)", c.Cmd.ProcessState))
	}
	return b.withLogTail(errors.New("caddy's admin endpoint or site did not answer within 30s"))
}

// checkRoutes proves that each route runs what the table says: a answers
// from the hand-started testfn, the others from one runtime process; b-e
// set the security headers; c-e refuse a request without the key; d-e
// answer RateLimit headers; e writes one audit row per request.
func (b *bench) checkRoutes(ctx context.Context) error {
	client := harness.NewClient(1)
	defer client.CloseIdleConnections()
	// The runtime's process starts with the config (min_warm); give it
	// a few seconds to be ready.
	deadline := time.Now().Add(15 * time.Second)
	for ctx.Err() == nil && time.Now().Before(deadline) && !harness.Hit(ctx, client, b.base+"/fn/ok") {
		harness.Sleep(ctx, 50*time.Millisecond)
	}
	pids := map[string]int{}
	for _, c := range configs {
		before, err := b.stack.read(ctx)
		if err != nil {
			return err
		}
		status, hdr, body, err := b.target(c).Do(ctx, client)
		if err != nil {
			return fmt.Errorf("route %s: %w", c.Path, err)
		}
		pid, perr := strconv.Atoi(string(body))
		if status != http.StatusOK || perr != nil {
			return fmt.Errorf("route %s answered %d %q, want 200 and a pid", c.Path, status, harness.Truncate(body, 200))
		}
		pids[c.ID] = pid
		after, err := b.stack.read(ctx)
		if err != nil {
			return err
		}
		if got := hdr.Get("X-Content-Type-Options") == "nosniff"; got != c.headers {
			return fmt.Errorf("route %s: security headers present %v, want %v", c.Path, got, c.headers)
		}
		if got := hdr.Get("RateLimit-Limit") != ""; got != c.limit {
			return fmt.Errorf("route %s: RateLimit-Limit present %v, want %v", c.Path, got, c.limit)
		}
		if got := after.auditRows - before.auditRows; (got == 1) != c.audit || got > 1 {
			return fmt.Errorf("route %s wrote %d audit rows, want audit=%v", c.Path, got, c.audit)
		}
		anon, _, _, err := harness.Target{URL: b.base + c.Path}.Do(ctx, client)
		if err != nil {
			return fmt.Errorf("route %s without key: %w", c.Path, err)
		}
		if got := anon == http.StatusUnauthorized; got != c.auth {
			return fmt.Errorf("route %s without key answered %d (auth expected: %v)", c.Path, anon, c.auth)
		}
	}
	if pids["a"] != b.bare.Pid() {
		return fmt.Errorf("/a/ok answered pid %d, not the hand-started testfn's %d", pids["a"], b.bare.Pid())
	}
	b.fnPid = pids["fn"]
	for _, id := range []string{"b", "c", "d", "e"} {
		if pids[id] != b.fnPid || b.fnPid == pids["a"] {
			return fmt.Errorf("routes do not share the runtime's process as configured (pids %v)", pids)
		}
	}
	return nil
}

// edgeCounters are cumulative figures from Caddy's /metrics.
type edgeCounters struct {
	degraded    float64 // limiter decisions made without Redis (failing open, or local buckets)
	redisErrors float64 // limiter calls to Redis that failed or timed out
	spooled     float64 // audit rows made durable in the local spool instead of PostgreSQL
}

func (b *bench) edgeCounters(ctx context.Context) (edgeCounters, error) {
	status, body, err := harness.Get(ctx, b.admin, "http://localhost/metrics")
	if err != nil || status != http.StatusOK {
		return edgeCounters{}, fmt.Errorf("caddy admin /metrics: %d %v", status, err)
	}
	text := string(body)
	return edgeCounters{
		degraded:    sumMetric(text, "guardian_ratelimit_degraded_decisions_total", ""),
		redisErrors: sumMetric(text, "guardian_ratelimit_redis_errors_total", ""),
		spooled:     sumMetric(text, "guardian_audit_rows_total", `dest="spool"`),
	}, nil
}

// sumMetric adds up the samples of name (Prometheus text format) whose
// labels contain label.
func sumMetric(text, name, label string) float64 {
	total := 0.0
	for line := range strings.Lines(text) {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "#") {
			continue
		}
		series, value, found := strings.Cut(line, " ")
		if !found {
			continue
		}
		metric, labels, _ := strings.Cut(series, "{")
		if metric != name || !strings.Contains(labels, label) {
			continue
		}
		if v, err := strconv.ParseFloat(strings.Fields(value)[0], 64); err == nil {
			total += v
		}
	}
	return total
}

// target is the request every configuration gets.
func (b *bench) target(c config) harness.Target {
	return harness.Target{URL: b.base + c.Path, Header: http.Header{"Authorization": {"Bearer " + b.key}}}
}

func (b *bench) withLogTail(err error) error {
	if b.caddy == nil {
		return err
	}
	return fmt.Errorf("%w%s", err, harness.LogTail(b.caddy.Log.Name()))
}
