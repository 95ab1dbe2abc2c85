package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/glassmkr/guardian/shared/audit"
	"github.com/glassmkr/guardian/shared/fnserve"
	"github.com/glassmkr/guardian/shared/identity"
	"github.com/glassmkr/guardian/shared/problem"
	"github.com/glassmkr/guardian/shared/reqbody"
)

// MaxBody is the largest snapshot accepted.
const MaxBody = 512 << 10

// clockSkew is how far in the future a snapshot's timestamp may be.
const clockSkew = 5 * time.Minute

// maxAge is how far in the past a snapshot's timestamp may be. Collectors
// push each snapshot as they take it and never buffer old ones, and the
// tables are partitioned by day: each insert makes a part per day its
// rows span, so back-dated snapshots (a plan keeps up to 90 days) would
// let one customer multiply the parts of every customer's inserts, and
// with them ClickHouse's CPU, until it refuses inserts for too many parts.
// Every plan keeps snapshots longer (TestEveryPlanKeepsWhatIngestTakes),
// so a snapshot ingest takes is one its plan keeps.
const maxAge = 24 * time.Hour

// MaxInFlightBytes bounds the snapshot bytes ingest holds at once (each is
// held as the body read, as the row's payload, and in the insert's column
// buffer while its batch is stored). Rate limits cap requests, not bytes:
// without this bound, collectors sending snapshots near MaxBody while
// ClickHouse is slow would hold max_concurrent x 512 KiB several times
// over. A snapshot whose declared length does not fit is refused at once
// with 503 busy and Retry-After, before its body is read; bytes are
// counted as they arrive, and a body that passes the bound while it is
// read gets the same answer. Typical ~4 KB snapshots never reach it
// (65,536 of them fit).
const MaxInFlightBytes = 256 << 20

type handler struct {
	log   *zap.Logger
	plans *planCache
	store store
	now   func() time.Time
	// inFlight counts the bytes of the snapshots being handled, bounded
	// by maxInFlight (MaxInFlightBytes unless a test says otherwise).
	inFlight    atomic.Int64
	maxInFlight int64

	// heldMu guards held: the bytes in flight per customer, each at most
	// customerShare of the bound.
	heldMu sync.Mutex
	held   map[string]int64
}

// customerShare is the part of the in-flight bound one customer's
// snapshots may hold (at least one snapshot of MaxBody): the rate limits
// count requests, not bytes, so one account sending large snapshots
// would otherwise fill the bound, and every other customer's collectors
// would be answered busy. An eighth is 32 MiB, some 8,000 ordinary
// snapshots at once.
const customerShare = 8

func (h *handler) customerBound() int64 { return max(h.maxInFlight/customerShare, MaxBody) }

// reserve counts n more bytes in flight for customer, or reports that
// they would pass the bound or the customer's share of it. Every true is
// matched by a release of the same n.
func (h *handler) reserve(customer string, n int64) bool {
	h.heldMu.Lock()
	defer h.heldMu.Unlock()
	// The customer's share first: bytes it may not hold must not count
	// against the bound, even for a moment, and refuse someone else.
	if h.held[customer]+n > h.customerBound() {
		return false
	}
	if h.inFlight.Add(n) > h.maxInFlight {
		h.inFlight.Add(-n)
		return false
	}
	if h.held == nil {
		h.held = map[string]int64{}
	}
	h.held[customer] += n
	return true
}

func (h *handler) release(customer string, n int64) {
	if n == 0 {
		return
	}
	h.inFlight.Add(-n)
	h.heldMu.Lock()
	if h.held[customer] -= n; h.held[customer] <= 0 {
		delete(h.held, customer)
	}
	h.heldMu.Unlock()
}

// fits reports whether size more bytes would fit now, for customer too.
func (h *handler) fits(customer string, size int64) bool {
	if h.inFlight.Load()+size > h.maxInFlight {
		return false
	}
	h.heldMu.Lock()
	defer h.heldMu.Unlock()
	return h.held[customer]+size <= h.customerBound()
}

// busy answers a snapshot that does not fit the in-flight bound.
func busy(w http.ResponseWriter) {
	w.Header().Set("Retry-After", "5")
	problem.Write(w, errBusy)
}

var errBusy = problem.New(http.StatusServiceUnavailable, "busy", "too many snapshots are being stored; send this one again shortly")

// charging is a request body whose bytes are counted in flight as they
// are read; past the bound its Read fails with errBusy (a problem, which
// reqbody.Read sends as it is).
type charging struct {
	rc       io.ReadCloser
	h        *handler
	w        http.ResponseWriter
	customer string
	held     int64
}

func (c *charging) Read(p []byte) (int, error) {
	n, err := c.rc.Read(p)
	if n > 0 {
		if !c.h.reserve(c.customer, int64(n)) {
			c.w.Header().Set("Retry-After", "5")
			return 0, errBusy
		}
		c.held += int64(n)
	}
	return n, err
}

func (c *charging) Close() error { return c.rc.Close() }

