package main

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"html"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/glassmkr/guardian/shared/identity"
	"github.com/glassmkr/guardian/shared/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

func get(t *testing.T, url string, header map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, b
}

func bearer(key string) map[string]string { return map[string]string{"Authorization": "Bearer " + key} }

func TestCustomersReadTheirOwnAuditLog(t *testing.T) {
	t.Parallel()
	env, c, pg := testenv.EdgeEnv(t)
	other := testenv.NewCustomer(t, pg.Owner, c.Pepper, c.Secret)
	stack := testenv.StartStack(t, env)
	admin, read := c.AccountKey(t, "admin"), c.AccountKey(t, "read")
	otherKey := other.AccountKey(t, "admin")

	for range 3 {
		get(t, stack.URL+"/api/v1/whoami", bearer(read))
	}
	get(t, stack.URL+"/api/v1/whoami", bearer(otherKey))
	get(t, stack.URL+"/api/v1/whoami", map[string]string{"Authorization": "Bearer " + testenv.Corrupt(read)})

	// The admin scope on a key, as the posture says: write is not enough.
	for scope, key := range map[string]string{"read": read, "write": c.AccountKey(t, "write")} {
		if resp, body := get(t, stack.URL+"/api/v1/audit", bearer(key)); resp.StatusCode != 403 || !strings.Contains(string(body), "insufficient_scope") {
			t.Fatalf("%s key: %d %s", scope, resp.StatusCode, body)
		}
	}
	// Every signed-in user reads the log, a member (no admin) too.
	member := testenv.NewCustomer(t, pg.Owner, c.Pepper, c.Secret)
	if _, err := pg.Owner.Exec(context.Background(), "UPDATE users SET role = 'member' WHERE id = $1", member.UserID); err != nil {
		t.Fatal(err)
	}
	_, memberToken := member.Session(t)
	for _, path := range []string{"/api/v1/audit", "/settings/audit"} {
		if resp, body := get(t, stack.URL+path, map[string]string{"Cookie": "guardian_token=" + memberToken}); resp.StatusCode != 200 {
			t.Fatalf("a member's session, %s: %d %s", path, resp.StatusCode, body)
		}
	}

	// Page through everything two at a time.
	var all []Entry
	url := stack.URL + "/api/v1/audit?limit=2"
	for pages := 0; url != "" && pages < 20; pages++ {
		resp, body := get(t, url, bearer(admin))
		if resp.StatusCode != 200 {
			t.Fatalf("audit: %d %s", resp.StatusCode, body)
		}
		var page struct {
			Items      []Entry `json:"items"`
			NextCursor *string `json:"next_cursor"`
		}
		if err := json.Unmarshal(body, &page); err != nil {
			t.Fatal(err)
		}
		all = append(all, page.Items...)
		url = ""
		if page.NextCursor != nil {
			url = stack.URL + "/api/v1/audit?limit=2&cursor=" + *page.NextCursor
		}
	}
	// 3 whoami calls and the read key's 403 on the audit route, plus the
	// audit reads before each page was answered; never the other
	// customer's row nor the anonymous failed authentication.
	seen := map[int64]bool{}
	var whoami int
	for i, e := range all {
		if seen[e.ID] {
			t.Fatalf("row %d twice", e.ID)
		}
		seen[e.ID] = true
		if i > 0 && e.OccurredAt.After(all[i-1].OccurredAt) {
			t.Fatal("not newest first")
		}
		if e.Path == "/api/v1/whoami" {
			whoami++
		}
		if e.Action == "auth_failed" {
			t.Fatalf("another customer's or an anonymous row: %+v", e)
		}
	}
	if whoami != 3 {
		t.Fatalf("%d whoami rows, want 3 (%d rows in all)", whoami, len(all))
	}

	resp, body := get(t, stack.URL+"/api/v1/audit?action=nope", bearer(admin))
	if resp.StatusCode != 400 || !strings.Contains(string(body), `"param":"action"`) || resp.Header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("bad filter: %d %s", resp.StatusCode, body)
	}

	resp, body = get(t, stack.URL+"/api/v1/audit?format=csv&action=read", bearer(admin))
	recs, err := csv.NewReader(strings.NewReader(string(body))).ReadAll()
	if err != nil || resp.Header.Get("Content-Type") != "text/csv; charset=utf-8" || len(recs) < 4 || strings.Join(recs[0], ",") != strings.Join(CSVHeader, ",") {
		t.Fatalf("csv: %v %q %d rows", err, resp.Header.Get("Content-Type"), len(recs))
	}

	_, token := c.Session(t)
	resp, body = get(t, stack.URL+"/settings/audit?since="+time.Now().Add(-time.Hour).UTC().Format(time.RFC3339), map[string]string{"Cookie": "guardian_token=" + token})
	if resp.StatusCode != 200 || !strings.Contains(string(body), "<h1>Audit log</h1>") || !strings.Contains(string(body), "/api/v1/whoami") || !strings.Contains(string(body), "Export CSV") {
		t.Fatalf("page: %d %.300s", resp.StatusCode, body)
	}
	if resp.Header.Get("Content-Security-Policy") == "" || resp.Header.Get("X-Frame-Options") != "DENY" {
		t.Fatalf("page headers: %v", resp.Header)
	}
	// The page's links work: the CSV export, and the next page of a page
	// of one entry. A parameter the page does not know (a link's
	// utm_source) is ignored, as on every page, and left out of its links
	// (the API would refuse it).
	cookie := map[string]string{"Cookie": "guardian_token=" + token}
	resp, body = get(t, stack.URL+"/settings/audit?limit=1&utm_source=mail", cookie)
	if resp.StatusCode != 200 {
		t.Fatalf("a page with a parameter it does not know: %d %.300s", resp.StatusCode, body)
	}
	// Nor does the row of that read keep it: a parameter nobody reads could
	// carry a secret (password=..., a key percent-encoded) past redaction.
	if resp, body := get(t, stack.URL+"/settings/audit?limit=1&password=hunter2-horse&k=gmk%5Facct%5Flive%5Fx", cookie); resp.StatusCode != 200 {
		t.Fatalf("a page with a secret in a parameter it does not know: %d %.300s", resp.StatusCode, body)
	}
	var kept int
	if err := pg.Owner.QueryRow(context.Background(), `SELECT count(*) FROM api_audit_log WHERE path = '/settings/audit'
		AND (metadata::text LIKE '%hunter2%' OR metadata::text ILIKE '%acct%')`).Scan(&kept); err != nil || kept != 0 {
		t.Fatalf("%d audit rows keep a parameter the audit log does not read (%v)", kept, err)
	}
	var reads int
	if err := pg.Owner.QueryRow(context.Background(), `SELECT count(*) FROM api_audit_log WHERE path = '/settings/audit' AND metadata->>'query' = 'limit=1'`).Scan(&reads); err != nil || reads < 2 {
		t.Fatalf("%d audit rows of the reads keep their own parameters, want 2 (%v)", reads, err)
	}
	for _, text := range []string{"Export CSV", "Older entries"} {
		m := regexp.MustCompile(`<a href="([^"]*)"[^>]*>` + text + `</a>`).FindStringSubmatch(string(body))
		if m == nil {
			t.Fatalf("no %q link on the page: %.600s", text, body)
		}
		link := html.UnescapeString(m[1])
		if resp, b := get(t, stack.URL+link, cookie); resp.StatusCode != 200 {
			t.Errorf("%s (%s): %d %.200s", text, link, resp.StatusCode, b)
		}
	}
	if resp, _ := get(t, stack.URL+"/settings/audit", bearer(admin)); resp.StatusCode != 403 {
		t.Fatalf("a key on the page route: %d", resp.StatusCode)
	}
	// In a browser: a bad filter brings the form back with what to fix,
	// and a refusal is a page, not a JSON document shown raw.
	browser := map[string]string{"Cookie": "guardian_token=" + token, "Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
	resp, body = get(t, stack.URL+"/settings/audit?since=yesterday", browser)
	if resp.StatusCode != 400 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") ||
		!strings.Contains(string(body), `role="alert"`) || !strings.Contains(string(body), "since") || !strings.Contains(string(body), `value="yesterday"`) {
		t.Fatalf("bad filter on the page: %d %q %.600s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	resp, body = get(t, stack.URL+"/settings/audit", map[string]string{"Authorization": "Bearer " + admin, "Accept": browser["Accept"]})
	if resp.StatusCode != 403 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") || !strings.Contains(string(body), "<h1>Forbidden</h1>") {
		t.Fatalf("refusal in a browser: %d %q %.300s", resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
}

// The dashboard's "Export CSV" downloads every row the filter matches; a
// browser keeps no Guardian-Next-Cursor header, so a file of one page
// would end at 200 rows without a word. An explicit limit still pages.
func TestCSVExportHoldsEveryMatchingRow(t *testing.T) {
	t.Parallel()
	env, c, pg := testenv.EdgeEnv(t)
	stack := testenv.StartStack(t, env)
	if _, err := pg.Owner.Exec(context.Background(), `INSERT INTO api_audit_log (customer_id, request_id, method, path, action, result, status_code)
		SELECT $1, 'export-' || g, 'GET', '/api/v1/whoami', 'read', 'success', 200 FROM generate_series(1, 450) g`, c.ID); err != nil {
		t.Fatal(err)
	}
	_, token := c.Session(t)
	cookie := map[string]string{"Cookie": "guardian_token=" + token}
	_, page := get(t, stack.URL+"/settings/audit?action=read", cookie)
	m := regexp.MustCompile(`<a href="([^"]*)"[^>]*>Export CSV</a>`).FindStringSubmatch(string(page))
	if m == nil {
		t.Fatalf("no export link: %.600s", page)
	}
	resp, body := get(t, stack.URL+html.UnescapeString(m[1]), cookie)
	recs, err := csv.NewReader(strings.NewReader(string(body))).ReadAll()
	if err != nil || resp.StatusCode != 200 || len(recs) != 1+450 {
		t.Fatalf("export: %d, %d records (%v), want the header and 450 rows", resp.StatusCode, len(recs), err)
	}
	seen := map[string]bool{}
	for _, r := range recs[1:] {
		seen[r[6]] = true
	}
	if len(seen) != 450 {
		t.Fatalf("export: %d distinct rows, want 450", len(seen))
	}
	// An API client that asks for a page gets one, and the cursor.
	resp, body = get(t, stack.URL+"/api/v1/audit?format=csv&action=read&limit=200", cookie)
	recs, err = csv.NewReader(strings.NewReader(string(body))).ReadAll()
	if err != nil || len(recs) != 201 || resp.Header.Get("Guardian-Next-Cursor") == "" {
		t.Fatalf("a page of CSV: %d records, cursor %q (%v)", len(recs), resp.Header.Get("Guardian-Next-Cursor"), err)
	}
}

// Past the export's bound the file says it is cut, and where to go on.
func TestCSVExportSaysWhereItWasCut(t *testing.T) {
	t.Parallel()
	_, c, pg := testenv.EdgeEnv(t)
	if _, err := pg.Owner.Exec(context.Background(), `INSERT INTO api_audit_log (customer_id, request_id, method, path, action, result, status_code)
		SELECT $1, 'cut-' || g, 'GET', '/', 'read', 'success', 200 FROM generate_series(1, 450) g`, c.ID); err != nil {
		t.Fatal(err)
	}
	h := &handler{db: pg.App(t), log: zap.NewNop(), exportCap: 300}
	r := httptest.NewRequest("GET", "/api/v1/audit?format=csv", nil)
	identity.SetEdgeHeaders(r.Header, &identity.Identity{Kind: identity.KindSession, CustomerID: c.ID, UserID: c.UserID, SessionID: "s"}, "192.0.2.1", identity.NewRequestID())
	w := httptest.NewRecorder()
	h.api(w, r)
	recs, err := csv.NewReader(strings.NewReader(w.Body.String())).ReadAll()
	if err != nil || w.Code != 200 {
		t.Fatalf("%d %v", w.Code, err)
	}
	last := recs[len(recs)-1]
	if len(recs) != 1+400+1 || last[0] != "truncated" || !strings.Contains(last[len(last)-1], `"next_cursor":"`) {
		t.Fatalf("%d records, last %v; want 400 rows (two pages past 300) and a truncated record", len(recs), last)
	}
}

// PostgreSQL failing between two pages of an export: the answer has
// begun (200, the first page sent), so the file's last record says it
// stops short instead of ending as if it were whole.
func TestCSVExportSaysItStoppedShort(t *testing.T) {
	t.Parallel()
	_, c, pg := testenv.EdgeEnv(t)
	ctx := context.Background()
	if _, err := pg.Owner.Exec(ctx, `INSERT INTO api_audit_log (customer_id, request_id, method, path, action, result, status_code)
		SELECT $1, 'short-' || g, 'GET', '/', 'read', 'success', 200 FROM generate_series(1, 450) g`, c.ID); err != nil {
		t.Fatal(err)
	}
	h := &handler{db: pg.App(t), log: zap.NewNop(), exportCap: MaxExportRows}
	other := pg.App(t)
	r := httptest.NewRequest("GET", "/api/v1/audit?format=csv", nil)
	identity.SetEdgeHeaders(r.Header, &identity.Identity{Kind: identity.KindSession, CustomerID: c.ID, UserID: c.UserID, SessionID: "s"}, "192.0.2.1", identity.NewRequestID())
	w := &onFirstWrite{ResponseRecorder: httptest.NewRecorder(), do: func() {
		// The export's connections end, as in a PostgreSQL restart: a
		// role may end its own backends.
		var n int
		if err := other.QueryRow(ctx, `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000)) FROM pg_stat_activity
			WHERE datname = current_database() AND usename = current_user AND pid <> pg_backend_pid()`).Scan(&n); err != nil || n == 0 {
			t.Errorf("terminating the export's connections: %d ended (%v)", n, err)
		}
	}}
	h.api(w, r)
	recs, err := csv.NewReader(strings.NewReader(w.Body.String())).ReadAll()
	if err != nil || w.Code != 200 {
		t.Fatalf("%d %v", w.Code, err)
	}
	last := recs[len(recs)-1]
	if len(recs) != 1+MaxLimit+1 || last[0] != "error" || !strings.Contains(last[len(last)-1], `"rows":200,`) {
		t.Fatalf("%d records, last %v; want the first page and an error record", len(recs), last)
	}
}

// onFirstWrite runs do before the first bytes of the answer are written.
type onFirstWrite struct {
	*httptest.ResponseRecorder
	do   func()
	done bool
}

func (w *onFirstWrite) Write(b []byte) (int, error) {
	if !w.done {
		w.done = true
		w.do()
	}
	return w.ResponseRecorder.Write(b)
}
