package main

import (
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/glassmkr/guardian/shared/audit"
	"github.com/glassmkr/guardian/shared/fnserve"
	"github.com/glassmkr/guardian/shared/identity"
	"github.com/glassmkr/guardian/shared/logevery"
	"github.com/glassmkr/guardian/shared/page"
	"github.com/glassmkr/guardian/shared/problem"
)

type handler struct {
	db  *pgxpool.Pool
	log *zap.Logger
	// exportCap bounds a whole-filter export (MaxExportRows).
	exportCap int
	// exportRate and exportGrace are the slowest an export may be read
	// (ExportMinRate, ExportGrace).
	exportRate  int64
	exportGrace time.Duration
	slowCuts    logevery.Gate // the log line of exports cut for a slow reader
	// queries bounds each customer's queries at once (see gate).
	queries *gate
}

// Each customer runs at most QueriesPerCustomer audit-log queries at once
// in each of the function's instances (the JSON pages', and the CSV
// exports', where an export holds its place to its end), waiting
// QueryWait for a turn.
const (
	QueriesPerCustomer = 2
	QueryWait          = 5 * time.Second
)

func newHandler(db *pgxpool.Pool, log *zap.Logger, exportRate int64, exportGrace time.Duration) http.Handler {
	h := &handler{db: db, log: log, exportCap: MaxExportRows, exportRate: exportRate, exportGrace: exportGrace,
		queries: newGate(QueriesPerCustomer, QueryWait)}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/audit", h.api)
	mux.HandleFunc("GET /settings/audit", h.page)
	return mux
}

// load reads the page of the caller's customer that f asks for, or
// writes a problem and returns false.
func (h *handler) load(w http.ResponseWriter, r *http.Request, f Filter) ([]Entry, string, bool) {
	id, ok := identity.FromRequest(r)
	if !ok {
		problem.Write(w, problem.New(http.StatusInternalServerError, "internal_error", "no identity"))
		return nil, "", false
	}
	if !h.queries.enter(r.Context(), id.CustomerID) {
		tooManyQueries(w)
		return nil, "", false
	}
	entries, next, err := func() ([]Entry, string, error) {
		defer h.queries.leave(id.CustomerID) // a panic too gives the place back
		return Page(r.Context(), h.db, id.CustomerID, f)
	}()
	if err != nil {
		fnserve.LogFailure(h.log, "reading the audit log failed", err)
		w.Header().Set("Retry-After", "5")
		problem.Write(w, problem.New(http.StatusServiceUnavailable, "unavailable", "the audit log cannot be read right now"))
		return nil, "", false
	}
	// Reading the audit log is itself audited, as a list.
	audit.Annotate(w, audit.Annotation{ResourceType: "audit_log", Action: "list",
		Metadata: map[string]any{"rows": len(entries), "query": ownQuery(r)}})
	return entries, next, true
}

// tooManyQueries answers a query of a customer that has QueriesPerCustomer
// under way already.
func tooManyQueries(w http.ResponseWriter) {
	w.Header().Set("Retry-After", "5")
	problem.Write(w, problem.New(http.StatusTooManyRequests, "too_many_queries",
		"this account reads its audit log in other requests already; try again when they end"))
}

