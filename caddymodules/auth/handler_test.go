package auth

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/glassmkr/guardian/shared/identity"
	"github.com/glassmkr/guardian/shared/problem"
	"github.com/glassmkr/guardian/shared/session"
	"github.com/glassmkr/guardian/shared/testenv"
)

func asHandlerError(err error, he *caddyhttp.HandlerError) bool { return errors.As(err, he) }
func asProblem(err error, p **problem.Problem) bool             { return errors.As(err, p) }

func TestBadInputs(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	a := w.authenticator(t)
	revoked := w.c.AccountKey(t, "admin")
	w.c.Revoke(t, revoked)
	body := w.read[len("gmk_acct_live_") : len(w.read)-5]
	unknown := mustGenerate(t)
	rsaToken := strings.Replace(w.token, "eyJhbGciOiJIUzI1NiIs", "eyJhbGciOiJSUzI1NiIs", 1)

	readRoute := handler(a, Handler{})
	writeRoute := handler(a, Handler{Scope: "write", MethodScopes: map[string]string{"DELETE": "admin"}})
	ingest := handler(a, Handler{Allow: []string{AllowCollector}})

	cases := []struct {
		name   string
		h      *Handler
		req    *http.Request
		status int
		code   string
	}{
		{"no credential at all", readRoute, httptest.NewRequest("GET", "/", nil), 401, "unauthenticated"},
		{"empty Authorization header value", readRoute, withHeader("Authorization", " "), 401, "invalid_credentials"},
		{"Bearer with nothing after it", readRoute, withHeader("Authorization", "Bearer "), 401, "invalid_credentials"},
		{"Basic scheme", readRoute, withHeader("Authorization", "Basic dXNlcjpwYXNz"), 401, "invalid_credentials"},
		{"wrong prefix", readRoute, bearer("GET", "/", "gmk_acct_test_"+w.read[len("gmk_acct_live_"):]), 401, "invalid_credentials"},
		{"42-character body", readRoute, bearer("GET", "/", "gmk_acct_live_"+body[1:]+w.read[len(w.read)-5:]), 401, "invalid_credentials"},
		{"44-character body", readRoute, bearer("GET", "/", "gmk_acct_live_0"+body+w.read[len(w.read)-5:]), 401, "invalid_credentials"},
		{"non-base62 byte", readRoute, bearer("GET", "/", "gmk_acct_live_"+body[:5]+"+"+body[6:]+w.read[len(w.read)-5:]), 401, "invalid_credentials"},
		{"checksum off by one character", readRoute, bearer("GET", "/", offByOne(w.read)), 401, "invalid_credentials"},
		{"valid format but unknown key", readRoute, bearer("GET", "/", unknown), 401, "invalid_credentials"},
		{"revoked key", readRoute, bearer("GET", "/", revoked), 401, "invalid_credentials"},
		{"oversized bearer token", readRoute, bearer("GET", "/", strings.Repeat("a", 64<<10)), 401, "invalid_credentials"},
		{"read key on a write route", writeRoute, bearer("POST", "/", w.read), 403, "insufficient_scope"},
		{"write key on an admin method", writeRoute, bearer("DELETE", "/", w.write), 403, "insufficient_scope"},
		{"admin key on an admin method", writeRoute, bearer("DELETE", "/", w.admin), 200, ""},
		{"collector key off the ingest route", readRoute, bearer("GET", "/", w.collector), 403, "insufficient_scope"},
		{"account key on the ingest route", ingest, bearer("POST", "/", w.admin), 403, "insufficient_scope"},
		{"collector key on the ingest route", ingest, bearer("POST", "/", w.collector), 200, ""},
		{"session cookie", readRoute, withCookie("GET", "/", w.token), 200, ""},
		{"tampered session token", readRoute, withCookie("GET", "/", w.token[:len(w.token)-2]+"xx"), 401, "invalid_credentials"},
		{"session token with RS256 in its header", readRoute, withCookie("GET", "/", rsaToken), 401, "invalid_credentials"},
		{"session token signed with another secret", readRoute, withCookie("GET", "/", otherSecretToken(t, w)), 401, "invalid_credentials"},
		{"cross-site POST with the cookie", writeRoute, fromEvil(withCookie("POST", "/", w.token)), 403, "cross_site"},
		{"same-origin POST with the cookie", writeRoute, sameOrigin(withCookie("POST", "/", w.token)), 200, ""},
		{"programmatic POST with a key and no Origin", writeRoute, fetchLike(bearer("POST", "/", w.write)), 200, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := do(t, tc.h, tc.req)
			if got.status != tc.status || got.code != tc.code {
				t.Fatalf("got %d %q, want %d %q", got.status, got.code, tc.status, tc.code)
			}
			if tc.status == 401 && !strings.HasPrefix(got.header.Get("WWW-Authenticate"), `Bearer realm="guardian"`) {
				t.Errorf("401 without WWW-Authenticate: %v", got.header)
			}
			if tc.status == 200 && got.id == nil {
				t.Error("no identity passed on")
			}
		})
	}
}

