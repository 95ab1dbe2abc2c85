package ratelimit

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/glassmkr/guardian/caddymodules/guardian"
)

// Metrics of the limiter: decisions by who made them, and whether Redis
// is reachable (the degradation the security posture promises to log).
var metrics = struct {
	decisions   *prometheus.CounterVec
	limited     *prometheus.CounterVec
	redisUp     prometheus.GaugeFunc
	redisErrors prometheus.Counter
	speculated  *prometheus.CounterVec
}{
	decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "guardian", Subsystem: "ratelimit", Name: "degraded_decisions_total",
		Help: "Decisions made without Redis: by per-instance buckets (local) or by failing open (open) while Redis was down or slow, or because their request ended or their limiter closed while Redis was asked (abandoned).",
	}, []string{"source"}),
	limited: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "guardian", Subsystem: "ratelimit", Name: "limited_total",
		Help: "Requests refused with 429, by tier.",
	}, []string{"tier"}),
	redisUp: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "guardian", Subsystem: "ratelimit", Name: "redis_up",
		Help: "1 while the limiter reaches Redis, 0 while it is degraded (failing open).",
	}, redisUpNow),
	redisErrors: prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "guardian", Subsystem: "ratelimit", Name: "redis_errors_total",
		Help: "Limiter calls to Redis that failed or timed out.",
	}),
	speculated: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "guardian", Subsystem: "ratelimit", Name: "speculated_total",
		Help: "Reads passed on while their decision was made, by decision (refused: the function's work was done for a 429).",
	}, []string{"decision"}),
}

// Speculation's series, resolved once.
var (
	speculatedAllowed = metrics.speculated.WithLabelValues("allowed")
	speculatedRefused = metrics.speculated.WithLabelValues("refused")
)

// live are the limiters in use: one per limiter configuration, and during
// a reload a new one beside the one it replaces. redis_up is read from
// their down marks when it is collected, so it cannot keep the value of a
// limiter a reload has closed, nor lag the mark it reports.
var live = struct {
	sync.Mutex
	set map[*Limiter]struct{}
}{set: map[*Limiter]struct{}{}}

// redisUpNow is 0 while any live limiter has Redis marked down, else 1.
func redisUpNow() float64 {
	live.Lock()
	defer live.Unlock()
	for l := range live.set {
		if l.downUntil.Load() != 0 {
			return 0
		}
	}
	return 1
}

func registerMetrics(reg prometheus.Registerer) error {
	return guardian.RegisterCollectors(reg, metrics.decisions, metrics.limited, metrics.redisUp, metrics.redisErrors, metrics.speculated)
}
