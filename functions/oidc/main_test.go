package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/glassmkr/guardian/functions/oidc/oidctest"
	"github.com/glassmkr/guardian/shared/mfa"
	"github.com/glassmkr/guardian/shared/session"
	"github.com/glassmkr/guardian/shared/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

const (
	clientID     = "guardian-test"
	clientSecret = "test-client-secret"
)

type options struct {
	signupClosed bool
	// providerDown leaves the provider unstarted; startProvider starts it
	// at the issuer the function was given.
	providerDown bool
	// localhost serves the site as http://localhost (a browser keeps the
	// Secure session cookie there over plain HTTP) instead of 127.0.0.1.
	localhost bool
}

// site is Caddy with the built functions and a real OpenID provider, on a
// database of the test's own.
type site struct {
	*testenv.Stack
	URL      string
	pg       *testenv.PG
	c        *testenv.Customer
	idp      *oidctest.Provider
	idpAddr  string
	clientIP string
	// mfaSecret is the stack's GUARDIAN_MFA_SECRET.
	mfaSecret string
}

func newSite(t *testing.T, opt options) *site {
	t.Helper()
	env, c, pg := testenv.EdgeEnv(t)
	port := testenv.FreePort(t)
	host := "127.0.0.1"
	if opt.localhost {
		host = "localhost"
	}
	s := &site{URL: fmt.Sprintf("http://%s:%d", host, port), pg: pg, c: c,
		// Each test has a client address of its own for the per-IP bucket
		// (Caddy trusts Cf-Connecting-Ip from loopback here).
		clientIP: fmt.Sprintf("10.%d.%d.%d", rand.IntN(256), rand.IntN(256), 1+rand.IntN(254))}
	if opt.providerDown {
		s.idpAddr = fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(t))
	} else {
		s.startProvider(t, "127.0.0.1:0")
	}
	env["GUARDIAN_URL"] = s.URL
	s.mfaSecret = env["GUARDIAN_MFA_SECRET"]
	env["GUARDIAN_OIDC_ISSUER"] = "http://" + s.idpAddr + "/oidc"
	env["GUARDIAN_OIDC_CLIENT_ID"] = clientID
	env["GUARDIAN_OIDC_CLIENT_SECRET"] = clientSecret
	env["GUARDIAN_TRUSTED_PROXIES"] = "127.0.0.1/32"
	if opt.signupClosed {
		env["GUARDIAN_SIGNUP"] = "closed"
	}
	env["GUARDIAN_HTTP_PORT"] = strconv.Itoa(port) // the provider must know the callback first
	s.Stack = testenv.StartStack(t, env)
	return s
}