func withHeader(k, v string) *http.Request {
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set(k, v)
	return r
}

func fromEvil(r *http.Request) *http.Request {
	r.Header.Set("Origin", "https://evil.example")
	r.Header.Set("Sec-Fetch-Site", "cross-site")
	return r
}

func sameOrigin(r *http.Request) *http.Request {
	r.Header.Set("Origin", "http://"+r.Host)
	r.Header.Set("Sec-Fetch-Site", "same-origin")
	return r
}

// fetchLike makes r look like Node's fetch: sec-fetch-mode but no Origin.
func fetchLike(r *http.Request) *http.Request {
	r.Header.Set("Sec-Fetch-Mode", "cors")
	return r
}

func offByOne(key string) string {
	last := key[len(key)-1]
	if last == 'a' {
		return key[:len(key)-1] + "b"
	}
	return key[:len(key)-1] + "a"
}

func otherSecretToken(t *testing.T, w *world) string {
	tok, err := session.Issue([]byte(strings.Repeat("o", 32)), w.sessionID, w.user, w.customer, time.Now(), time.Now().Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

func mustGenerate(t *testing.T) string {
	k, err := generateAccount()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func TestIdentityCarriesScopeAndBinding(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	a := w.authenticator(t)
	got := do(t, handler(a, Handler{Allow: []string{AllowCollector}}), bearer("POST", "/", w.collector))
	if got.id == nil || got.id.Kind != identity.KindCollector || got.id.ServerID != w.server || got.id.CustomerID != w.customer || got.id.Scope != "" {
		t.Fatalf("collector identity %+v", got.id)
	}
	got = do(t, handler(a, Handler{}), withCookie("GET", "/", w.token))
	if got.id == nil || got.id.Kind != identity.KindSession || got.id.UserID != w.user || got.id.SessionID != w.sessionID || got.id.Scope != "admin" {
		t.Fatalf("session identity %+v", got.id)
	}
}

func TestOptionalRouteAdmitsAnonymousButNotBadCredentials(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	h := handler(w.authenticator(t), Handler{Optional: true})
	if got := do(t, h, httptest.NewRequest("GET", "/", nil)); got.status != 200 || got.id != nil {
		t.Fatalf("anonymous: %+v", got)
	}
	if got := do(t, h, bearer("GET", "/", offByOne(w.read))); got.status != 401 {
		t.Fatalf("bad key on optional route: %+v", got)
	}
}

func TestIgnoreInvalidTreatsABadCredentialAsNone(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	h := handler(w.authenticator(t), Handler{Optional: true, IgnoreInvalid: true})
	got := do(t, h, withCookie("POST", "/", w.token[:len(w.token)-3]+"abc"))
	if got.status != 200 || got.id != nil || !strings.Contains(got.header.Get("Set-Cookie"), "Max-Age=0") {
		t.Fatalf("stale cookie on a lenient route: %+v", got)
	}
	if got := do(t, h, withCookie("GET", "/", w.token)); got.id == nil {
		t.Fatal("valid cookie not recognised on a lenient route")
	}
}

func TestRevocationDropsTheCachedEntryAtOnce(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	a := w.authenticator(t)
	b := w.authenticator(t) // a second edge instance
	h, h2 := handler(a, Handler{}), handler(b, Handler{})
	for _, hh := range []*Handler{h, h2} {
		if got := do(t, hh, bearer("GET", "/", w.read)); got.status != 200 {
			t.Fatalf("before revocation: %+v", got)
		}
		if got := do(t, hh, withCookie("GET", "/", w.token)); got.status != 200 {
			t.Fatalf("session before revocation: %+v", got)
		}
	}
	ctx := context.Background()
	if _, err := w.pg.Owner.Exec(ctx, "UPDATE api_keys SET revoked_at = now() WHERE customer_id = $1 AND scope = 'read'", w.customer); err != nil {
		t.Fatal(err)
	}
	if _, err := w.pg.Owner.Exec(ctx, "UPDATE sessions SET revoked_at = now() WHERE id = $1", w.sessionID); err != nil {
		t.Fatal(err)
	}
	// The promise is one second at every instance.
	deadline := time.Now().Add(time.Second)
	for _, hh := range []*Handler{h, h2} {
		for do(t, hh, bearer("GET", "/", w.read)).status != 401 || do(t, hh, withCookie("GET", "/", w.token)).status != 401 {
			if time.Now().After(deadline) {
				t.Fatal("revoked key or session still accepted after 1 s")
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	if got := do(t, h, withCookie("GET", "/", w.token)); got.header.Get("Set-Cookie") == "" || !strings.Contains(got.header.Get("Set-Cookie"), "Max-Age=0") {
		t.Errorf("revoked session cookie not cleared: %v", got.header)
	}
}

func TestWithoutListenerEntriesAreRereadAfterOneSecond(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	a := w.authenticator(t)
	h := handler(a, Handler{})
	if got := do(t, h, bearer("GET", "/", w.read)); got.status != 200 {
		t.Fatal(got)
	}
	clock := time.Now()
	a.now = func() time.Time { return clock }
	a.listening.Store(false) // as if the LISTEN connection had dropped
	if _, err := w.db.Exec(context.Background(), "ALTER TABLE api_keys DISABLE TRIGGER api_keys_auth_notify"); err != nil {
		t.Fatal(err)
	}
	if _, err := w.db.Exec(context.Background(), "UPDATE api_keys SET revoked_at = now() WHERE scope = 'read'"); err != nil {
		t.Fatal(err)
	}
	if got := do(t, h, bearer("GET", "/", w.read)); got.status != 200 {
		t.Fatalf("within the staleness bound the cached entry serves: %+v", got)
	}
	clock = clock.Add(staleAfter + time.Millisecond)
	if got := do(t, h, bearer("GET", "/", w.read)); got.status != 401 {
		t.Fatalf("stale entry not re-read: %+v", got)
	}
}

func TestMalformedKeysNeverReachTheDatabase(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	a := w.authenticator(t)
	a.db.Close() // any query now fails: a malformed key must not try one
	h := handler(a, Handler{})
	for _, key := range []string{"", "gmk_acct_live_x", offByOne(w.read), strings.Repeat("z", 100)} {
		if got := do(t, h, bearer("GET", "/", key)); got.status != 401 || got.code != "invalid_credentials" {
			t.Errorf("%q: %+v", key, got)
		}
	}
	// A well-formed key does need the store, and says it is unavailable.
	if got := do(t, h, bearer("GET", "/", mustGenerate(t))); got.status != 503 || got.code != "auth_unavailable" {
		t.Errorf("well-formed key with the store closed: %+v", got)
	}
}

// Requests of one key within a touch interval share one write of
// last_used_at: a statement trigger counts the writes.
func TestLastUsedIsWrittenInBatches(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	ctx := context.Background()
	for _, sql := range []string{
		"CREATE TABLE touch_writes (at timestamptz NOT NULL DEFAULT now())",
		`CREATE FUNCTION count_touch_write() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS
			$$ BEGIN INSERT INTO touch_writes DEFAULT VALUES; RETURN NULL; END $$`,
		"CREATE TRIGGER count_touch_writes AFTER UPDATE OF last_used_at ON api_keys FOR EACH STATEMENT EXECUTE FUNCTION count_touch_write()",
	} {
		if _, err := w.db.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	a := w.authenticator(t)
	h := handler(a, Handler{})
	const requests = 20
	for range requests {
		do(t, h, bearer("GET", "/", w.read))
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		var used *time.Time
		if err := w.db.QueryRow(ctx, "SELECT last_used_at FROM api_keys WHERE scope = 'read' AND customer_id = $1", w.customer).Scan(&used); err != nil {
			t.Fatal(err)
		}
		if used != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("last_used_at never written")
		}
		time.Sleep(20 * time.Millisecond)
	}
	var writes int
	if err := w.db.QueryRow(ctx, "SELECT count(*) FROM touch_writes").Scan(&writes); err != nil {
		t.Fatal(err)
	}
	// The requests take a few ms in all, against a 50 ms interval; one
	// write per request would be 20.
	if writes < 1 || writes > requests/4 {
		t.Fatalf("%d writes of last_used_at for %d requests of one key, want a few at most", writes, requests)
	}
}

// The last-used writer never waits for a row another transaction holds
// (a revocation of many rows, locking them in its own order): it skips
// that row and writes the others, so the two cannot deadlock.
func TestLastUsedSkipsLockedRows(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, w.pg.AppDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var readID, writeID string
	for key, id := range map[string]*string{"read": &readID, "write": &writeID} {
		if err := w.db.QueryRow(ctx, "SELECT id::text FROM api_keys WHERE scope = $1 AND customer_id = $2", key, w.customer).Scan(id); err != nil {
			t.Fatal(err)
		}
	}
	held, err := w.db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Rollback(ctx)
	if _, err := held.Exec(ctx, "SELECT 1 FROM api_keys WHERE id = $1 FOR UPDATE", readID); err != nil {
		t.Fatal(err)
	}
	tw := newToucher(pool, time.Hour, zap.NewNop())
	at := time.Now().UTC().Truncate(time.Microsecond)
	tw.key(readID, at)
	tw.key(writeID, at)
	tw.flush(ctx) // returns while the read key's row is still held
	var used *time.Time
	if err := w.db.QueryRow(ctx, "SELECT last_used_at FROM api_keys WHERE id = $1", writeID).Scan(&used); err != nil {
		t.Fatal(err)
	}
	if used == nil || !used.Equal(at) {
		t.Fatalf("the unlocked key's last use: %v, want %v (the writer waited for the locked row)", used, at)
	}
}

func TestUnmarshalCaddyfile(t *testing.T) {
	cases := []struct {
		name, in string
		wantErr  bool
		check    func(Handler) bool
	}{
		{"defaults", "guardian_auth", false, func(h Handler) bool { return len(h.Allow) == 0 && h.Scope == "" }},
		{"full block", "guardian_auth {\n allow session key\n scope write\n scope delete admin\n optional\n trusted_origin https://app.example.com\n}", false, func(h Handler) bool {
			return len(h.Allow) == 2 && h.Scope == "write" && h.MethodScopes["DELETE"] == "admin" && h.Optional && len(h.TrustedOrigins) == 1
		}},
		{"unknown kind", "guardian_auth {\n allow robots\n}", true, nil},
		{"unknown scope", "guardian_auth {\n scope root\n}", true, nil},
		{"unknown method scope", "guardian_auth {\n scope POST root\n}", true, nil},
		{"bad origin", "guardian_auth {\n trusted_origin evil.example/path\n}", true, nil},
		{"unknown setting", "guardian_auth {\n cache 5m\n}", true, nil},
		{"inline argument", "guardian_auth on", true, nil},
		{"lenient optional", "guardian_auth {\n optional ignore_invalid\n}", false, func(h Handler) bool { return h.Optional && h.IgnoreInvalid }},
		{"optional with junk", "guardian_auth {\n optional always\n}", true, nil},
		{"misspelt method", "guardian_auth {\n scope DELTE admin\n}", true, nil},
		{"login redirect", "guardian_auth {\n login_redirect /login\n}", false, func(h Handler) bool { return h.LoginRedirect == "/login" }},
		{"login redirect to another site", "guardian_auth {\n login_redirect //evil.example/login\n}", true, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var h Handler
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.in))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v", err)
			}
			if tc.check != nil && !tc.check(h) {
				t.Errorf("parsed %+v", h)
			}
		})
	}
}

// A JSON config, which skips the Caddyfile's parser, is held to the same
// rules by Validate.
func TestValidateJSONConfig(t *testing.T) {
	for name, h := range map[string]Handler{
		"method scope in lower case": {MethodScopes: map[string]string{"delete": "admin"}},
		"redirect with a scheme":     {LoginRedirect: "https://evil.example/login"},
		"redirect without a slash":   {LoginRedirect: "login"},
		"ignore_invalid alone":       {IgnoreInvalid: true},
	} {
		if err := h.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	ok := Handler{MethodScopes: map[string]string{"DELETE": "admin"}, LoginRedirect: "/login", Optional: true, IgnoreInvalid: true}
	if err := ok.Validate(); err != nil {
		t.Errorf("a valid config refused: %v", err)
	}
}

func TestGraceWindowAndExpiryEndAKeyOnTime(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	a := w.authenticator(t)
	h := handler(a, Handler{})
	ctx := context.Background()
	if _, err := w.db.Exec(ctx, "UPDATE api_keys SET revoked_at = now() + interval '1 hour' WHERE scope = 'read'"); err != nil {
		t.Fatal(err)
	}
	if _, err := w.db.Exec(ctx, "UPDATE api_keys SET expires_at = now() + interval '2 hours' WHERE scope = 'write'"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond) // let the notifications land
	for _, key := range []string{w.read, w.write} {
		if got := do(t, h, bearer("GET", "/", key)); got.status != 200 {
			t.Fatalf("inside its window: %+v", got)
		}
	}
	later := time.Now().Add(90 * time.Minute)
	a.now = func() time.Time { return later }
	if got := do(t, h, bearer("GET", "/", w.read)); got.status != 401 {
		t.Fatalf("grace window over, key still works: %+v", got)
	}
	if got := do(t, h, bearer("GET", "/", w.write)); got.status != 200 {
		t.Fatalf("key refused before its expiry: %+v", got)
	}
	later = later.Add(time.Hour)
	if got := do(t, h, bearer("GET", "/", w.write)); got.status != 401 {
		t.Fatalf("expired key still works: %+v", got)
	}
}

// A client that goes away while its key is looked up does not make the
// edge log that the credential store is down.
func TestAbandonedLookupIsNotAStoreError(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	a, h, logs := w.observed(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if got := do(t, h, bearer("GET", "/", w.read).WithContext(ctx)); got.status == http.StatusOK {
		t.Fatalf("an abandoned lookup was admitted: %+v", got)
	}
	if n := logs.FilterMessageSnippet("credential store unavailable").Len(); n != 0 {
		t.Errorf("%d store errors logged for a request whose client went away", n)
	}
	// Nor that it serves a stale cached key because of the store: make
	// the cached key stale, then look it up from an abandoned request.
	if got := do(t, h, bearer("GET", "/", w.admin)); got.status != http.StatusOK {
		t.Fatal(got)
	}
	a.now = func() time.Time { return time.Now().Add(time.Hour) }
	a.listening.Store(false)
	do(t, h, bearer("GET", "/", w.admin).WithContext(ctx))
	if n := logs.FilterMessageSnippet("serving cached credentials").Len(); n != 0 {
		t.Errorf("%d stale-cache warnings for a request whose client went away", n)
	}
	// A real failure of the store is still logged. (Serving stale
	// credentials through an outage: TestStaleCredentialsServeThroughAnOutage.)
	a.db.Close()
	for range 5 {
		do(t, h, bearer("GET", "/", w.write))
	}
	// Once, not once per request: an outage would otherwise fill the log.
	if n := logs.FilterMessageSnippet("credential store unavailable").Len(); n != 1 {
		t.Errorf("a store outage logged %d times over 5 refusals, want once", n)
	}
	// A closed pool is the edge's own failure, not PostgreSQL's: the
	// stale key is not served.
	if got := do(t, h, bearer("GET", "/", w.admin)); got.status != http.StatusServiceUnavailable {
		t.Errorf("a stale key with the edge's pool closed: %+v", got)
	}
}

// A session cookie from an address the limiter found out of tokens is not
// looked up, so it was never checked: it must survive (a colleague behind
// the same address as someone guessing keys stays signed in), and the
// answer is the limiter's, not a sign-in page.
func TestUncheckedSessionKeepsItsCookie(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	a := w.authenticator(t)
	blocked := func(r *http.Request) *http.Request {
		return r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{varIPBlocked: true}))
	}
	page := func() *http.Request {
		r := withCookie("GET", "/settings/keys", w.token)
		r.Header.Set("Accept", "text/html")
		return blocked(r)
	}
	for _, tc := range []struct {
		name string
		h    Handler
		want int
	}{
		{"api", Handler{Allow: []string{AllowSession}}, http.StatusUnauthorized},
		{"page", Handler{Allow: []string{AllowSession}, LoginRedirect: "/login"}, http.StatusUnauthorized},
		{"optional", Handler{Allow: []string{AllowSession}, Optional: true, IgnoreInvalid: true}, http.StatusOK},
	} {
		h := handler(a, tc.h)
		got := do(t, h, page())
		if got.status != tc.want || got.header.Get("Location") != "" {
			t.Errorf("%s: %d %q, want %d and no redirect", tc.name, got.status, got.header.Get("Location"), tc.want)
		}
		if c := got.header.Get("Set-Cookie"); c != "" {
			t.Errorf("%s: an unchecked session's cookie was touched: %s", tc.name, c)
		}
		if tc.want != http.StatusOK && got.failure != "ip_blocked" {
			t.Errorf("%s: failure %q, want ip_blocked (the limiter answers it with 429)", tc.name, got.failure)
		}
		if tc.want == http.StatusOK && got.id != nil {
			t.Errorf("%s: an unchecked session was admitted: %+v", tc.name, got.id)
		}
	}
	// Looked up, the same cookie is valid.
	if got := do(t, handler(a, Handler{Allow: []string{AllowSession}}), withCookie("GET", "/", w.token)); got.status != http.StatusOK {
		t.Fatalf("the session itself: %+v", got)
	}
}

// session_scope sets what a session needs, whatever the method, while
// scope still binds keys: the audit log's route lets every signed-in user
// read it (a member's session has the write scope) and only admin keys
// among programmatic ones.
func TestSessionScopeBindsSessionsAlone(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	member := testenv.NewCustomer(t, w.db, pepper, secret)
	if _, err := w.db.Exec(context.Background(), "UPDATE users SET role = 'member' WHERE id = $1", member.UserID); err != nil {
		t.Fatal(err)
	}
	_, memberToken := member.Session(t)
	a := w.authenticator(t)
	audit := handler(a, Handler{Allow: []string{AllowSession, AllowKey}, Scope: "admin", SessionScope: "read"})
	adminOnly := handler(a, Handler{Allow: []string{AllowSession, AllowKey}, Scope: "admin"})
	for _, tc := range []struct {
		name   string
		h      *Handler
		req    *http.Request
		status int
	}{
		{"a member's session reads the audit log", audit, withCookie("GET", "/", memberToken), 200},
		{"an admin's session too", audit, withCookie("GET", "/", w.token), 200},
		{"a read key does not", audit, bearer("GET", "/", w.read), 403},
		{"nor a write key", audit, bearer("GET", "/", w.write), 403},
		{"an admin key does", audit, bearer("GET", "/", w.admin), 200},
		{"without session_scope a member's session is refused", adminOnly, withCookie("GET", "/", memberToken), 403},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := do(t, tc.h, tc.req); got.status != tc.status {
				t.Fatalf("%d %s, want %d", got.status, got.code, tc.status)
			}
		})
	}
	bad := &Handler{SessionScope: "owner"}
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "session_scope") {
		t.Fatalf("session_scope owner: %v", err)
	}
}

