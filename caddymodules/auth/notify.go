package auth

import (
	"encoding/hex"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/glassmkr/guardian/caddymodules/guardian"
)

// notice is one revocation notification (migration 0004): the cached
// entries of a key (by its hash), of a session or of a user's sessions
// must go.
type notice struct {
	kind byte // 'k', 's' or 'u'; 'x' (every credential) only in Authenticator.notices
	key  [32]byte
	id   string // session or user id
}

// parseNotice reads a guardian_auth payload as the trigger writes it:
// "k:" and the key hash in 64 hex digits, or "s:" or "u:" and a UUID as
// PostgreSQL prints it. Any role that can connect to the database may
// NOTIFY on the channel, so anything else is refused, never applied.
func parseNotice(payload string) (notice, bool) {
	if len(payload) < 2 || payload[1] != ':' {
		return notice{}, false
	}
	n, val := notice{kind: payload[0]}, payload[2:]
	switch n.kind {
	case 'k':
		if len(val) != 2*len(n.key) {
			return notice{}, false
		}
		if _, err := hex.Decode(n.key[:], []byte(val)); err != nil {
			return notice{}, false
		}
	case 's', 'u':
		if !canonicalUUID(val) {
			return notice{}, false
		}
		n.id = val
	default:
		return notice{}, false
	}
	return n, true
}

// canonicalUUID reports whether s is a UUID in PostgreSQL's text form
// (lower-case hex, 8-4-4-4-12), the only form the caches key by.
func canonicalUUID(s string) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return false
			}
		default:
			if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
				return false
			}
		}
	}
	return true
}

// apply applies one notification payload to the caches. A malformed one
// is counted, logged at most once per badNoticeWarnEvery and ignored
// (it moves no generation, so it sends no lookup to PostgreSQL). A panic
// empties the caches instead of ending Caddy: the listener's goroutine
// has no other recover, and a revocation it may have lost is re-read.
func (a *Authenticator) apply(payload string) {
	defer func() {
		if p := recover(); p != nil {
			a.clear()
			notifyMetrics.ignored.WithLabelValues("panic").Inc()
			a.log.Error("auth: a revocation notification could not be applied; caches emptied", zap.Any("panic", p), zap.Int("bytes", len(payload)))
		}
	}()
	n, ok := parseNotice(payload)
	if !ok {
		notifyMetrics.ignored.WithLabelValues("malformed").Inc()
		a.warnBadNotice(len(payload))
		return
	}
	a.drop(n)
}

// badNoticeWarnEvery bounds how often a malformed notification is logged:
// whoever sends them can send many.
const badNoticeWarnEvery = 30 * time.Second

// warnBadNotice logs a malformed notification's length (not its text,
// which is whoever sent it's to choose), at most once per
// badNoticeWarnEvery.
func (a *Authenticator) warnBadNotice(size int) {
	if n, ok := a.badNoticeLog.Allow(time.Now(), badNoticeWarnEvery); ok {
		a.log.Warn("auth: malformed revocation notification ignored (logged once per 30 s; guardian_auth_notifications_ignored_total counts them)",
			zap.Int("bytes", size), zap.Int64("ignored", n))
	}
}

// notifyMetrics count notifications the listener did not apply, and say
// whether revocations reach the edge and whether credentials are being
// served from the cache alone.
var notifyMetrics = struct {
	ignored     *prometheus.CounterVec
	staleServed *prometheus.CounterVec
	listening   prometheus.GaugeFunc
	unavailable prometheus.Counter
}{
	ignored: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "guardian", Subsystem: "auth", Name: "notifications_ignored_total",
		Help: "Revocation notifications not applied: malformed (not as the trigger writes them; any database role can NOTIFY) or panic (caches emptied instead).",
	}, []string{"reason"}),
	staleServed: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "guardian", Subsystem: "auth", Name: "stale_credentials_served_total",
		Help: "Credentials admitted from the cache past its freshness because PostgreSQL could not be reached, by kind (key, session).",
	}, []string{"kind"}),
	listening: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "guardian", Subsystem: "auth", Name: "revocation_listener_up",
		Help: "1 while every authenticator receives PostgreSQL's revocation notifications; 0 while one does not (its cached credentials are then checked against PostgreSQL again after a second).",
	}, listenersUp),
	unavailable: prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "guardian", Subsystem: "auth", Name: "store_unavailable_refusals_total",
		Help: "Requests refused with 503 because their credential was not in the cache and PostgreSQL could not be asked.",
	}),
}

// liveAuthenticators are the authenticators in use, for the listener gauge.
var liveAuthenticators = struct {
	sync.Mutex
	set map[*Authenticator]struct{}
}{set: map[*Authenticator]struct{}{}}

func listenersUp() float64 {
	liveAuthenticators.Lock()
	defer liveAuthenticators.Unlock()
	for a := range liveAuthenticators.set {
		if !a.Listening() {
			return 0
		}
	}
	return 1
}

// The series exist from the start, at 0, so that a rule on their
// increase has something to compare.
func init() {
	notifyMetrics.ignored.WithLabelValues("malformed")
	notifyMetrics.ignored.WithLabelValues("panic")
	notifyMetrics.staleServed.WithLabelValues("key")
	notifyMetrics.staleServed.WithLabelValues("session")
}

func registerMetrics(reg prometheus.Registerer) error {
	return guardian.RegisterCollectors(reg, notifyMetrics.ignored, notifyMetrics.staleServed, notifyMetrics.listening, notifyMetrics.unavailable)
}