func (h *handler) api(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	f, err := ParseFilter(q)
	if err != nil {
		var fe *FilterError
		errors.As(err, &fe)
		p := problem.New(http.StatusBadRequest, "invalid_filter", fe.Error())
		p.Extra = map[string]any{"param": fe.Param}
		problem.Write(w, p)
		return
	}
	if q.Get("format") == "csv" && !q.Has("limit") && !q.Has("cursor") {
		h.export(w, r, f)
		return
	}
	entries, next, ok := h.load(w, r, f)
	if !ok {
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	if q.Get("format") == "csv" {
		writeCSV(w, entries, next)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	var nextCursor *string
	if next != "" {
		nextCursor = &next
	}
	if entries == nil {
		entries = []Entry{}
	}
	_ = json.NewEncoder(w).Encode(map[string]any{"items": entries, "next_cursor": nextCursor})
}

// MaxExportRows bounds one whole-filter CSV export.
const MaxExportRows = 100_000

// export writes every row the filter matches as one CSV file, newest
// first, a page at a time: what the dashboard's "Export CSV" downloads.
// A browser keeps no Guardian-Next-Cursor header, so a file of one page
// would end silently after 200 rows. Past MaxExportRows a last record
// says the file is cut and gives the cursor to go on from.
func (h *handler) export(w http.ResponseWriter, r *http.Request, f Filter) {
	id, ok := identity.FromRequest(r)
	if !ok {
		problem.Write(w, problem.New(http.StatusInternalServerError, "internal_error", "no identity"))
		return
	}
	if !h.queries.enter(r.Context(), id.CustomerID) {
		tooManyQueries(w)
		return
	}
	defer h.queries.leave(id.CustomerID)
	f.Limit = MaxLimit
	entries, next, err := Page(r.Context(), h.db, id.CustomerID, f)
	if err != nil {
		fnserve.LogFailure(h.log, "reading the audit log failed", err)
		w.Header().Set("Retry-After", "5")
		problem.Write(w, problem.New(http.StatusServiceUnavailable, "unavailable", "the audit log cannot be read right now"))
		return
	}
	// Reading the audit log is itself audited; the annotation is a header,
	// so it goes before the file does.
	audit.Annotate(w, audit.Annotation{ResourceType: "audit_log", Action: "list",
		Metadata: map[string]any{"query": ownQuery(r), "export": true}})
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	w.Header().Set("Content-Disposition", `attachment; filename="audit-log.csv"`)
	cw := csv.NewWriter(newPaced(w, h.exportRate, h.exportGrace))
	_ = cw.Write(CSVHeader)
	rows := 0
	for {
		for _, e := range entries {
			_ = cw.Write(csvRecord(e))
		}
		rows += len(entries)
		if next == "" {
			break
		}
		if rows >= h.exportCap {
			// Said in the file itself: a download keeps no header.
			_ = cw.Write(append([]string{"truncated", "", "", "", "", "", "", "", "", "", "", "", "", ""},
				fmt.Sprintf(`{"rows":%d,"next_cursor":%q}`, rows, next)))
			break
		}
		if !h.flushed(r, cw, rows) {
			return // no more pages for a client that is not reading them
		}
		t, after, _ := decodeCursor(next) // Page made it
		f.AfterTime, f.AfterID = &t, after
		if entries, next, err = Page(r.Context(), h.db, id.CustomerID, f); err != nil {
			// The answer has begun: the file ends short, and says so.
			fnserve.LogFailure(h.log, "reading the audit log failed during an export", err)
			_ = cw.Write(append([]string{"error", "", "", "", "", "", "", "", "", "", "", "", "", ""},
				fmt.Sprintf(`{"rows":%d,"error":"the audit log could not be read to the end; export again"}`, rows)))
			break
		}
	}
	h.flushed(r, cw, rows)
}

// flushed flushes an export's CSV and reports whether it reached the
// connection. A client cut for reading too slowly (its write passed the
// deadline paced set) is logged at INFO, at most once per
// fnserve.FailureLogEvery, since any account can make such cuts at will;
// any other failure is a client that went away, logged at DEBUG. Only
// the write's error tells them apart: net/http cancels the request's
// context inside any failed write, the deadline's included.
func (h *handler) flushed(r *http.Request, cw *csv.Writer, rows int) bool {
	cw.Flush()
	err := cw.Error()
	if err == nil {
		return true
	}
	fields := []zap.Field{zap.String("request_id", identity.RequestID(r)), zap.Int("rows", rows), zap.Error(err)}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		h.log.Debug("audit export ended: its client went away", fields...)
	} else if n, ok := h.slowCuts.Allow(time.Now(), fnserve.FailureLogEvery); ok {
		h.log.Info("audit export cut: its client read more slowly than the export's floor",
			append(fields, zap.Int64("min_bytes_per_second", h.exportRate), zap.Int64("cuts", n))...)
	}
	return false
}

// CSVHeader is the first line of a CSV export.
var CSVHeader = []string{"id", "occurred_at", "key_id", "user_id", "source_ip", "user_agent", "request_id", "method", "path",
	"resource_type", "resource_id", "action", "result", "status_code", "metadata"}

func writeCSV(w http.ResponseWriter, entries []Entry, next string) {
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	w.Header().Set("Content-Disposition", `attachment; filename="audit-log.csv"`)
	if next != "" {
		w.Header().Set("Guardian-Next-Cursor", next)
	}
	cw := csv.NewWriter(w)
	_ = cw.Write(CSVHeader)
	for _, e := range entries {
		_ = cw.Write(csvRecord(e))
	}
	cw.Flush()
}

// csvRecord is one entry as a CSV record, in CSVHeader's order. Every
// value a client chose passes csvSafe, the method too: Go's server
// accepts "-1+1" as a method.
func csvRecord(e Entry) []string {
	s := func(p *string) string {
		if p == nil {
			return ""
		}
		return csvSafe(*p)
	}
	return []string{strconv.FormatInt(e.ID, 10), e.OccurredAt.Format(time.RFC3339Nano), s(e.KeyID), s(e.UserID), s(e.SourceIP),
		s(e.UserAgent), csvSafe(e.RequestID), csvSafe(e.Method), csvSafe(e.Path), s(e.ResourceType), s(e.ResourceID), e.Action, e.Result,
		strconv.Itoa(e.StatusCode), csvSafe(string(e.Metadata))}
}

// csvSafe defuses text a spreadsheet would run as a formula (a user agent
// or path is the client's to choose) by putting ' before it. A formula can
// begin wherever a spreadsheet may see a cell begin, not only at the
// value's start: Excel set to a ';' list separator (common in Europe)
// splits a comma-separated file at every ';', quotes or not, so
// "Mozilla;=WEBSERVICE(…)" would hold a live cell. So a trigger is
// defused at the start and after any of , ; tab CR LF, with spaces and
// quotes between. Nothing else changes: removing the added ' gives the
// value back.
func csvSafe(s string) string {
	var b []byte // nil until the first change
	start := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		trigger := c == '=' || c == '+' || c == '-' || c == '@' || c == '\t' || c == '\r'
		if trigger && start {
			if b == nil {
				b = append(make([]byte, 0, len(s)+8), s[:i]...)
			}
			b = append(b, '\'')
		}
		if b != nil {
			b = append(b, c)
		}
		switch c {
		case ',', ';', '\t', '\r', '\n':
			start = true
		case ' ', '"':
			// a cell may begin with spaces or a quote before its formula
		default:
			start = false
		}
	}
	if b == nil {
		return s
	}
	return string(b)
}

