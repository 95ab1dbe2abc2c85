package function

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/glassmkr/guardian/caddymodules/guardian"
)

// Metrics of the function runtime, labelled by function name. They are
// package-wide (processes outlive a config) and registered into each
// config's registry, so they appear on Caddy's metrics endpoint.
var metrics = struct {
	starts        *prometheus.CounterVec
	startFailures *prometheus.CounterVec
	crashes       *prometheus.CounterVec
	coldStart     *prometheus.HistogramVec
	inFlight      *prometheus.GaugeVec
	duration      *prometheus.HistogramVec
	serverErrors  *prometheus.CounterVec
}{
	starts: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "guardian", Subsystem: "function", Name: "starts_total",
		Help: "Function processes started and ready.",
	}, []string{"function"}),
	startFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "guardian", Subsystem: "function", Name: "start_failures_total",
		Help: "Function starts that failed or timed out before readiness.",
	}, []string{"function"}),
	crashes: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "guardian", Subsystem: "function", Name: "crashes_total",
		Help: "Function processes that exited without being asked to.",
	}, []string{"function"}),
	coldStart: prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "guardian", Subsystem: "function", Name: "cold_start_seconds",
		Help:    "Time from exec to the function's readiness signal.",
		Buckets: []float64{.001, .002, .003, .005, .0075, .01, .02, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"function"}),
	inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "guardian", Subsystem: "function", Name: "in_flight_requests",
		Help: "Requests being served by the function now.",
	}, []string{"function"}),
	serverErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "guardian", Subsystem: "function", Name: "server_error_answers_total",
		Help: "Answers of 500 or more the function itself gave (its database or ClickHouse away, a bug), which request_duration_seconds counts as proxied, by the problem's code (busy: load shed on purpose; none: not a problem+json; other: a code not known to the edge).",
	}, []string{"function", "code"}),
	duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "guardian", Subsystem: "function", Name: "request_duration_seconds",
		Help:    "Time to serve a request through the runtime, cold starts included, by outcome.",
		Buckets: prometheus.DefBuckets,
	}, []string{"function", "outcome"}),
}

// Outcomes of a request through the runtime.
const (
	outcomeProxied     = "proxied"
	outcomeFailed      = "failed"
	outcomeTimeout     = "timeout"
	outcomeUnavailable = "unavailable"
	outcomeBusy        = "busy"        // every slot of the function taken
	outcomeBusyClient  = "busy_client" // one client's share of a busy function taken
	outcomeBufferFull  = "buffer_full" // the bound on request bodies held at once reached
	outcomeCanceled    = "canceled"    // the client went away first
	outcomeRefused     = "refused"     // a request the runtime would not pass on
)

func registerMetrics(reg prometheus.Registerer) error {
	return guardian.RegisterCollectors(reg, metrics.starts, metrics.startFailures, metrics.crashes, metrics.coldStart, metrics.inFlight, metrics.duration, metrics.serverErrors)
}

// fnMetrics are one function's series, resolved once at provision so the
// request path does no label lookups.
type fnMetrics struct {
	starts, startFailures, crashes prometheus.Counter
	serverErrors                   *prometheus.CounterVec // curried with the function's name: code
	coldStart                      prometheus.Observer
	inFlight                       prometheus.Gauge
	duration                       map[string]prometheus.Observer
}

func newFnMetrics(name string) *fnMetrics {
	m := &fnMetrics{
		starts:        metrics.starts.WithLabelValues(name),
		startFailures: metrics.startFailures.WithLabelValues(name),
		crashes:       metrics.crashes.WithLabelValues(name),
		coldStart:     metrics.coldStart.WithLabelValues(name),
		inFlight:      metrics.inFlight.WithLabelValues(name),
		serverErrors:  metrics.serverErrors.MustCurryWith(prometheus.Labels{"function": name}),
		duration:      map[string]prometheus.Observer{},
	}
	// Every code exists from the start, so that an alert's increase()
	// counts the first of each.
	for _, code := range append([]string{"none", "other"}, problemCodes...) {
		m.serverErrors.WithLabelValues(code)
	}
	for _, o := range []string{outcomeProxied, outcomeFailed, outcomeTimeout, outcomeUnavailable, outcomeBusy, outcomeBusyClient, outcomeBufferFull, outcomeCanceled, outcomeRefused} {
		m.duration[o] = metrics.duration.WithLabelValues(name, o)
	}
	return m
}