func (s *site) startProvider(t *testing.T, addr string) {
	t.Helper()
	p, err := oidctest.Start(addr, oidctest.Config{ClientID: clientID, ClientSecret: clientSecret, RedirectURI: s.URL + "/auth/google/callback"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	s.idp, s.idpAddr = p, p.Addr()
}

// browser is a client with its own cookies that does not follow
// redirects, so each step of the flow can be looked at (and tampered with).
type browser struct {
	t      *testing.T
	s      *site
	jar    *cookiejar.Jar
	client *http.Client
}

func (s *site) browser(t *testing.T) *browser {
	jar, _ := cookiejar.New(nil)
	return &browser{t: t, s: s, jar: jar, client: &http.Client{
		Jar:           jar,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		Timeout:       30 * time.Second,
	}}
}

type reply struct {
	status   int
	header   http.Header
	body     string
	location string
}

func (b *browser) get(u string) reply {
	b.t.Helper()
	req, err := http.NewRequest("GET", u, nil)
	if err != nil {
		b.t.Fatal(err)
	}
	return b.do(req)
}

// do sends req from this browser (from its own address when it goes to
// the site) and reads the whole answer.
func (b *browser) do(req *http.Request) reply {
	b.t.Helper()
	if strings.HasPrefix(req.URL.String(), b.s.URL) {
		req.Header.Set("Cf-Connecting-Ip", b.s.clientIP)
	}
	resp, err := b.client.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return reply{status: resp.StatusCode, header: resp.Header, body: string(body), location: resp.Header.Get("Location")}
}

// begin starts a sign-in and has the provider approve it; it returns the
// callback URL the provider sends the browser to.
func (b *browser) begin() string {
	b.t.Helper()
	r := b.get(b.s.URL + "/auth/google/start")
	if r.status != http.StatusSeeOther || !strings.HasPrefix(r.location, b.s.idp.Issuer()+"/authorize?") {
		b.t.Fatalf("start: %d %q %s", r.status, r.location, r.body)
	}
	r = b.get(r.location)
	if r.status != http.StatusFound || !strings.HasPrefix(r.location, b.s.URL+"/auth/google/callback?") {
		b.t.Fatalf("authorize: %d %q %s", r.status, r.location, r.body)
	}
	return r.location
}

// signIn runs a whole sign-in and returns the callback's answer.
func (b *browser) signIn() reply {
	b.t.Helper()
	return b.get(b.begin())
}

// withSession gives the browser a session cookie of user (of the
// fixture's customer), as a sign-in in it would.
func (b *browser) withSession(user string) {
	b.t.Helper()
	var id string
	if err := b.s.pg.Owner.QueryRow(context.Background(), "INSERT INTO sessions (user_id, customer_id, expires_at) VALUES ($1, $2, now() + interval '1 day') RETURNING id",
		user, b.s.c.ID).Scan(&id); err != nil {
		b.t.Fatal(err)
	}
	token, err := session.Issue(b.s.c.Secret, id, user, b.s.c.ID, time.Now(), time.Now().Add(session.Lifetime))
	if err != nil {
		b.t.Fatal(err)
	}
	u, _ := url.Parse(b.s.URL + "/")
	b.jar.SetCookies(u, []*http.Cookie{{Name: session.CookieName, Value: token, Path: "/"}})
}

// cookie returns the browser's cookie name for path.
func (b *browser) cookie(path, name string) *http.Cookie {
	u, _ := url.Parse(b.s.URL + path)
	for _, c := range b.jar.Cookies(u) {
		if c.Name == name {
			return c
		}
	}
	return nil
}

func (b *browser) setCookie(path, name, value string) {
	u, _ := url.Parse(b.s.URL + path)
	b.jar.SetCookies(u, []*http.Cookie{{Name: name, Value: value, Path: "/auth/google/"}})
}

type whoami struct {
	Kind, CustomerID, UserID, SessionID string
}

func (b *browser) whoami() (int, whoami) {
	b.t.Helper()
	r := b.get(b.s.URL + "/api/v1/whoami")
	var w struct {
		Kind       string `json:"kind"`
		CustomerID string `json:"customer_id"`
		UserID     string `json:"user_id"`
		SessionID  string `json:"session_id"`
	}
	_ = json.Unmarshal([]byte(r.body), &w)
	return r.status, whoami{w.Kind, w.CustomerID, w.UserID, w.SessionID}
}

// signedIn checks that a callback answer signed the browser in.
func (b *browser) signedIn(r reply) whoami {
	b.t.Helper()
	if r.status != http.StatusSeeOther || r.location != "/settings/keys" {
		b.t.Fatalf("callback: %d %q %s", r.status, r.location, r.body)
	}
	status, who := b.whoami()
	if status != 200 || who.Kind != "session" {
		b.t.Fatalf("whoami after sign-in: %d %+v", status, who)
	}
	return who
}

// refused checks a failure page.
func refused(t *testing.T, what string, r reply, status int) {
	t.Helper()
	if r.status != status || !strings.HasPrefix(r.header.Get("Content-Type"), "text/html") {
		t.Fatalf("%s: %d %s %s", what, r.status, r.header.Get("Content-Type"), r.body)
	}
	if strings.Contains(r.body, "eyJ") || strings.Contains(r.header.Get("Set-Cookie"), "guardian_token=e") {
		t.Fatalf("%s: the page carries a token or a session: %s", what, r.body)
	}
	if !strings.Contains(r.body, `href="/auth/google/start"`) {
		t.Fatalf("%s: the page offers no way back: %s", what, r.body)
	}
}

// failures returns the audit log's refused Google sign-ins, oldest first.
func (s *site) failures(t *testing.T) []string {
	t.Helper()
	rows, err := s.pg.Owner.Query(context.Background(),
		"SELECT metadata->>'reason' FROM api_audit_log WHERE action = 'auth_failed' AND path LIKE '/auth/google/%' ORDER BY occurred_at")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for rows.Next() {
		var r string
		if err := rows.Scan(&r); err != nil {
			t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

// lastFailure fails t unless reason is the last refused Google sign-in's.
func (s *site) lastFailure(t *testing.T, reason string) {
	t.Helper()
	if f := s.failures(t); len(f) == 0 || f[len(f)-1] != reason {
		t.Fatalf("failures: %v, want the last %s", f, reason)
	}
}

// confirmAs has the provider answer a confirmation (reauth=1) that b
// starts as u, and returns the callback's answer.
func (b *browser) confirmAs(u oidctest.User) reply {
	b.t.Helper()
	b.s.idp.QueueUser(u)
	start := b.get(b.s.URL + "/auth/google/start?reauth=1")
	return b.get(b.get(start.location).location)
}

func (s *site) count(t *testing.T, query string, args ...any) int {
	t.Helper()
	var n int
	if err := s.pg.Owner.QueryRow(context.Background(), query, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestGoogleSignUpThenSignIn(t *testing.T) {
	t.Parallel()
	s := newSite(t, options{})
	ann := oidctest.User{Subject: "ann-sub", Email: "Ann.Lee@Example.COM", EmailVerified: true, Name: "Ann Lee"}

	b := s.browser(t)
	s.idp.QueueUser(ann)
	start := b.get(s.URL + "/auth/google/start")
	if start.status != http.StatusSeeOther {
		t.Fatalf("start: %d %s", start.status, start.body)
	}
	authURL, _ := url.Parse(start.location)
	q := authURL.Query()
	if q.Get("scope") != "openid email profile" || q.Get("code_challenge_method") != "S256" || len(q.Get("code_challenge")) != 43 ||
		len(q.Get("state")) < 40 || len(q.Get("nonce")) < 40 || q.Get("redirect_uri") != s.URL+"/auth/google/callback" || q.Get("client_id") != clientID {
		t.Fatalf("authorization request: %v", q)
	}
	setCookie := start.header.Get("Set-Cookie")
	for _, want := range []string{"guardian_oidc=", "HttpOnly", "Secure", "SameSite=Lax", "Path=/auth/google/", "Max-Age=600"} {
		if !strings.Contains(setCookie, want) {
			t.Errorf("state cookie %q lacks %s", setCookie, want)
		}
	}
	if strings.Contains(setCookie, q.Get("state")) {
		t.Error("the state cookie shows the state in clear")
	}
	approve := b.get(start.location)
	r := b.get(approve.location)
	raw := r.header.Values("Set-Cookie")
	if !slices.ContainsFunc(raw, func(c string) bool {
		return strings.HasPrefix(c, "guardian_token=") && strings.Contains(c, "HttpOnly") && strings.Contains(c, "Secure") && strings.Contains(c, "SameSite=Lax") && strings.Contains(c, "Path=/")
	}) || !slices.ContainsFunc(raw, func(c string) bool {
		return strings.HasPrefix(c, "guardian_oidc=;") && strings.Contains(c, "Max-Age=0")
	}) {
		t.Errorf("callback cookies: %q", raw)
	}
	first := b.signedIn(r)

	// The customer and its admin user exist, the e-mail in lower case.
	var email, role, name, plan string
	var subject, hash *string
	err := s.pg.Owner.QueryRow(context.Background(), `SELECT u.email, u.role, u.google_subject, u.password_hash, c.name, c.plan
		FROM users u JOIN customers c ON c.id = u.customer_id WHERE u.id = $1 AND c.id = $2`, first.UserID, first.CustomerID).
		Scan(&email, &role, &subject, &hash, &name, &plan)
	if err != nil {
		t.Fatal(err)
	}
	if email != "ann.lee@example.com" || role != "admin" || subject == nil || *subject != "ann-sub" || hash != nil || name != "Ann Lee" || plan != "free" {
		t.Fatalf("created: %s %s %v %v %s %s", email, role, subject, hash, name, plan)
	}
	// A Google-only account's fresh sign-in counts as its re-auth.
	if n := s.count(t, "SELECT count(*) FROM sessions WHERE id = $1 AND reauth_at IS NOT NULL", first.SessionID); n != 1 {
		t.Fatal("the Google-only sign-in is not marked re-authenticated")
	}
	if n := s.count(t, `SELECT count(*) FROM api_audit_log WHERE action = 'create' AND resource_type = 'session' AND resource_id = $1
		AND customer_id = $2 AND user_id = $3 AND metadata->>'signed_up' = 'true' AND path = '/auth/google/callback'`, first.SessionID, first.CustomerID, first.UserID); n != 1 {
		t.Fatalf("sign-up audit rows: %d", n)
	}

	// A later sign-in, in another browser, finds the same user.
	other := s.browser(t)
	s.idp.QueueUser(ann)
	second := other.signedIn(other.signIn())
	if second.UserID != first.UserID || second.CustomerID != first.CustomerID || second.SessionID == first.SessionID {
		t.Fatalf("second sign-in: %+v, first %+v", second, first)
	}
	if n := s.count(t, "SELECT count(*) FROM customers"); n != 2 { // the fixture's and Ann's
		t.Fatalf("%d customers", n)
	}
	if n := s.count(t, "SELECT count(*) FROM api_audit_log WHERE action = 'create' AND resource_id = $1 AND metadata->>'signed_up' = 'false'", second.SessionID); n != 1 {
		t.Fatal("no audit row for the second sign-in")
	}

	// A Workspace account names its customer after its domain.
	s.idp.QueueUser(oidctest.User{Subject: "bob-sub", Email: "bob@acme.io", EmailVerified: true, Name: "Bob", HostedDomain: "acme.io"})
	bob := s.browser(t)
	who := bob.signedIn(bob.signIn())
	if n := s.count(t, "SELECT count(*) FROM customers WHERE id = $1 AND name = 'acme.io'", who.CustomerID); n != 1 {
		t.Fatal("the Workspace customer is not named after its domain")
	}
	// Letters outside ASCII lower-case as the users table's CHECK
	// (email = lower(email), 3 to 320 characters) expects, at its bound:
	// U+0130 and U+212A lower-case to ASCII in one character each (Go
	// uses Unicode's simple mappings), U+1E9E to U+00DF.
	wide := "\u0130\u212a\u1e9e" + strings.Repeat("\u00c9", 305) + "@example.com"
	s.idp.QueueUser(oidctest.User{Subject: "wide-sub", Email: wide, EmailVerified: true})
	w := s.browser(t)
	wu := w.signedIn(w.signIn())
	if n := s.count(t, "SELECT count(*) FROM users WHERE id = $1 AND email = $2 AND length(email) = 320", wu.UserID,
		"ik\u00df"+strings.Repeat("\u00e9", 305)+"@example.com"); n != 1 {
		t.Fatal("the address outside ASCII is not stored in lower case")
	}
	if len(s.failures(t)) != 0 {
		t.Fatalf("failures logged: %v", s.failures(t))
	}
}

func TestRefusedCallbacks(t *testing.T) {
	t.Parallel()
	s := newSite(t, options{})
	user := func(sub string) oidctest.User {
		return oidctest.User{Subject: sub, Email: sub + "@example.com", EmailVerified: true, Name: sub}
	}
	alter := func(u, key, value string) string {
		p, _ := url.Parse(u)
		q := p.Query()
		if value == "" {
			q.Del(key)
		} else {
			q.Set(key, value)
		}
		p.RawQuery = q.Encode()
		return p.String()
	}
	var want []string
	for _, tc := range []struct {
		name, reason string
		run          func(b *browser) reply
	}{
		{"a changed state is refused", "state_mismatch", func(b *browser) reply {
			return b.get(alter(b.begin(), "state", "forged-state"))
		}},
		{"a callback without the state cookie is refused", "state_missing", func(b *browser) reply {
			cb := b.begin()
			return s.browser(b.t).get(cb)
		}},
		{"a forged state cookie is refused", "state_invalid", func(b *browser) reply {
			cb := b.begin()
			b.setCookie("/auth/google/callback", stateCookie, "AAAA"+b.cookie("/auth/google/callback", stateCookie).Value[4:])
			return b.get(cb)
		}},
		{"a replayed callback is refused", "state_replayed", func(b *browser) reply {
			cb := b.begin()
			cookie := b.cookie("/auth/google/callback", stateCookie).Value
			b.signedIn(b.get(cb))
			b.setCookie("/auth/google/callback", stateCookie, cookie)
			return b.get(cb)
		}},
		{"an error from the provider is refused", "provider_error", func(b *browser) reply {
			return b.get(alter(alter(b.begin(), "code", ""), "error", "access_denied"))
		}},
		{"a code the provider does not know is refused", "exchange_failed", func(b *browser) reply {
			return b.get(alter(b.begin(), "code", "made-up-code"))
		}},
		{"an ID token with another nonce is refused", "nonce_mismatch", func(b *browser) reply {
			u, nonce := user("nonce"), "not-the-nonce"
			u.Nonce = &nonce
			s.idp.QueueUser(u)
			return b.signIn()
		}},
		{"an ID token for another client is refused", "wrong_audience", func(b *browser) reply {
			u := user("audience")
			u.Audience = []string{"another-client"}
			s.idp.QueueUser(u)
			return b.signIn()
		}},
		{"an ID token not signed with a key of the JWKS is refused", "id_token_signature", func(b *browser) reply {
			s.idp.QueueUser(user("forged"))
			s.idp.ForgeNextSignature()
			return b.signIn()
		}},
		{"an unverified e-mail address is refused", "email_unverified", func(b *browser) reply {
			u := user("unverified")
			u.EmailVerified = false
			s.idp.QueueUser(u)
			return b.signIn()
		}},
		{"an e-mail address with a NUL is refused, not an outage", "email_invalid", func(b *browser) reply {
			u := user("nul")
			u.Email = "nul\x00@example.com"
			s.idp.QueueUser(u)
			return b.signIn()
		}},
		{"an e-mail address of two characters in four bytes is refused", "email_invalid", func(b *browser) reply {
			u := user("short")
			u.Email = "é@"
			s.idp.QueueUser(u)
			return b.signIn()
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := s.browser(t)
			refused(t, tc.name, tc.run(b), http.StatusBadRequest)
		})
		want = append(want, tc.reason)
	}
	if got := s.failures(t); !slices.Equal(got, want) {
		t.Fatalf("audit reasons:\n got %v\nwant %v", got, want)
	}
	// Only the replay test's first, good callback made a user.
	if n := s.count(t, "SELECT count(*) FROM users WHERE google_subject IS NOT NULL"); n != 1 {
		t.Fatalf("%d Google users", n)
	}
}

func TestClosedSignUpAndLinkingAPasswordAccount(t *testing.T) {
	t.Parallel()
	s := newSite(t, options{signupClosed: true})
	var email string
	if err := s.pg.Owner.QueryRow(context.Background(), "UPDATE users SET password_hash = '$2a$12$notarealhashnotarealhashnotarealhashnotarealhashnotar' WHERE id = $1 RETURNING email", s.c.UserID).Scan(&email); err != nil {
		t.Fatal(err)
	}

	// A new person cannot sign up.
	s.idp.QueueUser(oidctest.User{Subject: "stranger", Email: "stranger@example.net", EmailVerified: true})
	r := s.browser(t).signIn()
	refused(t, "closed sign-up", r, http.StatusForbidden)
	if !strings.Contains(r.body, "sign-up is closed") {
		t.Fatalf("closed sign-up page: %s", r.body)
	}
	if n := s.count(t, "SELECT count(*) FROM customers"); n != 1 {
		t.Fatal("a customer was created with sign-up closed")
	}

	// The password user's address, unverified at Google: not linked.
	s.idp.QueueUser(oidctest.User{Subject: "linked-sub", Email: strings.ToUpper(email), EmailVerified: false})
	refused(t, "unverified link", s.browser(t).signIn(), http.StatusBadRequest)

	// Verified, but from a browser not signed in to the account: Google's
	// word on the address does not take over an account with a password.
	s.idp.QueueUser(oidctest.User{Subject: "linked-sub", Email: strings.ToUpper(email), EmailVerified: true})
	r = s.browser(t).signIn()
	refused(t, "link without the password", r, http.StatusForbidden)
	if !strings.Contains(r.body, "Sign in with the password") {
		t.Fatalf("link refused page: %s", r.body)
	}
	if n := s.count(t, "SELECT count(*) FROM users WHERE google_subject IS NOT NULL"); n != 0 {
		t.Fatal("a password account was linked without its password")
	}
	// Nor from a session of another user of the customer.
	var member string
	if err := s.pg.Owner.QueryRow(context.Background(), "INSERT INTO users (customer_id, email, role) VALUES ($1, 'member-'||gen_random_uuid()||'@example.com', 'member') RETURNING id", s.c.ID).Scan(&member); err != nil {
		t.Fatal(err)
	}
	s.idp.QueueUser(oidctest.User{Subject: "linked-sub", Email: email, EmailVerified: true})
	b := s.browser(t)
	b.withSession(member)
	refused(t, "link from another user's session", b.signIn(), http.StatusForbidden)

	// From a session of the user (its password given in this browser):
	// the user is linked and signed in; the new session is not
	// re-authenticated, since the account has a password.
	s.idp.QueueUser(oidctest.User{Subject: "linked-sub", Email: strings.ToUpper(email), EmailVerified: true})
	b = s.browser(t)
	b.withSession(s.c.UserID)
	who := b.signedIn(b.signIn())
	if who.UserID != s.c.UserID || who.CustomerID != s.c.ID {
		t.Fatalf("linked sign-in as %+v", who)
	}
	if n := s.count(t, "SELECT count(*) FROM users WHERE id = $1 AND google_subject = 'linked-sub'", s.c.UserID); n != 1 {
		t.Fatal("the user was not linked")
	}
	if n := s.count(t, "SELECT count(*) FROM sessions WHERE id = $1 AND reauth_at IS NULL", who.SessionID); n != 1 {
		t.Fatal("a Google sign-in re-authenticated an account that has a password")
	}
	if n := s.count(t, "SELECT count(*) FROM api_audit_log WHERE resource_id = $1 AND metadata->>'linked' = 'true'", who.SessionID); n != 1 {
		t.Fatal("the link is not in the audit log")
	}

	// The existing user keeps signing in with sign-up closed, found by
	// subject even when Google's address changed.
	s.idp.QueueUser(oidctest.User{Subject: "linked-sub", Email: "renamed@example.org", EmailVerified: true})
	b = s.browser(t)
	if again := b.signedIn(b.signIn()); again.UserID != s.c.UserID {
		t.Fatalf("second sign-in as %+v", again)
	}

	// Another Google account with the same address is not let in.
	s.idp.QueueUser(oidctest.User{Subject: "other-sub", Email: email, EmailVerified: true})
	refused(t, "address linked elsewhere", s.browser(t).signIn(), http.StatusConflict)

	want := []string{"signup_closed", "email_unverified", "link_needs_password", "link_needs_password", "email_linked_elsewhere"}
	if got := s.failures(t); !slices.Equal(got, want) {
		t.Fatalf("audit reasons %v, want %v", got, want)
	}
}

func TestProviderDown(t *testing.T) {
	t.Parallel()
	s := newSite(t, options{providerDown: true})
	b := s.browser(t)
	r := b.get(s.URL + "/auth/google/start")
	refused(t, "start with the provider down", r, http.StatusBadGateway)
	if !strings.Contains(r.body, "cannot be reached") || r.header.Get("Retry-After") == "" {
		t.Fatalf("provider down page: %v %s", r.header, r.body)
	}

	// The provider comes up: discovery is retried and sign-in works.
	s.startProvider(t, s.idpAddr)
	deadline := time.Now().Add(15 * time.Second)
	for {
		r = b.get(s.URL + "/auth/google/start")
		if r.status == http.StatusSeeOther || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if r.status != http.StatusSeeOther {
		t.Fatalf("start after the provider came up: %d", r.status)
	}
	b.signedIn(b.signIn())

	// It goes away between the authorization and the callback.
	cb := b.begin()
	if err := s.idp.Close(); err != nil {
		t.Fatal(err)
	}
	refused(t, "callback with the provider down", b.get(cb), http.StatusBadGateway)

	got := s.failures(t)
	if len(got) < 2 || slices.ContainsFunc(got, func(r string) bool { return r != "provider_unreachable" }) {
		t.Fatalf("audit reasons %v", got)
	}
}

// postForm posts a form as the browser.
func (b *browser) postForm(path string, form url.Values) reply {
	b.t.Helper()
	req, _ := http.NewRequest("POST", b.s.URL+path, strings.NewReader(form.Encode()))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.Header.Set("Cf-Connecting-Ip", b.s.clientIP)
	resp, err := b.client.Do(req)
	if err != nil {
		b.t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return reply{status: resp.StatusCode, header: resp.Header, body: string(body), location: resp.Header.Get("Location")}
}

func TestGoogleSignInAsksForTheSecondFactorOfAUserWhoHasOne(t *testing.T) {
	t.Parallel()
	s := newSite(t, options{})
	ctx := context.Background()
	var email string
	if err := s.pg.Owner.QueryRow(ctx, "UPDATE users SET google_subject = 'mfa-sub' WHERE id = $1 RETURNING email", s.c.UserID).Scan(&email); err != nil {
		t.Fatal(err)
	}
	// The user has a security key (its details do not matter here) and
	// recovery codes, made as the product makes them.
	if _, err := s.pg.Owner.Exec(ctx, `INSERT INTO webauthn_credentials (user_id, credential_id, name, credential) VALUES ($1, '\x0102', 'key', '{}')`, s.c.UserID); err != nil {
		t.Fatal(err)
	}
	svc, err := mfa.New(s.pg.Owner, mfa.Config{Secret: []byte(s.mfaSecret)})
	if err != nil {
		t.Fatal(err)
	}
	codes, err := svc.NewRecoveryCodes(ctx, s.c.UserID, "")
	if err != nil {
		t.Fatal(err)
	}

	s.idp.QueueUser(oidctest.User{Subject: "mfa-sub", Email: email, EmailVerified: true})
	b := s.browser(t)
	r := b.signIn()
	loc, _ := url.Parse(r.location)
	if r.status != http.StatusSeeOther || loc.Path != "/login" || loc.Query().Get("step") != "mfa" || !strings.Contains(loc.Query().Get("methods"), "recovery_code") {
		t.Fatalf("callback of a user with a factor: %d %q %s", r.status, r.location, r.body)
	}
	if b.cookie("/", "guardian_token") != nil {
		t.Fatal("Google alone gave a session to a user with a second factor")
	}
	if b.cookie("/auth/login/mfa", mfa.CookieName) == nil {
		t.Fatal("no challenge cookie for the second step")
	}
	if status, _ := b.whoami(); status != 401 {
		t.Fatalf("whoami before the second factor: %d", status)
	}
	if r := b.postForm("/auth/login/mfa", url.Values{"code": {"zzzzz-zzzzz"}}); r.status != http.StatusSeeOther || !strings.Contains(r.location, "error=code") {
		t.Fatalf("wrong code: %d %q", r.status, r.location)
	}
	r = b.postForm("/auth/login/mfa", url.Values{"code": {codes[0]}})
	if r.status != http.StatusSeeOther || r.location != "/settings/keys" {
		t.Fatalf("second factor: %d %q %s", r.status, r.location, r.body)
	}
	status, who := b.whoami()
	if status != 200 || who.UserID != s.c.UserID {
		t.Fatalf("whoami after the second factor: %d %+v", status, who)
	}
	// Google and a second factor: assurance level 2; the account has no
	// password, and the sign-in was fresh, so it is re-authenticated too.
	if n := s.count(t, "SELECT count(*) FROM sessions WHERE id = $1 AND aal = 2 AND reauth_at IS NOT NULL", who.SessionID); n != 1 {
		t.Fatal("the session is not at assurance level 2")
	}
	if n := s.count(t, "SELECT count(*) FROM api_audit_log WHERE path = '/auth/login/mfa' AND resource_id = $1 AND metadata->>'method' = 'google' AND metadata->>'second_factor' = 'recovery_code'", who.SessionID); n != 1 {
		t.Fatal("the sign-in is not in the audit log as Google plus a recovery code")
	}

	// Signing in again in the same browser replaces its session, as a
	// password sign-in does: the second factor's step carries it along.
	s.idp.QueueUser(oidctest.User{Subject: "mfa-sub", Email: email, EmailVerified: true})
	if r := b.signIn(); r.status != http.StatusSeeOther {
		t.Fatalf("second sign-in: %d %s", r.status, r.body)
	}
	if r := b.postForm("/auth/login/mfa", url.Values{"code": {codes[1]}}); r.status != http.StatusSeeOther || r.location != "/settings/keys" {
		t.Fatalf("second factor, again: %d %q", r.status, r.location)
	}
	if n := s.count(t, "SELECT count(*) FROM sessions WHERE user_id = $1 AND revoked_at IS NULL", s.c.UserID); n != 1 {
		t.Fatalf("%d live sessions after signing in twice in one browser, want 1", n)
	}
	if n := s.count(t, "SELECT count(*) FROM sessions WHERE id = $1 AND revoked_at IS NOT NULL", who.SessionID); n != 1 {
		t.Fatal("the browser's previous session was not ended")
	}
}

// A Google sign-in whose ID token does not say when the provider
// authenticated the user (Google leaves auth_time out unless asked) is
// not a confirmation: it may be a silent sign-in on a browser left
// signed in to Google. Sensitive actions still ask to confirm.
func TestASignInWithoutAuthTimeIsNotAConfirmation(t *testing.T) {
	t.Parallel()
	s := newSite(t, options{})
	dog := oidctest.User{Subject: "dog-sub", Email: "dog@example.com", EmailVerified: true, Name: "Dog", NoAuthTime: true}
	b := s.browser(t)
	s.idp.QueueUser(dog)
	b.signedIn(b.signIn())
	if r := b.post("/api/v1/keys", `{"name":"ci","scope":"read"}`); r.status != 401 || !strings.Contains(r.body, "reauth_required") {
		t.Fatalf("create after a sign-in without auth_time: %d %s, want 401 reauth_required", r.status, r.body)
	}
	dog.NoAuthTime = false
	s.idp.QueueUser(dog)
	b.signedIn(b.signIn())
	if r := b.post("/api/v1/keys", `{"name":"ci","scope":"read"}`); r.status != 201 {
		t.Fatalf("create after a fresh sign-in: %d %s", r.status, r.body)
	}
}

func (b *browser) post(path, body string) reply {
	b.t.Helper()
	req, err := http.NewRequest("POST", b.s.URL+path, strings.NewReader(body))
	if err != nil {
		b.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Origin", b.s.URL)
	req.Header.Set("Sec-Fetch-Site", "same-origin")
	return b.do(req)
}

// TestAGoogleAccountConfirmsWithGoogle: an account without a password
// cannot answer the password prompt of a sensitive action; it is told to
// confirm with Google, which is asked to authenticate the user anew
// (max_age=0) and sends the browser back to the page it came from.
func TestAGoogleAccountConfirmsWithGoogle(t *testing.T) {
	t.Parallel()
	s := newSite(t, options{})
	cat := oidctest.User{Subject: "cat-sub", Email: "cat@example.com", EmailVerified: true, Name: "Cat"}
	b := s.browser(t)
	s.idp.QueueUser(cat)
	first := b.signedIn(b.signIn())
	stale := func() {
		if _, err := s.pg.Owner.Exec(context.Background(), "UPDATE sessions SET reauth_at = now() - interval '1 hour' WHERE user_id = $1", first.UserID); err != nil {
			t.Fatal(err)
		}
	}
	stale()
	if r := b.post("/api/v1/keys", `{"name":"ci","scope":"read"}`); r.status != 401 || !strings.Contains(r.body, "reauth_required") {
		t.Fatalf("create without a fresh confirmation: %d %s", r.status, r.body)
	}
	r := b.post("/auth/reauth", `{"password":"anything at all"}`)
	var p map[string]any
	_ = json.Unmarshal([]byte(r.body), &p)
	if r.status != 409 || p["code"] != "password_not_set" || p["reauth_url"] != "/auth/google/start?reauth=1" {
		t.Fatalf("password prompt of a Google account: %d %s", r.status, r.body)
	}

	// Confirm with Google, coming back to the sessions page.
	s.idp.QueueUser(cat)
	start := b.get(s.URL + "/auth/google/start?reauth=1&next=" + url.QueryEscape("/settings/sessions"))
	if start.status != http.StatusSeeOther {
		t.Fatalf("start: %d %s", start.status, start.body)
	}
	callback := b.get(start.location)
	if got := s.idp.LastAuthorization().Get("max_age"); got != "0" {
		t.Fatalf("the provider was not asked to authenticate anew: max_age %q", got)
	}
	r = b.get(callback.location)
	if r.status != http.StatusSeeOther || r.location != "/settings/sessions#confirmed" {
		t.Fatalf("callback: %d %q %s", r.status, r.location, r.body)
	}
	if r := b.post("/api/v1/keys", `{"name":"ci","scope":"read"}`); r.status != 201 {
		t.Fatalf("create after confirming with Google: %d %s", r.status, r.body)
	}
	// The confirmation replaced the browser's session instead of adding one.
	if n := s.count(t, "SELECT count(*) FROM sessions WHERE user_id = $1 AND revoked_at IS NULL", first.UserID); n != 1 {
		t.Fatalf("%d live sessions after the confirmation, want 1", n)
	}

	// Another Google account chosen at the provider confirms nothing: it
	// signs nobody in, nor up (sign-up is open here), and the signed-in
	// session stays as it was, in the signed-in account's log.
	stale()
	dog := oidctest.User{Subject: "dog-sub", Email: "dog@example.com", EmailVerified: true, Name: "Dog"}
	refused(t, "confirmation by another Google account", b.confirmAs(dog), http.StatusForbidden)
	s.lastFailure(t, "reauth_other_account")
	if n := s.count(t, "SELECT count(*) FROM users WHERE email = 'dog@example.com'"); n != 0 {
		t.Fatal("a confirmation by another Google account signed it up")
	}
	if n := s.count(t, "SELECT count(*) FROM api_audit_log WHERE metadata->>'reason' = 'reauth_other_account' AND user_id = $1", first.UserID); n != 1 {
		t.Fatalf("%d rows of the refusal in the signed-in user's log, want 1", n)
	}
	if r := b.post("/api/v1/keys", `{"name":"ci","scope":"read"}`); r.status != 401 || !strings.Contains(r.body, "reauth_required") {
		t.Fatalf("the session after a confirmation by another account: %d %s, want it signed in and still unconfirmed", r.status, r.body)
	}

	// A confirmation started without a session has no user to confirm:
	// it signs nobody in, not even the account Google names.
	refused(t, "confirmation started signed out", s.browser(t).confirmAs(cat), http.StatusBadRequest)
	s.lastFailure(t, "reauth_signed_out")

	// A provider answer that does not show a fresh authentication is refused.
	stale()
	old := cat
	old.AuthAge = 20 * time.Minute
	refused(t, "confirmation without a fresh authentication", b.confirmAs(old), http.StatusBadRequest)
	s.lastFailure(t, "reauth_not_fresh")

	// next never leaves the dashboard.
	for _, next := range []string{"//evil.example/settings/", "https://evil.example/settings/keys", "/api/v1/keys", "/settings/../login", `/settings\evil`} {
		s.idp.QueueUser(cat)
		start := b.get(s.URL + "/auth/google/start?reauth=1&next=" + url.QueryEscape(next))
		r := b.get(b.get(start.location).location)
		if r.status != http.StatusSeeOther || r.location != "/settings/keys#confirmed" {
			t.Errorf("next %q: %d %q", next, r.status, r.location)
		}
	}
}

// A sign-in another site sends the browser to does not start by itself:
// it would replace the browser's session (or sign a new account up)
// without the user asking here. The page offers to continue from here.
func TestASignInStartedFromAnotherSiteAsksFirst(t *testing.T) {
	t.Parallel()
	s := newSite(t, options{})
	b := s.browser(t)
	for _, site := range []string{"cross-site", "same-site"} {
		req, _ := http.NewRequest("GET", s.URL+"/auth/google/start?reauth=1&next=/settings/keys&extra=x", nil)
		req.Header.Set("Sec-Fetch-Site", site)
		r := b.do(req)
		if r.status != http.StatusOK || r.location != "" || strings.Contains(r.header.Get("Set-Cookie"), stateCookie) {
			t.Fatalf("%s: %d %q, cookies %q", site, r.status, r.location, r.header.Get("Set-Cookie"))
		}
		if !strings.Contains(r.body, `href="/auth/google/start?next=%2Fsettings%2Fkeys&amp;reauth=1" id="continue-google"`) {
			t.Fatalf("%s: no link to continue from here: %.800s", site, r.body)
		}
	}
	// From this site (and from browsers that do not say), it starts.
	for _, site := range []string{"same-origin", "none", ""} {
		req, _ := http.NewRequest("GET", s.URL+"/auth/google/start", nil)
		if site != "" {
			req.Header.Set("Sec-Fetch-Site", site)
		}
		if r := b.do(req); r.status != http.StatusSeeOther || !strings.HasPrefix(r.location, s.idp.Issuer()+"/authorize?") {
			t.Fatalf("%q: %d %q", site, r.status, r.location)
		}
	}
}