// While last-used writes keep failing, the times waiting for the next try
// are bounded: past the bound a newly used credential's time is dropped,
// and those already held still take newer times.
func TestLastUsedTimesAreBoundedWhileWritesFail(t *testing.T) {
	t.Parallel()
	pool, err := pgxpool.New(context.Background(), "postgres://nobody@127.0.0.1:1/none?connect_timeout=1")
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	tw := newToucher(pool, time.Hour, zap.NewNop())
	tw.max = 3
	t0 := time.Now()
	for i := range 5 {
		tw.key(fmt.Sprintf("k%d", i), t0)
		tw.session(fmt.Sprintf("s%d", i), t0)
	}
	tw.key("k0", t0.Add(time.Second))
	tw.flush(context.Background()) // fails: every time is kept for the next try
	tw.mu.Lock()
	defer tw.mu.Unlock()
	if len(tw.keys) != 3 || len(tw.sessions) != 3 {
		t.Fatalf("%d keys and %d sessions held past a bound of 3", len(tw.keys), len(tw.sessions))
	}
	if !tw.keys["k0"].Equal(t0.Add(time.Second)) {
		t.Fatalf("a held key's newer time was not taken: %v", tw.keys["k0"])
	}
}

// Two session cookies (one set beside the user's by another host under
// the cookie's parent domain, with a longer path so that it is sent
// first) give no session: the request would otherwise act in the account
// of whoever set the first. A browser (net/http/cookiejar, RFC 6265)
// given the answer's Set-Cookie headers keeps neither, so the planted one
// is not sent alone next time.
func TestTwoSessionCookiesGiveNoSession(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	a := w.authenticator(t)
	_, attackers := testenv.NewCustomer(t, w.pg.Owner, pepper, secret).Session(t)
	for _, tc := range []struct {
		name, method, path, planted string
		h                           Handler
		status                      int
		location                    string
	}{
		{"api", "POST", "/api/v1/servers", "/api/", Handler{Allow: []string{AllowSession}}, http.StatusUnauthorized, ""},
		{"page", "GET", "/settings/keys", "/settings", Handler{Allow: []string{AllowSession}, LoginRedirect: "/login"}, http.StatusSeeOther, "/login"},
		{"optional", "GET", "/login", "/login", Handler{Allow: []string{AllowSession}, Optional: true, IgnoreInvalid: true}, http.StatusOK, ""},
	} {
		jar, err := cookiejar.New(nil)
		if err != nil {
			t.Fatal(err)
		}
		app, _ := url.Parse("https://app.example.com" + tc.path)
		evil, _ := url.Parse("https://evil.example.com/")
		jar.SetCookies(app, []*http.Cookie{{Name: session.CookieName, Value: w.token, Domain: "example.com", Path: "/", Secure: true, HttpOnly: true}})
		jar.SetCookies(evil, []*http.Cookie{{Name: session.CookieName, Value: attackers, Domain: "example.com", Path: tc.planted, Secure: true}})
		sent := jar.Cookies(app)
		if len(sent) != 2 || sent[0].Value != attackers {
			t.Fatalf("%s: the browser sends %v, want the planted cookie first, then the user's", tc.name, sent)
		}
		r := httptest.NewRequest(tc.method, app.String(), nil)
		for _, c := range sent {
			r.AddCookie(c)
		}
		if tc.name == "page" {
			r.Header.Set("Accept", "text/html")
		}
		h := &tc.h
		h.init(a, ".example.com")
		got := do(t, h, r)
		if got.status != tc.status || got.header.Get("Location") != tc.location || got.id != nil {
			t.Errorf("%s: %d %q, identity %+v; want %d %q and no identity", tc.name, got.status, got.header.Get("Location"), got.id, tc.status, tc.location)
		}
		if tc.status == http.StatusUnauthorized && got.code != "invalid_credentials" {
			t.Errorf("%s: code %q, want invalid_credentials", tc.name, got.code)
		}
		if tc.status != http.StatusOK && got.failure != "ambiguous_session" {
			t.Errorf("%s: failure %q, want ambiguous_session", tc.name, got.failure)
		}
		jar.SetCookies(app, (&http.Response{Header: got.header}).Cookies())
		if left := jar.Cookies(app); len(left) != 0 {
			t.Errorf("%s: the browser still holds %v after the answer", tc.name, left)
		}
	}
	// Either cookie alone is a session.
	for _, token := range []string{w.token, attackers} {
		if got := do(t, handler(a, Handler{Allow: []string{AllowSession}}), withCookie("GET", "/", token)); got.status != http.StatusOK || got.id == nil {
			t.Fatalf("one cookie: %+v", got)
		}
	}
}

func TestCookiePaths(t *testing.T) {
	for p, want := range map[string]string{
		"/":                    "/",
		"":                     "/",
		"/login":               "/ /login",
		"/api/v1/servers":      "/ /api /api/ /api/v1 /api/v1/ /api/v1/servers",
		"/settings/":           "/ /settings /settings/",
		"/a/b/c/d/e/f/g/h/i/j": "/ /a /a/ /a/b /a/b/ /a/b/c /a/b/c/ /a/b/c/d /a/b/c/d/ /a/b/c/d/e /a/b/c/d/e/ /a/b/c/d/e/f /a/b/c/d/e/f/ /a/b/c/d/e/f/g /a/b/c/d/e/f/g/ /a/b/c/d/e/f/g/h/i/j",
	} {
		if got := strings.Join(cookiePaths(p), " "); got != want {
			t.Errorf("cookiePaths(%q) = %q, want %q", p, got, want)
		}
	}
}
