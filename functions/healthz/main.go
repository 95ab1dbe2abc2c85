// Command healthz serves GET /healthz: 200 when PostgreSQL, Redis and
// ClickHouse all answer, else 503 problem+json naming what is down.
//
// Grants: the runtime PostgreSQL role (it only runs SELECT 1), Redis and
// ClickHouse addresses; no pepper, no session secret.
package main

import (
	"context"
	"encoding/json"
	"net/http"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/glassmkr/guardian/shared/config"
	"github.com/glassmkr/guardian/shared/db"
	"github.com/glassmkr/guardian/shared/fnserve"
	"github.com/glassmkr/guardian/shared/health"
	"github.com/glassmkr/guardian/shared/problem"
)

func main() { fnserve.Main(setup) }

func setup(ctx context.Context, log *zap.Logger, env *config.Loader) (http.Handler, func(), error) {
	pgDSN := env.String(config.PGAppDSN)
	rs := env.LoadRedis()
	chCfg := env.LoadClickHouse()
	timeout := env.Duration("GUARDIAN_HEALTH_TIMEOUT", 2*time.Second)
	if err := env.Err(); err != nil {
		return nil, nil, err
	}

	pool, err := db.Open(ctx, config.PGAppDSN, pgDSN, 2)
	if err != nil {
		return nil, nil, err
	}
	// The same client the edge's limiter uses: one server, or a cluster.
	rdb := redis.NewUniversalClient(&redis.UniversalOptions{Addrs: rs.Addrs, Password: rs.Password, IsClusterMode: rs.Cluster,
		PoolSize: 2, MaxRetries: -1, DialerRetries: 1})
	ch, err := db.ClickHouse(chCfg, db.ClickHouseOptions{Dial: timeout, Read: timeout})
	if err != nil {
		pool.Close()
		_ = rdb.Close()
		return nil, nil, err
	}
	checks := map[string]health.Check{
		"postgres":   func(ctx context.Context) error { _, err := pool.Exec(ctx, "SELECT 1"); return err },
		"redis":      func(ctx context.Context) error { return rdb.Ping(ctx).Err() },
		"clickhouse": func(ctx context.Context) error { return ch.Ping(ctx) },
	}
	h := &handler{checks: checks, timeout: timeout, log: log}
	closeFn := func() { pool.Close(); _ = rdb.Close(); _ = ch.Close() }
	return h, closeFn, nil
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
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		problem.Write(w, problem.New(http.StatusMethodNotAllowed, "method_not_allowed", "use GET"))
		return
	}
	// The checks do not end with the request: they are shared with the
	// requests that arrived meanwhile, and a client closing its connection
	// mid-check would otherwise fail them, log a dependency as failing, and
	// make pgx drop a pooled connection. Each check is bounded by the
	// timeout anyway.
	done := h.runs.DoChan("checks", func() (any, error) {
		return health.Run(context.Background(), h.checks, h.timeout, func(name string, err error) {
			h.log.Warn("health check failed", zap.String("dependency", name), zap.Error(err))
		}), nil
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
