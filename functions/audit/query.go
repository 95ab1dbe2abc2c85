package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/glassmkr/guardian/shared/audit"
	"github.com/glassmkr/guardian/shared/problem"
)

// Limits of one page.
const (
	DefaultLimit = 50
	MaxLimit     = 200
)

// Filter is a parsed, validated query.
type Filter struct {
	Since, Until *time.Time
	Action       string
	KeyID        string
	Limit        int
	// After is the cursor: rows strictly older than (AfterTime, AfterID).
	AfterTime *time.Time
	AfterID   int64
}

// FilterError names the parameter that is wrong.
type FilterError struct{ Param, Why string }

func (e *FilterError) Error() string { return e.Param + ": " + e.Why }

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// params are the parameters the audit log takes.
var params = []string{"since", "until", "action", "key_id", "limit", "cursor", "format"}

// ParseFilter reads and checks the query string. Unknown and repeated
// parameters are refused as the other list routes refuse them
// (problem.CheckQuery).
func ParseFilter(q url.Values) (Filter, error) {
	f := Filter{Limit: DefaultLimit}
	if qe := problem.CheckQuery(q, params...); qe != nil {
		return f, &FilterError{qe.Param, qe.Why}
	}
	parseTime := func(name string) (*time.Time, error) {
		s := q.Get(name)
		if s == "" {
			return nil, nil
		}
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return nil, &FilterError{name, "want an RFC 3339 time such as 2026-11-28T00:00:00Z"}
		}
		return &t, nil
	}
	var err error
	if f.Since, err = parseTime("since"); err != nil {
		return f, err
	}
	if f.Until, err = parseTime("until"); err != nil {
		return f, err
	}
	if f.Since != nil && f.Until != nil && f.Until.Before(*f.Since) {
		return f, &FilterError{"until", "is before since"}
	}
	if a := q.Get("action"); a != "" {
		if !audit.Actions[a] {
			return f, &FilterError{"action", "one of create, list, read, update, delete, rotate, auth_failed"}
		}
		f.Action = a
	}
	if k := q.Get("key_id"); k != "" {
		// Either case, as every route that takes an id in its path.
		k = strings.ToLower(k)
		if !uuidRE.MatchString(k) {
			return f, &FilterError{"key_id", "want a key id (a UUID)"}
		}
		f.KeyID = k
	}
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 1 || n > MaxLimit {
			return f, &FilterError{"limit", fmt.Sprintf("want a whole number from 1 to %d", MaxLimit)}
		}
		f.Limit = n
	}
	if c := q.Get("cursor"); c != "" {
		t, id, err := decodeCursor(c)
		if err != nil {
			return f, &FilterError{"cursor", "not a cursor this API gave out"}
		}
		f.AfterTime, f.AfterID = &t, id
	}
	if fm := q.Get("format"); fm != "" && fm != "json" && fm != "csv" {
		return f, &FilterError{"format", "json or csv"}
	}
	return f, nil
}

// cursor: base64url of "<unix micro>.<id>".
func encodeCursor(t time.Time, id int64) string {
	return base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(t.UnixMicro(), 10) + "." + strconv.FormatInt(id, 10)))
}

func decodeCursor(c string) (time.Time, int64, error) {
	if len(c) > 64 {
		return time.Time{}, 0, fmt.Errorf("cursor too long")
	}
	b, err := base64.RawURLEncoding.DecodeString(c)
	if err != nil {
		return time.Time{}, 0, err
	}
	ts, id, ok := strings.Cut(string(b), ".")
	if !ok {
		return time.Time{}, 0, fmt.Errorf("cursor shape")
	}
	us, err1 := strconv.ParseInt(ts, 10, 64)
	n, err2 := strconv.ParseInt(id, 10, 64)
	if err1 != nil || err2 != nil || n < 1 || us < 0 {
		return time.Time{}, 0, fmt.Errorf("cursor values")
	}
	return time.UnixMicro(us).UTC(), n, nil
}

// Entry is one row as the API shows it.
type Entry struct {
	ID           int64           `json:"id"`
	OccurredAt   time.Time       `json:"occurred_at"`
	KeyID        *string         `json:"key_id"`
	UserID       *string         `json:"user_id"`
	SourceIP     *string         `json:"source_ip"`
	UserAgent    *string         `json:"user_agent"`
	RequestID    string          `json:"request_id"`
	Method       string          `json:"method"`
	Path         string          `json:"path"`
	ResourceType *string         `json:"resource_type"`
	ResourceID   *string         `json:"resource_id"`
	Action       string          `json:"action"`
	Result       string          `json:"result"`
	StatusCode   int             `json:"status_code"`
	Metadata     json.RawMessage `json:"metadata"`
}

const pageQuery = `SELECT id, occurred_at, key_id::text, user_id::text, host(source_ip), user_agent, request_id, method, path,
	resource_type, resource_id, action, result, status_code, metadata::text
FROM api_audit_log
WHERE customer_id = $1
  AND ($2::timestamptz IS NULL OR occurred_at >= $2)
  AND ($3::timestamptz IS NULL OR occurred_at < $3)
  AND ($4 = '' OR action = $4)
  AND ($5 = '' OR key_id = $5::uuid)
  AND ($6::timestamptz IS NULL OR (occurred_at, id) < ($6, $7))
ORDER BY occurred_at DESC, id DESC
LIMIT $8`

// Page reads one page of customer's rows and the cursor of the next
// ("" at the end).
func Page(ctx context.Context, db *pgxpool.Pool, customer string, f Filter) ([]Entry, string, error) {
	var keyID string
	if f.KeyID != "" {
		keyID = f.KeyID
	}
	rows, err := db.Query(ctx, pageQuery, customer, f.Since, f.Until, f.Action, keyID, f.AfterTime, f.AfterID, f.Limit+1)
	if err != nil {
		return nil, "", err
	}
	entries, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Entry, error) {
		var e Entry
		var status int16
		var meta string
		err := r.Scan(&e.ID, &e.OccurredAt, &e.KeyID, &e.UserID, &e.SourceIP, &e.UserAgent, &e.RequestID, &e.Method, &e.Path,
			&e.ResourceType, &e.ResourceID, &e.Action, &e.Result, &status, &meta)
		e.StatusCode, e.Metadata, e.OccurredAt = int(status), json.RawMessage(meta), e.OccurredAt.UTC()
		return e, err
	})
	if err != nil {
		return nil, "", err
	}
	next := ""
	if len(entries) > f.Limit {
		entries = entries[:f.Limit]
		last := entries[len(entries)-1]
		next = encodeCursor(last.OccurredAt, last.ID)
	}
	return entries, next, nil
}