var auditPage = page.New("audit", `
{{if .Error}}<p class="error" role="alert">{{.Error}}</p>{{end}}
<form method="get" action="/settings/audit">
<label>Since <input name="since" value="{{.Q.Get "since"}}" placeholder="2026-11-01T00:00:00Z"></label>
<label>Until <input name="until" value="{{.Q.Get "until"}}"></label>
<label>Action <select name="action"><option value="">any</option>{{range .Actions}}<option{{if eq . ($.Q.Get "action")}} selected{{end}}>{{.}}</option>{{end}}</select></label>
<label>Key id <input name="key_id" value="{{.Q.Get "key_id"}}" size="36"></label>
<button type="submit">Filter</button>
<a href="{{.CSVHref}}" download>Export CSV</a>
</form>
<table><thead><tr><th>When (UTC)</th><th>Action</th><th>Result</th><th>Status</th><th>Method and path</th><th>Resource</th><th>Key</th><th>Source</th><th>Details</th></tr></thead><tbody>
{{range .Entries}}<tr class="{{.Result}}"><td>{{.OccurredAt.UTC.Format "2006-01-02 15:04:05 MST"}}</td><td>{{.Action}}</td><td>{{.Result}}</td><td>{{.StatusCode}}</td><td><code>{{.Method}} {{.Path}}</code></td><td>{{if .ResourceType}}{{.ResourceType}} {{.ResourceID}}{{end}}</td><td>{{if .KeyID}}<code>{{.KeyID}}</code>{{else if .UserID}}session{{end}}</td><td>{{.SourceIP}}</td><td><code>{{printf "%s" .Metadata}}</code></td></tr>
{{else}}<tr><td colspan="9">No entries.</td></tr>{{end}}
</tbody></table>
{{if .Next}}<p><a href="{{.NextHref}}">Older entries</a></p>{{end}}`)

// href is path with q as its query, whole: html/template would escape an
// encoded query set into a URL's query part a second time ("=" and "&"
// as %3d and %26), and the server would refuse the link.
func href(path string, q url.Values) template.URL {
	return template.URL(path + "?" + q.Encode())
}

// known is q's parameters that the audit log reads, without the rest.
func known(q url.Values) url.Values {
	out := url.Values{}
	for k, v := range q {
		if slices.Contains(params, k) {
			out[k] = v
		}
	}
	return out
}

// ownQuery is the request's query as its audit row keeps it: the audit
// log's own parameters only (checked before it is read). Anything else a
// page ignores (docs/api.md) could carry what no row may keep, a
// password=... or a key in percent-encoding, which the row's redaction,
// by member name and whole value, would not see.
func ownQuery(r *http.Request) string { return known(r.URL.Query()).Encode() }

func (h *handler) page(w http.ResponseWriter, r *http.Request) {
	// A page reads the parameters it knows and ignores the rest (a link's
	// utm_source, say; docs/api.md), which its own links then leave out.
	q := known(r.URL.Query())
	actions := []string{"create", "list", "read", "update", "delete", "rotate", "auth_failed"}
	f, err := ParseFilter(q)
	if err != nil {
		// The form comes back with what to fix, not a JSON problem the
		// browser would show raw.
		var fe *FilterError
		errors.As(err, &fe)
		if err := page.RenderStatus(w, http.StatusBadRequest, auditPage, "Audit log", true, map[string]any{
			"Q": q, "Error": fe.Error(), "Actions": actions, "CSVHref": href("/api/v1/audit", url.Values{"format": {"csv"}}),
		}); err != nil {
			h.log.Warn("rendering the audit page failed", zap.Error(err))
		}
		return
	}
	entries, next, ok := h.load(w, r, f)
	if !ok {
		return
	}
	// The export is of the whole filter (no limit, no cursor): every
	// matching row in one file.
	csvQ := url.Values{}
	for k, v := range q {
		if k != "cursor" && k != "limit" {
			csvQ[k] = v
		}
	}
	csvQ.Set("format", "csv")
	nextQ := url.Values{}
	for k, v := range q {
		nextQ[k] = v
	}
	nextQ.Set("cursor", next)
	if err := page.Render(w, auditPage, "Audit log", true, map[string]any{
		"Q": q, "Entries": entries, "Next": next, "NextHref": href("/settings/audit", nextQ), "CSVHref": href("/api/v1/audit", csvQ), "Actions": actions,
	}); err != nil {
		h.log.Warn("rendering the audit page failed", zap.Error(err))
	}
}
