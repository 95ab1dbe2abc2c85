package main

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/glassmkr/guardian/shared/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

// edge is a running stack on a database of the test's own, with a
// customer whose keys that stack accepts.
type edge struct {
	*testenv.Stack
	c *testenv.Customer
}

func newEdges(t *testing.T, n int) []edge {
	t.Helper()
	env, c, _ := testenv.EdgeEnv(t)
	var out []edge
	for range n {
		out = append(out, edge{testenv.StartStack(t, env), c})
	}
	return out
}

func call(t *testing.T, url string, header map[string]string) (int, http.Header, []byte) {
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
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, body
}

func TestWhoamiShowsTheEdgesIdentityNotForgedHeaders(t *testing.T) {
	t.Parallel()
	e := newEdges(t, 1)[0]
	key := e.c.AccountKey(t, "write")
	status, _, body := call(t, e.URL+"/api/v1/whoami", map[string]string{
		"Authorization":        "Bearer " + key,
		"Guardian-Customer-Id": "00000000-0000-0000-0000-000000000000",
		"Guardian-Scope":       "admin",
	})
	if status != 200 {
		t.Fatalf("whoami: %d %s", status, body)
	}
	var got map[string]string
	if err := json.Unmarshal(body, &got); err != nil {
		t.Fatal(err)
	}
	if got["customer_id"] != e.c.ID || got["scope"] != "write" || got["kind"] != "account_key" || got["key_id"] == "" {
		t.Fatalf("identity %v", got)
	}
	// A client whose base URL ends in a slash asks //api/v1/whoami: the
	// edge serves whoami's one path.
	if status, _, body := call(t, e.URL+"//api/v1/whoami", map[string]string{"Authorization": "Bearer " + key}); status != 200 {
		t.Fatalf("//api/v1/whoami: %d %s", status, body)
	}

	_, sessionToken := e.c.Session(t)
	status, _, body = call(t, e.URL+"/api/v1/whoami", map[string]string{"Cookie": "guardian_token=" + sessionToken})
	if status != 200 || !strings.Contains(string(body), `"kind":"session"`) {
		t.Fatalf("session whoami: %d %s", status, body)
	}
}

func TestRefusalsAreProblemsWithChallenges(t *testing.T) {
	t.Parallel()
	e := newEdges(t, 1)[0]
	collector := e.c.CollectorKey(t, e.c.ServerID)
	cases := []struct {
		name   string
		header map[string]string
		status int
		code   string
	}{
		{"no credential", nil, 401, "unauthenticated"},
		{"garbage key", map[string]string{"Authorization": "Bearer gmk_acct_live_nope"}, 401, "invalid_credentials"},
		{"collector key off the ingest route", map[string]string{"Authorization": "Bearer " + collector}, 403, "insufficient_scope"},
	}
	for _, tc := range cases {
		status, h, body := call(t, e.URL+"/api/v1/whoami", tc.header)
		var doc map[string]any
		_ = json.Unmarshal(body, &doc)
		if status != tc.status || doc["code"] != tc.code || h.Get("Content-Type") != "application/problem+json" {
			t.Errorf("%s: %d %q %s", tc.name, status, h.Get("Content-Type"), body)
		}
		if status == 401 && !strings.HasPrefix(h.Get("WWW-Authenticate"), "Bearer") {
			t.Errorf("%s: no WWW-Authenticate", tc.name)
		}
		if h.Get("X-Frame-Options") != "DENY" {
			t.Errorf("%s: security headers missing on the refusal", tc.name)
		}
	}
	// Headers past Caddy's limit are refused before any handler runs.
	status, _, _ := call(t, e.URL+"/api/v1/whoami", map[string]string{"Authorization": "Bearer " + strings.Repeat("x", 40<<10)})
	if status != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("oversized header: %d", status)
	}
}

