package main

import (
	"encoding/csv"
	"encoding/json"
	"html"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

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

	if resp, body := get(t, stack.URL+"/api/v1/audit", bearer(read)); resp.StatusCode != 403 || !strings.Contains(string(body), "insufficient_scope") {
		t.Fatalf("read key: %d %s", resp.StatusCode, body)
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
	// of one entry.
	cookie := map[string]string{"Cookie": "guardian_token=" + token}
	_, body = get(t, stack.URL+"/settings/audit?limit=1", cookie)
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
