// Command healthz serves GET /healthz: 200 when PostgreSQL, Redis and
// ClickHouse all answer, else 503 problem+json naming what is down.
//
// Grants: its own PostgreSQL role (it only runs SELECT 1), the Redis
// addresses and ClickHouse's HTTP URL; no password of Redis or ClickHouse,
// no pepper, no session secret. /healthz is public: a compromised healthz
// holding the limiter's Redis password could empty or fill its buckets,
// and ClickHouse's user could write every customer's snapshots. Neither
// check needs them: a Redis that asks for its password (NOAUTH) has
// answered, and ClickHouse's /ping needs no user.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/glassmkr/guardian/shared/config"
	"github.com/glassmkr/guardian/shared/db"
	"github.com/glassmkr/guardian/shared/fnserve"
	"github.com/glassmkr/guardian/shared/health"
	"github.com/glassmkr/guardian/shared/logevery"
	"github.com/glassmkr/guardian/shared/problem"
)

// EnvClickHouseHTTP is ClickHouse's HTTP interface, whose /ping answers
// without a user (default http://127.0.0.1:8123, ClickHouse's own).
const EnvClickHouseHTTP = "GUARDIAN_CLICKHOUSE_HTTP_URL"

func main() { fnserve.Main(setup) }

func setup(ctx context.Context, log *zap.Logger, env *config.Loader) (http.Handler, func(), error) {
	pgDSN := env.String(config.PGAppDSN)
	rs := env.LoadRedis()
	chURL := strings.TrimSuffix(env.Optional(EnvClickHouseHTTP, "http://127.0.0.1:8123"), "/")
	timeout := env.PositiveDuration("GUARDIAN_HEALTH_TIMEOUT", 2*time.Second)
	if err := env.Err(); err != nil {
		return nil, nil, err
	}
	if err := config.CheckHTTPURL(chURL); err != nil {
		return nil, nil, fmt.Errorf("%s %w", EnvClickHouseHTTP, err)
	}

	pool, err := db.Open(ctx, config.PGAppDSN, pgDSN, 2)
	if err != nil {
		return nil, nil, err
	}
	// The same kind of client the edge's limiter uses (one server, or a
	// cluster), without its password (rs.Password is never set here).
	rdb := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: rs.Addrs, IsClusterMode: rs.Cluster,
		PoolSize: 2, MaxRetries: -1, DialerRetries: 1})
	client := &http.Client{Timeout: timeout}
	checks := map[string]health.Check{
		"postgres":   func(ctx context.Context) error { _, err := pool.Exec(ctx, "SELECT 1"); return err },
		"redis":      func(ctx context.Context) error { return redisAnswered(rdb.Ping(ctx).Err()) },
		"clickhouse": func(ctx context.Context) error { return pingClickHouse(ctx, client, chURL) },
	}
	h := &handler{checks: checks, timeout: timeout, log: log}
	closeFn := func() { pool.Close(); _ = rdb.Close(); client.CloseIdleConnections() }
	return h, closeFn, nil
}

// redisAnswered turns a PING's outcome into the check's: a reply, PONG or
// Redis asking for the password healthz does not hold (NOAUTH), means
// Redis is up.
func redisAnswered(err error) error {
	var rerr redis.Error
	if err == nil || (errors.As(err, &rerr) && strings.HasPrefix(rerr.Error(), "NOAUTH")) {
		return nil
	}
	return err
}

// pingClickHouse asks ClickHouse's HTTP interface for /ping, which needs
// no user and answers "Ok.".
func pingClickHouse(ctx context.Context, client *http.Client, base string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/ping", nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64))
	if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != "Ok." {
		return fmt.Errorf("clickhouse /ping: %d %q", resp.StatusCode, body)
	}
	return nil
}

type handler struct {
	checks  map[string]health.Check
	timeout time.Duration
	log     *zap.Logger
	// runs lets concurrent requests share one run of the checks: /healthz
	// is public, and a flood (of requests abandoned at once, too) must not
	// queue checks on the small pools until they time out and report a
	// dependency down that is not.
	runs singleflight.Group
	// failed gates each dependency's "health check failed" line: runs
	// that find it down take a millisecond (connection refused), and
	// anyone may ask, so a line per run would let anyone fill the log
	// (and have journald drop Caddy's own lines) during an outage.
	failed sync.Map // dependency name -> *logevery.Gate
}

// failureLogEvery is how often a dependency that stays down is logged.
const failureLogEvery = 30 * time.Second

// logFailure logs a failed check, at most once per failureLogEvery per
// dependency, with the number of failures since the last line.
func (h *handler) logFailure(name string, err error) {
	g, _ := h.failed.LoadOrStore(name, new(logevery.Gate))
	if n, ok := g.(*logevery.Gate).Allow(time.Now(), failureLogEvery); ok {
		h.log.Warn("health check failed", zap.String("dependency", name), zap.Int64("failures", n), zap.Error(err))
	}
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		problem.Write(w, problem.New(http.StatusMethodNotAllowed, "method_not_allowed", "use GET or HEAD"))
		return
	}
	// The checks do not end with the request: they are shared with the
	// requests that arrived meanwhile, and a client closing its connection
	// mid-check would otherwise fail them, log a dependency as failing, and
	// make pgx drop a pooled connection. Each check is bounded by the
	// timeout anyway.
	done := h.runs.DoChan("checks", func() (any, error) {
		return health.Run(context.Background(), h.checks, h.timeout, h.logFailure), nil
	})
	var rep health.Report
	select {
	case res := <-done:
		rep = res.Val.(health.Report)
	case <-r.Context().Done():
		return // the client went away; the run goes on for the others
	}
	if !rep.OK() {
		p := problem.New(http.StatusServiceUnavailable, "dependency_down", rep.Summary())
		p.Extra = map[string]any{"checks": rep.Checks, "failing": rep.Failing}
		w.Header().Set("Retry-After", "5")
		problem.Write(w, p)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(map[string]any{"status": "ok", "checks": rep.Checks})
}
