package ratelimit

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/glassmkr/guardian/caddymodules/guardian"
)

// Metrics of the limiter: decisions by who made them, and whether Redis
// is reachable (the degradation the security posture promises to log).
var metrics = struct {
	decisions   *prometheus.CounterVec
	limited     *prometheus.CounterVec
	redisUp     prometheus.Gauge
	redisErrors prometheus.Counter
}{
	decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "guardian", Subsystem: "ratelimit", Name: "degraded_decisions_total",
		Help: "Decisions made without Redis: by per-instance buckets (local) or by failing open (open).",
	}, []string{"source"}),
	limited: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "guardian", Subsystem: "ratelimit", Name: "limited_total",
		Help: "Requests refused with 429, by tier.",
	}, []string{"tier"}),
	redisUp: prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "guardian", Subsystem: "ratelimit", Name: "redis_up",
		Help: "1 while the limiter reaches Redis, 0 while it is degraded (failing open).",
	}),
	redisErrors: prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "guardian", Subsystem: "ratelimit", Name: "redis_errors_total",
		Help: "Limiter calls to Redis that failed or timed out.",
	}),
}

func init() { metrics.redisUp.Set(1) }

func registerMetrics(reg prometheus.Registerer) error {
	return guardian.RegisterCollectors(reg, metrics.decisions, metrics.limited, metrics.redisUp, metrics.redisErrors)
}
