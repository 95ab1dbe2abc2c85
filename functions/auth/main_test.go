package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/glassmkr/guardian/shared/migrate"
	"github.com/glassmkr/guardian/shared/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

const goodPassword = "correct-horse-staple-9"

type site struct {
	*testenv.Stack
	c         *testenv.Customer
	pg        *testenv.PG
	email     string
	origin    string // the public URL (WebAuthn's origin)
	mfaSecret string
}

// newSite starts the stack; tweak, if given, changes its settings first.
func newSite(t *testing.T, tweak ...func(env map[string]string)) *site {
	t.Helper()
	env, c, pg := testenv.EdgeEnv(t)
	for _, f := range tweak {
		f(env)
	}
	s := &site{c: c, pg: pg, mfaSecret: env["GUARDIAN_MFA_SECRET"]}
	s.email = c.Password(t, goodPassword)
	// WebAuthn needs a domain name: the public URL is localhost, on a port
	// chosen before Caddy starts.
	port := testenv.FreePort(t)
	env["GUARDIAN_HTTP_PORT"] = strconv.Itoa(port)
	s.origin = fmt.Sprintf("http://localhost:%d", port)
	env["GUARDIAN_URL"] = s.origin
	s.Stack = testenv.StartStack(t, env)
	return s
}

type answer struct {
	status int
	header http.Header
	doc    map[string]any
	cookie *http.Cookie
}