// snapshot is the part of the body the edge reads; the whole body is
// stored as sent.
type snapshot struct {
	Timestamp        *string `json:"timestamp"`
	CollectorVersion *string `json:"collector_version"`
	ServerID         *string `json:"server_id"`
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		problem.Write(w, problem.New(http.StatusMethodNotAllowed, "method_not_allowed", "send snapshots with POST"))
		return
	}
	id, ok := identity.FromRequest(r)
	if !ok || id.Kind != identity.KindCollector || id.ServerID == "" {
		// guardian_auth admits only collector keys here: a config error.
		problem.Write(w, problem.New(http.StatusInternalServerError, "internal_error", "no collector identity"))
		return
	}
	// A body whose declared length (MaxBody when not declared or larger:
	// reqbody.Read refuses more) does not fit is refused unread. One that
	// fits is charged as its bytes arrive, not as declared: a client that
	// declares 512 KiB and sends nothing must not hold any of the bound
	// (a few hundred such requests would hold it all, and every other
	// collector's snapshots would be refused).
	size := int64(MaxBody)
	if r.ContentLength >= 0 && r.ContentLength < size {
		size = r.ContentLength
	}
	if !h.fits(id.CustomerID, size) {
		busy(w)
		return
	}
	charged := &charging{rc: r.Body, h: h, w: w, customer: id.CustomerID}
	defer func() { h.release(id.CustomerID, charged.held) }()
	r.Body = charged
	body, ok := reqbody.Read(w, r, MaxBody)
	if !ok {
		return
	}
	clock := h.now() // with its monotonic reading, for the plan cache's age
	now := clock.UTC()
	snap, perr := parse(body, now)
	if perr != nil {
		problem.Write(w, perr)
		return
	}
	// A UUID's hex digits may come in either case (RFC 9562); the key's
	// server id is PostgreSQL's lower-case text.
	if snap.ServerID != nil && !strings.EqualFold(*snap.ServerID, id.ServerID) {
		problem.Write(w, problem.New(http.StatusForbidden, "wrong_server", "this collector key belongs to another server"))
		return
	}
	plan, err := h.plans.plan(r.Context(), id.CustomerID, clock)
	if err != nil {
		fnserve.LogFailure(h.log, "reading the customer's plan failed", err)
		unavailable(w)
		return
	}
	ts, _ := time.Parse(time.RFC3339Nano, *snap.Timestamp)
	row := snapshotRow{
		CustomerID: id.CustomerID, ServerID: id.ServerID,
		TS: ts.UTC().Truncate(time.Second), ReceivedAt: now.Truncate(time.Second),
		CollectorVersion: *snap.CollectorVersion, RetentionDays: RetentionDays(plan),
		Payload: string(body),
	}
	if err := h.store.Insert(r.Context(), row); err != nil {
		fnserve.LogFailure(h.log, "storing a snapshot failed", err, zap.String("server_id", id.ServerID))
		unavailable(w)
		return
	}
	audit.Annotate(w, audit.Annotation{
		ResourceType: "snapshot", ResourceID: id.ServerID, Action: "create",
		Metadata: map[string]any{"collector_version": row.CollectorVersion, "bytes": len(body)},
	})
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_ = json.NewEncoder(w).Encode(map[string]any{
		"success":       true,
		"received_at":   now.Format(time.RFC3339Nano),
		"active_alerts": 0,
	})
}

func unavailable(w http.ResponseWriter) {
	w.Header().Set("Retry-After", "30")
	problem.Write(w, problem.New(http.StatusServiceUnavailable, "storage_unavailable", "storage did not confirm the snapshot, which may not be stored; try again later"))
}

// parse checks the snapshot's shape: a JSON object whose timestamp is an
// RFC 3339 time not in the future and whose collector_version is a short
// string. Problems name the field.
func parse(body []byte, now time.Time) (*snapshot, *problem.Problem) {
	bad := func(detail string) *problem.Problem {
		return problem.New(http.StatusBadRequest, "invalid_snapshot", detail)
	}
	// Only JSON's own white space: bytes.TrimSpace also strips \v, \f,
	// U+00A0 and the like, which JSON does not allow, and the body is
	// stored as sent.
	trimmed := bytes.Trim(body, " \t\r\n")
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return nil, bad("the body must be one JSON object")
	}
	s, err := readFields(trimmed)
	if errors.Is(err, errFieldType) {
		return nil, bad("timestamp, collector_version and server_id must be strings")
	} else if err != nil {
		return nil, bad("the body is not valid JSON")
	}
	if s.Timestamp == nil {
		return nil, bad("timestamp is required")
	}
	ts, err := time.Parse(time.RFC3339Nano, *s.Timestamp)
	if err != nil {
		return nil, bad("timestamp must be an RFC 3339 time such as 2026-11-28T12:00:00Z")
	}
	if ts.After(now.Add(clockSkew)) {
		return nil, bad("timestamp is in the future")
	}
	if ts.Before(now.Add(-maxAge)) {
		return nil, bad("timestamp is more than 24 hours old (a collector pushes each snapshot as it takes it)")
	}
	if s.CollectorVersion == nil || *s.CollectorVersion == "" || len(*s.CollectorVersion) > 64 {
		return nil, bad("collector_version is required (at most 64 characters)")
	}
	return &s, nil
}
