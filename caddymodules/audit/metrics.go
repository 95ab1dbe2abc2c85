package audit

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/glassmkr/guardian/caddymodules/guardian"
)

// Metrics of the audit writer; spool growth is the degradation to alert on.
var metrics = struct {
	rows             *prometheus.CounterVec
	replayed         prometheus.Counter
	replayErrors     prometheus.Counter
	handBackTimeouts prometheus.Counter
	saturated        prometheus.Counter
	spoolCorrupt     prometheus.Counter
	spoolBytes       prometheus.Gauge
	spoolFull        prometheus.Gauge
	writeErrors      prometheus.Counter
	displaced        prometheus.Counter
	unrecorded       prometheus.Counter
	folded           prometheus.Counter
	batchSize        prometheus.Histogram
}{
	rows: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "guardian", Subsystem: "audit", Name: "rows_total",
		Help: "Audit rows made durable, by where: postgres or spool.",
	}, []string{"dest"}),
	replayed: prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "guardian", Subsystem: "audit", Name: "replayed_rows_total",
		Help: "Spooled audit rows replayed into PostgreSQL.",
	}),
	replayErrors: prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "guardian", Subsystem: "audit", Name: "replay_errors_total",
		Help: "Replays of the spool that failed although PostgreSQL answered (a grant lost, a row refused, a segment unreadable); each is retried, and the spool grows meanwhile (alert on any).",
	}),
	handBackTimeouts: prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "guardian", Subsystem: "audit", Name: "handback_timeouts_total",
		Help: "Ends of spooling given up because PostgreSQL did not take the spool's last segment within 2 s while audited requests waited (PostgreSQL slow); the next try waits 10 s, doubling to a minute.",
	}),
	saturated: prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "guardian", Subsystem: "audit", Name: "saturated_refusals_total",
		Help: "Requests refused before they ran because the audit queue was full (PostgreSQL slower than the requests coming).",
	}),
	spoolCorrupt: prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "guardian", Subsystem: "audit", Name: "spool_corrupt_rows_total",
		Help: "Spooled audit rows damaged on disk, which could not be replayed (alert on any).",
	}),
	spoolBytes: prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "guardian", Subsystem: "audit", Name: "spool_bytes",
		Help: "Bytes of audit rows waiting in the local spool (alert when above 0 for long).",
	}),
	spoolFull: prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "guardian", Subsystem: "audit", Name: "spool_full",
		Help: "1 while the spool is full and audited requests are refused.",
	}),
	writeErrors: prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "guardian", Subsystem: "audit", Name: "write_errors_total",
		Help: "Batches of audit rows that could be made durable nowhere.",
	}),
	displaced: prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "guardian", Subsystem: "audit", Name: "displaced_rows_total",
		Help: "Audit rows whose chain position held a row their writer did not write, stored in a new chain instead (alert on any).",
	}),
	unrecorded: prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "guardian", Subsystem: "audit", Name: "unrecorded_answers_total",
		Help: "Requests that ran but were answered 503 because their audit row could not be recorded (the queue full past its timeout, the writer closed, the row durable nowhere): alert on any.",
	}),
	folded: prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "guardian", Subsystem: "audit", Name: "folded_refusals_total",
		Help: "Refusals without a credential from an address already out of ip-tier tokens (or refused unchecked), counted here instead of written: the failure that blocked the address has the row.",
	}),
	batchSize: prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: "guardian", Subsystem: "audit", Name: "batch_rows",
		Help:    "Rows per group commit.",
		Buckets: []float64{1, 2, 5, 10, 20, 50, 100, 200, 500, 1000},
	}),
}

func registerMetrics(reg prometheus.Registerer) error {
	return guardian.RegisterCollectors(reg, metrics.rows, metrics.replayed, metrics.replayErrors, metrics.handBackTimeouts, metrics.saturated, metrics.spoolCorrupt, metrics.spoolBytes, metrics.spoolFull, metrics.writeErrors, metrics.displaced, metrics.unrecorded, metrics.folded, metrics.batchSize)
}