func (s *site) post(t *testing.T, path, body string, header map[string]string) answer {
	t.Helper()
	a, err := s.send(path, body, header)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// send is post for any goroutine: it returns the error it cannot answer.
func (s *site) send(path, body string, header map[string]string) (answer, error) {
	req, _ := http.NewRequest("POST", s.URL+path, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	for k, v := range header {
		req.Header.Set(k, v)
	}
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := client.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode, header: resp.Header}
	_ = json.Unmarshal(b, &a.doc)
	for _, c := range resp.Cookies() {
		if c.Name == "guardian_token" {
			a.cookie = c
		}
	}
	return a, nil
}

func login(email, pw string) string {
	b, _ := json.Marshal(map[string]string{"email": email, "password": pw})
	return string(b)
}

func (s *site) whoami(t *testing.T, token string) int {
	t.Helper()
	req, _ := http.NewRequest("GET", s.URL+"/api/v1/whoami", nil)
	req.AddCookie(&http.Cookie{Name: "guardian_token", Value: token})
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

func TestSignInGivesASessionCookieWithTheSpecsAttributes(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	a := s.post(t, "/auth/login", login(strings.ToUpper(s.email), goodPassword), nil)
	if a.status != 204 || a.cookie == nil {
		t.Fatalf("login: %d %v", a.status, a.doc)
	}
	raw := a.header.Get("Set-Cookie")
	for _, want := range []string{"HttpOnly", "Secure", "SameSite=Lax", "Path=/", "Max-Age=604800"} {
		if !strings.Contains(raw, want) {
			t.Errorf("cookie %q lacks %s", raw, want)
		}
	}
	if strings.Contains(raw, "Domain=") {
		t.Errorf("cookie has a Domain on localhost: %q", raw)
	}
	if s.whoami(t, a.cookie.Value) != 200 {
		t.Fatal("the new session does not work")
	}
	// A form sign-in redirects to the dashboard.
	form := url.Values{"email": {s.email}, "password": {goodPassword}}.Encode()
	if a := s.post(t, "/auth/login", form, map[string]string{"Content-Type": "application/x-www-form-urlencoded"}); a.status != 303 || a.header.Get("Location") != "/settings/keys" || a.cookie == nil {
		t.Fatalf("form login: %d %v", a.status, a.header)
	}
}

func TestUnknownEmailAndWrongPasswordLookTheSame(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	wrong := s.post(t, "/auth/login", login(s.email, goodPassword+"x"), nil)
	unknown := s.post(t, "/auth/login", login("nobody-"+s.email, goodPassword), nil)
	if wrong.status != 401 || unknown.status != 401 || wrong.doc["code"] != "invalid_credentials" {
		t.Fatalf("wrong %d %v, unknown %d %v", wrong.status, wrong.doc, unknown.status, unknown.doc)
	}
	delete(wrong.doc, "request_id")
	delete(unknown.doc, "request_id")
	wb, _ := json.Marshal(wrong.doc)
	ub, _ := json.Marshal(unknown.doc)
	if string(wb) != string(ub) {
		t.Fatalf("bodies differ:\n%s\n%s", wb, ub)
	}
	// Both are in the audit log; the wrong password under the customer.
	var n int
	if err := s.pg.Owner.QueryRow(context.Background(),
		"SELECT count(*) FROM api_audit_log WHERE action = 'auth_failed' AND path = '/auth/login' AND customer_id = $1 AND metadata->>'reason' = 'wrong_password'", s.c.ID).Scan(&n); err != nil || n != 1 {
		t.Fatalf("failed sign-in audit rows for the customer: %d (%v)", n, err)
	}
	if long := s.post(t, "/auth/login", login(s.email, strings.Repeat("k", 72)+"extra"), nil); long.status != 401 {
		t.Fatalf("73+ byte password: %d", long.status)
	}
	// An e-mail no column can hold (a NUL; bytes that are not UTF-8 in a
	// form) is just another unknown e-mail, not a 503.
	for _, a := range []answer{
		s.post(t, "/auth/login", login("nobody\x00@example.com", goodPassword), nil),
		s.post(t, "/auth/login", "email=nobody%ff%40example.com&password=x", map[string]string{"Content-Type": "application/x-www-form-urlencoded"}),
	} {
		if a.status != 401 && !(a.status == 303 && strings.Contains(a.header.Get("Location"), "error=")) {
			t.Fatalf("unstorable e-mail: %d %v", a.status, a.doc)
		}
	}
}

// TestSignInOverAnotherAccountsSessionIsAuditedForTheAccountTried: a
// browser holding account A's session signs in to account B. B's audit
// log records the failed and the successful attempt; A's holds neither,
// and B's rows carry nothing of A.
func TestSignInOverAnotherAccountsSessionEndsItAndIsAuditedForTheAccountTried(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	b := testenv.NewCustomer(t, s.pg.Owner, s.c.Pepper, s.c.Secret)
	emailB := b.Password(t, goodPassword)
	_, tokenA := s.c.Session(t)
	cookieA := map[string]string{"Cookie": "guardian_token=" + tokenA}
	if a := s.post(t, "/auth/login", login(emailB, goodPassword+"x"), cookieA); a.status != 401 {
		t.Fatalf("wrong password for B: %d %v", a.status, a.doc)
	}
	if s.whoami(t, tokenA) != 200 {
		t.Fatal("a failed sign-in as B ended A's session")
	}
	ok := s.post(t, "/auth/login", login(emailB, goodPassword), cookieA)
	if ok.status != 204 || ok.cookie == nil {
		t.Fatalf("sign-in to B: %d %v", ok.status, ok.doc)
	}
	// The browser now holds B's cookie: A's session, replaced, ends.
	if !s.endsWithinASecond(t, tokenA) {
		t.Fatal("A's session still works 1 s after the browser signed in as B")
	}
	if s.whoami(t, ok.cookie.Value) != 200 {
		t.Fatal("B's new session refused")
	}
	count := func(where string, args ...any) int {
		t.Helper()
		var n int
		if err := s.pg.Owner.QueryRow(context.Background(), "SELECT count(*) FROM api_audit_log WHERE path = '/auth/login' AND "+where, args...).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := count("customer_id = $1 AND user_id = $2 AND action = 'auth_failed' AND metadata->>'reason' = 'wrong_password'", b.ID, b.UserID); n != 1 {
		t.Errorf("B's failed sign-in rows: %d, want 1", n)
	}
	if n := count("customer_id = $1 AND user_id = $2 AND action = 'create' AND resource_type = 'session'", b.ID, b.UserID); n != 1 {
		t.Errorf("B's sign-in rows: %d, want 1", n)
	}
	if n := count("(customer_id = $1 OR user_id = $2)", s.c.ID, s.c.UserID); n != 0 {
		t.Errorf("%d rows of B's sign-ins under A's customer or user", n)
	}
}

func TestReauthIssuesAFreshSessionAndEndsTheOld(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	first := s.post(t, "/auth/login", login(s.email, goodPassword), nil).cookie
	cookie := map[string]string{"Cookie": "guardian_token=" + first.Value}
	if a := s.post(t, "/auth/reauth", `{"password":"nope-nope-nope"}`, cookie); a.status != 401 {
		t.Fatalf("wrong reauth: %d", a.status)
	}
	a := s.post(t, "/auth/reauth", `{"password":"`+goodPassword+`"}`, cookie)
	if a.status != 204 || a.cookie == nil || a.cookie.Value == first.Value {
		t.Fatalf("reauth: %d %v", a.status, a.doc)
	}
	if s.whoami(t, a.cookie.Value) != 200 {
		t.Fatal("fresh session refused")
	}
	if !s.endsWithinASecond(t, first.Value) {
		t.Fatal("the old session still works 1 s after re-auth")
	}
	// Logout ends the fresh one.
	if out := s.post(t, "/auth/logout", "", map[string]string{"Cookie": "guardian_token=" + a.cookie.Value}); out.status != 204 || !strings.Contains(out.header.Get("Set-Cookie"), "Max-Age=0") {
		t.Fatalf("logout: %d", out.status)
	}
	if !s.endsWithinASecond(t, a.cookie.Value) {
		t.Fatal("session works 1 s after logout")
	}
}

// Each password check costs bcrypt, so a session gets 10 re-auth or
// password-change attempts at once and then one per 10 s, however many
// addresses it comes from: it cannot fill the password checks that
// everyone's sign-ins share.
func TestReauthAttemptsAreBoundedPerSession(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	first := s.post(t, "/auth/login", login(s.email, goodPassword), nil).cookie
	cookie := map[string]string{"Cookie": "guardian_token=" + first.Value}
	// Wrong passwords until the first 429: 10 at once, and one more per
	// 10 s the attempts took (a loaded machine checks bcrypt slowly).
	start := time.Now()
	allowed := 0
	var a answer
	for {
		if a = s.post(t, "/auth/reauth", `{"password":"nope-nope-nope"}`, cookie); a.status != 401 {
			break
		}
		if allowed++; allowed > 30 {
			t.Fatalf("30 wrong passwords of one session in %s, none refused", time.Since(start))
		}
	}
	if a.status != 429 || a.doc["code"] != "rate_limited" || a.header.Get("Retry-After") == "" {
		t.Fatalf("after %d attempts: %d %v", allowed, a.status, a.doc)
	}
	if most := 10 + int(time.Since(start).Seconds()/10) + 1; allowed < 10 || allowed > most {
		t.Fatalf("%d attempts allowed in %s, want 10 to %d", allowed, time.Since(start), most)
	}
	// The session's other requests draw on its usual bucket, not this one:
	// they must not refill it at their own rate.
	for range 3 {
		if s.whoami(t, first.Value) != 200 {
			t.Fatal("the session's usual requests were refused")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if a := s.post(t, "/auth/reauth", `{"password":"nope-nope-nope"}`, cookie); a.status != 429 {
		t.Fatalf("a password attempt after the session's other requests: %d %v, want 429 still", a.status, a.doc)
	}
	// Another session of the same user has a bucket of its own.
	other := s.post(t, "/auth/login", login(s.email, goodPassword), nil).cookie
	if a := s.post(t, "/auth/reauth", `{"password":"`+goodPassword+`"}`, map[string]string{"Cookie": "guardian_token=" + other.Value}); a.status != 204 {
		t.Fatalf("another session's re-auth: %d %v", a.status, a.doc)
	}
}

// endsWithinASecond reports whether the session of token stops working
// within a second: revocations reach every edge's cache by notification,
// within a second (caddymodules/auth), not before the next request.
func (s *site) endsWithinASecond(t *testing.T, token string) bool {
	t.Helper()
	deadline := time.Now().Add(time.Second)
	for s.whoami(t, token) != 401 {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
	return true
}

func TestPasswordChangeEnforcesThePolicyAndEndsOtherSessions(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	mine := s.post(t, "/auth/login", login(s.email, goodPassword), nil).cookie
	other := s.post(t, "/auth/login", login(s.email, goodPassword), nil).cookie
	cookie := map[string]string{"Cookie": "guardian_token=" + mine.Value}
	// Checking the current password is a brute-force surface: every
	// attempt takes a token from the address's per-IP bucket, as re-auth
	// does, and from the session's own password bucket (10), the tightest,
	// which the headers name.
	wrong := s.post(t, "/auth/password", `{"current_password":"wrong-wrong-wrong","new_password":"another-good-one-7"}`, cookie)
	if wrong.status != 401 || wrong.header.Get("RateLimit-Limit") != "10" {
		t.Errorf("a wrong current password: %d, RateLimit-Limit %q, want 401 from the session's password bucket of 10", wrong.status, wrong.header.Get("RateLimit-Limit"))
	}
	// ... and is audited as a failed authentication, as a wrong re-auth is.
	if n := s.auditCount(t, "path = '/auth/password' AND action = 'auth_failed' AND result = 'denied' AND resource_type = 'user' AND resource_id = $1 AND metadata->>'reason' = 'wrong_current_password'", s.c.UserID); n != 1 {
		t.Errorf("%d auth_failed rows for the wrong current password, want 1", n)
	}
	for _, tc := range []struct{ body, code string }{
		{`{"current_password":"wrong-wrong-wrong","new_password":"another-good-one-7"}`, "invalid_credentials"},
		{`{"current_password":"` + goodPassword + `","new_password":"short"}`, "weak_password"},
		{`{"current_password":"` + goodPassword + `","new_password":"password1234"}`, "weak_password"},
		{`{"current_password":"` + goodPassword + `","new_password":"` + strings.Repeat("y", 73) + `"}`, "weak_password"},
	} {
		if a := s.post(t, "/auth/password", tc.body, cookie); a.doc["code"] != tc.code {
			t.Errorf("%s: %d %v", tc.body, a.status, a.doc)
		}
	}
	if a := s.post(t, "/auth/password", `{"current_password":"`+goodPassword+`","new_password":"another-good-one-7"}`, cookie); a.status != 204 {
		t.Fatalf("change: %d %v", a.status, a.doc)
	}
	if s.whoami(t, mine.Value) != 200 || !s.endsWithinASecond(t, other.Value) {
		t.Fatal("other sessions should end with the old password, this one stay")
	}
	if a := s.post(t, "/auth/login", login(s.email, "another-good-one-7"), nil); a.status != 204 {
		t.Fatalf("new password: %d", a.status)
	}
}

// Plaintext passwords are never logged nor written to the database (the
// posture's promise): at Caddy's most verbose log level (the functions
// log at INFO and above whatever it is), after sign-ins right
// and wrong, re-auths right and wrong, password changes refused (wrong
// current password, a new one too long) and made, and a body that is not
// JSON, no log line of Caddy or the functions and no row of any table
// holds any of the passwords sent.
func TestNoPlaintextPasswordInLogsOrTables(t *testing.T) {
	t.Parallel()
	s := newSite(t, func(env map[string]string) { env["GUARDIAN_LOG_LEVEL"] = "DEBUG" })
	const (
		wrongSignIn  = "wrong-sign-in-Xq71"
		wrongReauth  = "wrong-reauth-Xq72"
		wrongCurrent = "wrong-current-Xq73"
		newPassword  = "new-good-one-Xq74"
		brokenBody   = "broken-body-Xq75"
	)
	tooLong := "too-long-Xq76-" + strings.Repeat("v", 70)
	sent := []string{goodPassword, wrongSignIn, wrongReauth, wrongCurrent, newPassword, brokenBody, tooLong}

	if a := s.post(t, "/auth/login", login(s.email, wrongSignIn), nil); a.status != 401 {
		t.Fatalf("wrong sign-in: %d", a.status)
	}
	a := s.post(t, "/auth/login", login(s.email, goodPassword), nil)
	if a.cookie == nil {
		t.Fatalf("sign-in: %d %v", a.status, a.doc)
	}
	cookie := map[string]string{"Cookie": "guardian_token=" + a.cookie.Value}
	if a := s.post(t, "/auth/reauth", `{"password":"`+wrongReauth+`"}`, cookie); a.status != 401 {
		t.Fatalf("wrong re-auth: %d", a.status)
	}
	if a = s.post(t, "/auth/reauth", `{"password":"`+goodPassword+`"}`, cookie); a.status != 204 || a.cookie == nil {
		t.Fatalf("re-auth: %d %v", a.status, a.doc)
	}
	cookie = map[string]string{"Cookie": "guardian_token=" + a.cookie.Value}
	for _, tc := range []struct {
		body   string
		status int
	}{
		{`{"current_password":"` + wrongCurrent + `","new_password":"` + newPassword + `"}`, 401},
		{`{"current_password":"` + goodPassword + `","new_password":"` + tooLong + `"}`, 400},
		{`{"current_password":"` + goodPassword + `","new_password":"` + brokenBody, 400},
		{`{"current_password":"` + goodPassword + `","new_password":"` + newPassword + `"}`, 204},
	} {
		if a := s.post(t, "/auth/password", tc.body, cookie); a.status != tc.status {
			t.Fatalf("%s: %d %v, want %d", tc.body, a.status, a.doc, tc.status)
		}
	}
	if a := s.post(t, "/auth/login", `{"email":"`+s.email+`","password":"`+brokenBody, nil); a.status != 400 {
		t.Fatalf("a sign-in body that is not JSON: %d", a.status)
	}
	if a := s.post(t, "/auth/login", login(s.email, newPassword), nil); a.status != 204 {
		t.Fatalf("sign-in with the new password: %d", a.status)
	}

	log := s.Log()
	if !strings.Contains(log, `"level":"debug"`) {
		t.Fatal("no debug line in the log: the test would prove nothing of the debug level")
	}
	for _, line := range strings.Split(log, "\n") {
		for _, pw := range sent {
			if strings.Contains(line, pw) {
				t.Errorf("a password in the log:\n%s", line)
			}
		}
	}
	ctx := context.Background()
	rows, err := s.pg.Owner.Query(ctx, "SELECT quote_ident(table_name) FROM information_schema.tables WHERE table_schema = 'public' AND table_type = 'BASE TABLE'")
	if err != nil {
		t.Fatal(err)
	}
	tables, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil || len(tables) < 10 {
		t.Fatalf("%d tables: %v", len(tables), err)
	}
	for _, table := range tables {
		var text string
		if err := s.pg.Owner.QueryRow(ctx, "SELECT coalesce(string_agg(t::text, E'\\n'), '') FROM "+table+" t").Scan(&text); err != nil {
			t.Fatalf("%s: %v", table, err)
		}
		for _, pw := range sent {
			if strings.Contains(text, pw) {
				t.Errorf("a password in table %s", table)
			}
		}
	}
}

func TestCrossSiteSignInIsRefused(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	a := s.post(t, "/auth/login", login(s.email, goodPassword), map[string]string{"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"})
	if a.status != 403 || a.cookie != nil || a.doc["code"] != "cross_site" {
		t.Fatalf("cross-site login: %d %v", a.status, a.doc)
	}
}

func TestBadBodies(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	cases := []struct {
		name, body, ctype string
		status            int
	}{
		{"not JSON", "email=x", "application/json", 400},
		{"missing password", `{"email":"a@b.c"}`, "application/json", 400},
		{"number for password", `{"email":"a@b.c","password":12}`, "application/json", 400},
		{"XML", "<login/>", "application/xml", 415},
		{"oversized", `{"email":"` + strings.Repeat("a", 9000) + `"}`, "application/json", 413},
	}
	for _, tc := range cases {
		if a := s.post(t, "/auth/login", tc.body, map[string]string{"Content-Type": tc.ctype}); a.status != tc.status {
			t.Errorf("%s: %d %v", tc.name, a.status, a.doc)
		}
	}
}

// A password change ends the user's other sessions while a key may be
// being minted with one of them: that mint holds its session's row (FOR
// SHARE, stepup.LockSession) and its foreign key then takes FOR KEY SHARE
// on the user's row. The change must lock the user in a mode that lets
// that through (FOR NO KEY UPDATE); with FOR UPDATE the two deadlocked and
// PostgreSQL failed one, the password change as often as not.
func TestAPasswordChangeAndAMintWithAnotherSessionDoNotDeadlock(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	ctx := context.Background()
	mine := s.post(t, "/auth/login", login(s.email, goodPassword), nil).cookie
	s.post(t, "/auth/login", login(s.email, goodPassword), nil) // another session
	var other string
	if err := s.pg.Owner.QueryRow(ctx, "SELECT id::text FROM sessions WHERE user_id = $1 ORDER BY created_at DESC LIMIT 1", s.c.UserID).Scan(&other); err != nil {
		t.Fatal(err)
	}
	// The mint, as far as holding the other session's row.
	mint, mintPID := testenv.Hold(t, s.pg.Owner, "SELECT 1 FROM sessions WHERE id = $1 FOR SHARE", other)
	done := make(chan int, 1)
	go func() {
		a, err := s.send("/auth/password", `{"current_password":"`+goodPassword+`","new_password":"another-good-one-7"}`,
			map[string]string{"Cookie": "guardian_token=" + mine.Value})
		if err != nil {
			a.status = -1 // no answer: reported by the checks below
		}
		done <- a.status
	}()
	if _, status, finished := testenv.BlockedBy(t, s.pg.Owner, mintPID, done, migrate.FunctionRole(migrate.DefaultAppRole, "auth")); finished {
		t.Fatalf("the password change did not wait to end the other session: %d", status)
	}
	// The mint's foreign-key check on the user's row, while the change
	// holds that row and waits for the session's.
	if _, err := mint.Exec(ctx, "SELECT 1 FROM users WHERE id = $1 FOR KEY SHARE", s.c.UserID); err != nil {
		t.Fatalf("the mint's side: %v", err)
	}
	if err := mint.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if status := <-done; status != 204 {
		t.Fatalf("the password change: %d, want 204", status)
	}
}