func TestRevokedKeyStopsAtEveryInstanceWithinOneSecond(t *testing.T) {
	t.Parallel()
	edges := newEdges(t, 2)
	c := edges[0].c
	key := c.AccountKey(t, "read")
	auth := map[string]string{"Authorization": "Bearer " + key}
	for _, e := range edges {
		if status, _, body := call(t, e.URL+"/api/v1/whoami", auth); status != 200 {
			t.Fatalf("before revocation: %d %s", status, body)
		}
	}
	c.Revoke(t, key)
	deadline := time.Now().Add(time.Second)
	for i, e := range edges {
		for {
			status, _, _ := call(t, e.URL+"/api/v1/whoami", auth)
			if status == 401 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("instance %d still accepts the revoked key after 1 s (%d)", i, status)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// At the most verbose log level, neither the logs nor the answers of a
// valid, a corrupted, a truncated and a revoked key hold its secret part,
// nor of a key pasted into a path or a query.
func TestNoKeyMaterialInLogsOrBodies(t *testing.T) {
	t.Parallel()
	env, c, _ := testenv.EdgeEnv(t)
	env["GUARDIAN_LOG_LEVEL"] = "DEBUG"
	e := edge{testenv.StartStack(t, env), c}
	key := e.c.AccountKey(t, "read")
	body := key[len("gmk_acct_live_") : len(key)-5]
	var bodies []string
	for _, k := range []string{key, testenv.Corrupt(key), "gmk_acct_live_" + body} {
		_, _, b := call(t, e.URL+"/api/v1/whoami", map[string]string{"Authorization": "Bearer " + k})
		bodies = append(bodies, string(b))
	}
	// Keys pasted where they do not belong: in the path and in the query,
	// of a route that exists and of one that does not, signed in or not.
	// Spellings the Caddyfile rewrites (Caddy's rewrite handler logs the
	// URI it made at DEBUG) and a static file's path (the file server
	// logs it) too.
	for _, path := range []string{"/api/v1/whoami/" + key, "/api/v1/whoami?key=" + key, "/nowhere/" + key, "/login?next=" + key, "/settings/keys?k=" + key,
		"//api/v1/whoami?key=" + key, "//healthz?key=" + key, "/API/V1/SERVERS?key=" + key, "/static/" + key} {
		_, _, b := call(t, e.URL+path, nil)
		bodies = append(bodies, string(b))
		_, _, b = call(t, e.URL+path, map[string]string{"Authorization": "Bearer " + key})
		bodies = append(bodies, string(b))
	}
	e.c.Revoke(t, key)
	time.Sleep(100 * time.Millisecond)
	_, _, b := call(t, e.URL+"/api/v1/whoami", map[string]string{"Authorization": "Bearer " + key})
	bodies = append(bodies, string(b))
	log := e.Log()
	if !strings.Contains(log, `"level":"debug"`) {
		t.Fatal("no debug line in the log: the test would prove nothing of the debug level")
	}
	for _, text := range append(bodies, log) {
		for _, line := range strings.Split(text, "\n") {
			if strings.Contains(line, body[:16]) {
				t.Errorf("key material leaked:\n%s", line)
			}
		}
	}
}

// A path that only starts like an API collection (/api/v1/keysX) is no
// route: the edge answers 404 itself, and no function, scope or audit row
// of that collection is involved.
func TestLookalikePathsAreNoRoute(t *testing.T) {
	t.Parallel()
	env, c, pg := testenv.EdgeEnv(t)
	e := testenv.StartStack(t, env)
	_, token := c.Session(t)
	session := map[string]string{"Cookie": "guardian_token=" + token}
	audited := func(path string) int {
		t.Helper()
		var n int
		if err := pg.Owner.QueryRow(t.Context(), "SELECT count(*) FROM api_audit_log WHERE path = $1", path).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	for _, fam := range []string{"keys", "servers", "sessions", "mfa"} {
		for _, path := range []string{"/api/v1/" + fam + "X", "/api/v1/" + fam + ".json", "/API/V1/" + strings.ToUpper(fam) + "x/1"} {
			status, h, body := call(t, e.URL+path, session)
			var doc map[string]any
			_ = json.Unmarshal(body, &doc)
			if status != 404 || doc["code"] != "not_found" || h.Get("Content-Type") != "application/problem+json" {
				t.Errorf("%s: %d %s", path, status, body)
			}
			if n := audited(path); n != 0 {
				t.Errorf("%s: %d audit rows, as if it were a %s call", path, n, fam)
			}
		}
	}
	// The collections themselves are still routed, and audited.
	for _, path := range []string{"/api/v1/keys", "/api/v1/servers", "/api/v1/sessions"} {
		if status, _, body := call(t, e.URL+path, session); status != 200 {
			t.Errorf("%s: %d %s", path, status, body)
		}
		if n := audited(path); n != 1 {
			t.Errorf("%s: %d audit rows", path, n)
		}
	}
	// A static file's path with a trailing slash is no file either: 404,
	// not a redirect to the file (docs/api.md: never redirected).
	if status, _, body := call(t, e.URL+"/static/app.css", nil); status != 200 {
		t.Errorf("/static/app.css: %d %s", status, body)
	}
	if status, h, body := call(t, e.URL+"/static/app.css/", nil); status != 404 || h.Get("Content-Type") != "application/problem+json" {
		t.Errorf("/static/app.css/: %d %q %s, want a 404 problem", status, h.Get("Content-Type"), body)
	}
}
