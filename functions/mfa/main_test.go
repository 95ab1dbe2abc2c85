package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/glassmkr/guardian/shared/mfa"
	"github.com/glassmkr/guardian/shared/mfa/mfatest"
	"github.com/glassmkr/guardian/shared/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

const pw = "correct-horse-staple-9"

type site struct {
	*testenv.Stack
	c      *testenv.Customer
	pg     *testenv.PG
	email  string
	origin string // public URL: WebAuthn's origin (a domain name)
}

func newSite(t *testing.T) *site {
	t.Helper()
	env, c, pg := testenv.EdgeEnv(t)
	s := &site{c: c, pg: pg}
	s.email = c.Password(t, pw)
	port := testenv.FreePort(t)
	env["GUARDIAN_HTTP_PORT"] = strconv.Itoa(port)
	s.origin = fmt.Sprintf("http://localhost:%d", port)
	env["GUARDIAN_URL"] = s.origin
	s.Stack = testenv.StartStack(t, env)
	return s
}

// answer is one response; cookie is a new session cookie if it set one.
type answer struct {
	testenv.Answer
	cookie string
}

func (s *site) call(t *testing.T, method, path, body, session string) answer {
	t.Helper()
	req, _ := http.NewRequest(method, s.URL+path, strings.NewReader(body))
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if session != "" {
		req.AddCookie(&http.Cookie{Name: "guardian_token", Value: session})
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	a := answer{Answer: testenv.Answer{Status: resp.StatusCode, Header: resp.Header, Raw: string(b)}}
	_ = json.Unmarshal(b, &a.Doc)
	for _, c := range resp.Cookies() {
		if c.Name == "guardian_token" && c.Value != "" {
			a.cookie = c.Value
		}
	}
	return a
}

func body(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// signIn signs in with the password (a user without a second factor):
// a session re-authenticated now, at assurance level 1.
func (s *site) signIn(t *testing.T) string {
	t.Helper()
	a := s.call(t, "POST", "/auth/login", body(map[string]string{"email": s.email, "password": pw}), "")
	if a.Status != 204 || a.cookie == "" {
		t.Fatalf("sign-in: %d %s", a.Status, a.Raw)
	}
	return a.cookie
}

// reauth re-authenticates session with the password and the second
// factor prove (given the challenge token) and returns the new session.
func (s *site) reauth(t *testing.T, session string, prove func(token string) map[string]any) string {
	t.Helper()
	a := s.call(t, "POST", "/auth/reauth", body(map[string]string{"password": pw}), session)
	token, _ := a.Doc["mfa_token"].(string)
	if a.Status != 401 || token == "" {
		t.Fatalf("reauth: %d %s", a.Status, a.Raw)
	}
	proof := prove(token)
	proof["mfa_token"] = token
	a = s.call(t, "POST", "/auth/reauth/mfa", body(proof), session)
	if a.Status != 204 || a.cookie == "" {
		t.Fatalf("reauth second step: %d %s", a.Status, a.Raw)
	}
	return a.cookie
}

func codes(t *testing.T, a answer) []string {
	t.Helper()
	raw, _ := a.Doc["recovery_codes"].([]any)
	out := make([]string, len(raw))
	for i, c := range raw {
		out[i] = c.(string)
	}
	return out
}

// notACode returns six digits that are no code of seed near now.
func notACode(seed string) string {
	near := map[string]bool{}
	for s := -2; s <= 2; s++ {
		c, _ := mfa.CodeAt(seed, time.Now().Add(time.Duration(s)*mfa.Period))
		near[c] = true
	}
	for i := 0; ; i++ {
		c := strings.Repeat(strconv.Itoa(i%10), 6)
		if !near[c] {
			return c
		}
	}
}

func (s *site) audit(t *testing.T, where string, args ...any) int {
	t.Helper()
	var n int
	if err := s.pg.Owner.QueryRow(context.Background(), "SELECT count(*) FROM api_audit_log WHERE "+where, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestAuthenticatorAppEnrolmentAndRemoval(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	_, stale := s.c.Session(t) // never confirmed a password
	if a := s.call(t, "POST", "/api/v1/mfa/totp", "", stale); a.Status != 401 || a.Doc["code"] != "reauth_required" {
		t.Fatalf("enrol from a stale session: %d %s", a.Status, a.Raw)
	}
	if a := s.call(t, "GET", "/api/v1/mfa", "", stale); a.Status != 200 || a.Doc["totp"].(map[string]any)["enabled"] != false {
		t.Fatalf("status: %d %s", a.Status, a.Raw)
	}
	if a := s.call(t, "POST", "/api/v1/mfa/totp", "", ""); a.Status != 401 {
		t.Fatalf("enrol without a session: %d", a.Status)
	}

	session := s.signIn(t)
	a := s.call(t, "POST", "/api/v1/mfa/totp", "", session)
	seed, _ := a.Doc["secret"].(string)
	if a.Status != 201 || len(seed) != 32 || !strings.HasPrefix(a.Doc["otpauth_url"].(string), "otpauth://totp/") || a.Doc["qr_url"] != "/api/v1/mfa/totp/qr" {
		t.Fatalf("begin: %d %s", a.Status, a.Raw)
	}
	// As the page asks for it: with a cache-buster, the one parameter
	// the image takes.
	if a := s.call(t, "GET", "/api/v1/mfa/totp/qr?t=1764460800000&x=1", "", session); a.Status != 400 || a.Doc["param"] != "x" {
		t.Fatalf("qr with a parameter it does not take: %d %s", a.Status, a.Raw)
	}
	if a := s.call(t, "POST", "/api/v1/mfa/totp/qr", "", session); a.Status != 405 || a.Header.Get("Allow") == "" {
		t.Fatalf("POST to the qr: %d %v", a.Status, a.Header)
	}
	qr := s.call(t, "GET", "/api/v1/mfa/totp/qr?t=1764460800000", "", session)
	if qr.Status != 200 || qr.Header.Get("Content-Type") != "image/png" || !strings.HasPrefix(qr.Raw, "\x89PNG") || qr.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("QR code: %d %v", qr.Status, qr.Header)
	}
	if a := s.call(t, "GET", "/api/v1/mfa/totp/qr", "", stale); a.Status != 401 {
		t.Fatalf("QR code for a stale session: %d", a.Status)
	}
	now, _ := mfa.CodeAt(seed, time.Now())
	wrong := notACode(seed)
	if a := s.call(t, "POST", "/api/v1/mfa/totp/confirm", body(map[string]string{"code": wrong}), session); a.Status != 422 || a.Doc["code"] != "wrong_code" {
		t.Fatalf("wrong code: %d %s", a.Status, a.Raw)
	}
	a = s.call(t, "POST", "/api/v1/mfa/totp/confirm", body(map[string]string{"code": now}), session)
	recovery := codes(t, a)
	if a.Status != 200 || len(recovery) != mfa.RecoveryCodes {
		t.Fatalf("confirm: %d %s", a.Status, a.Raw)
	}
	// Shown once: the status has neither the key nor the codes.
	st := s.call(t, "GET", "/api/v1/mfa", "", session)
	if st.Doc["totp"].(map[string]any)["enabled"] != true || st.Doc["recovery_codes_left"] != float64(10) || strings.Contains(st.Raw, seed) || strings.Contains(st.Raw, recovery[0]) {
		t.Fatalf("status after enrolment: %s", st.Raw)
	}
	if a := s.call(t, "POST", "/api/v1/mfa/totp", "", session); a.Status != 401 || a.Doc["second_factor"] != true {
		t.Fatalf("a password-only session changing factors once there is one: %d %s", a.Status, a.Raw)
	}

	// Removal needs the second factor too.
	if a := s.call(t, "DELETE", "/api/v1/mfa/totp", "", session); a.Status != 401 || a.Doc["code"] != "reauth_required" {
		t.Fatalf("remove without the factor: %d %s", a.Status, a.Raw)
	}
	next, _ := mfa.CodeAt(seed, time.Now().Add(mfa.Period))
	strong := s.reauth(t, session, func(string) map[string]any { return map[string]any{"code": next} })
	if a := s.call(t, "GET", "/api/v1/mfa/totp/qr", "", strong); a.Status != 404 {
		t.Fatalf("QR code after confirmation: %d", a.Status)
	}
	if a := s.call(t, "POST", "/api/v1/mfa/totp", "", strong); a.Status != 409 || a.Doc["code"] != "totp_enrolled" {
		t.Fatalf("a second app: %d %s", a.Status, a.Raw)
	}
	a = s.call(t, "POST", "/api/v1/mfa/recovery-codes", "", strong)
	if fresh := codes(t, a); a.Status != 201 || len(fresh) != mfa.RecoveryCodes || fresh[0] == recovery[0] {
		t.Fatalf("new recovery codes: %d %s", a.Status, a.Raw)
	}
	if a := s.call(t, "DELETE", "/api/v1/mfa/totp", "", strong); a.Status != 204 {
		t.Fatalf("remove: %d %s", a.Status, a.Raw)
	}
	st = s.call(t, "GET", "/api/v1/mfa", "", strong)
	if st.Doc["totp"].(map[string]any)["enabled"] != false || st.Doc["recovery_codes_left"] != float64(0) {
		t.Fatalf("status after removal: %s", st.Raw)
	}
	// Without a factor, the password alone signs in again.
	if a := s.call(t, "POST", "/auth/login", body(map[string]string{"email": s.email, "password": pw}), ""); a.Status != 204 {
		t.Fatalf("sign-in after removal: %d %s", a.Status, a.Raw)
	}
	for _, tc := range []struct {
		action string
		n      int
	}{{"create", 1}, {"update", 1}, {"delete", 1}, {"auth_failed", 1}} {
		if n := s.audit(t, "resource_type = 'mfa_totp' AND action = $1 AND user_id = $2", tc.action, s.c.UserID); n != tc.n {
			t.Errorf("mfa_totp %s audit rows: %d, want %d", tc.action, n, tc.n)
		}
	}
	if n := s.audit(t, "resource_type = 'mfa_recovery_codes' AND action = 'rotate'"); n != 1 {
		t.Errorf("recovery-code audit rows: %d", n)
	}
	if n := s.audit(t, "metadata::text LIKE '%' || $1 || '%'", seed); n != 0 {
		t.Errorf("the seed is in %d audit rows", n)
	}
}

// register adds a software security key with session and returns the
// answer.
func (s *site) register(t *testing.T, session string, key *mfatest.Authenticator, name string) answer {
	t.Helper()
	return s.registerTampered(t, session, key, name, nil)
}

// registerTampered is register with tamper (if not nil) changing the
// credential's JSON as a client could before it is posted.
func (s *site) registerTampered(t *testing.T, session string, key *mfatest.Authenticator, name string, tamper func(map[string]any)) answer {
	t.Helper()
	a := s.call(t, "POST", "/api/v1/mfa/webauthn/options", "", session)
	if a.Status != 200 {
		return a
	}
	opts, _ := json.Marshal(a.Doc["options"])
	raw, err := key.Create(opts)
	if err != nil {
		t.Fatalf("authenticator: %v", err)
	}
	var cred any = json.RawMessage(raw)
	if tamper != nil {
		var doc map[string]any
		if err := json.Unmarshal(raw, &doc); err != nil {
			t.Fatal(err)
		}
		tamper(doc)
		cred = doc
	}
	return s.call(t, "POST", "/api/v1/mfa/webauthn", body(map[string]any{"ceremony": a.Doc["ceremony"], "name": name, "credential": cred}), session)
}

// withKey proves a re-auth with key.
func (s *site) withKey(t *testing.T, session string, key *mfatest.Authenticator) func(string) map[string]any {
	return func(token string) map[string]any {
		a := s.call(t, "POST", "/auth/reauth/webauthn", body(map[string]string{"mfa_token": token}), session)
		if a.Status != 200 {
			t.Fatalf("assertion options: %d %s", a.Status, a.Raw)
		}
		opts, _ := json.Marshal(a.Doc)
		ans, err := key.Get(opts)
		if err != nil {
			t.Fatal(err)
		}
		return map[string]any{"credential": json.RawMessage(ans)}
	}
}

func TestSeveralSecurityKeysNamedAndRemovedWithReauth(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	session := s.signIn(t)
	desk := mfatest.New(s.origin)
	a := s.register(t, session, desk, "desk key")
	if a.Status != 201 || a.Doc["name"] != "desk key" || len(codes(t, a)) != mfa.RecoveryCodes {
		t.Fatalf("first key: %d %s", a.Status, a.Raw)
	}
	// A second key needs the first.
	phone := mfatest.New(s.origin)
	if a := s.register(t, session, phone, "phone"); a.Status != 401 || a.Doc["code"] != "reauth_required" {
		t.Fatalf("second key from a password-only session: %d %s", a.Status, a.Raw)
	}
	strong := s.reauth(t, session, s.withKey(t, session, desk))
	for _, bad := range []string{"", "key\x00", "two\nlines"} {
		if a := s.register(t, strong, phone, bad); a.Status != 400 || a.Doc["field"] != "name" {
			t.Fatalf("name %q: %d %s", bad, a.Status, a.Raw)
		}
	}
	if a := s.register(t, strong, phone, "phone"); a.Status != 201 || a.Doc["recovery_codes"] != nil {
		t.Fatalf("second key: %d %s", a.Status, a.Raw)
	}
	// The same authenticator twice: a browser refuses (excluded), and the
	// server refuses a credential id it has.
	opts := s.call(t, "POST", "/api/v1/mfa/webauthn/options", "", strong)
	raw, _ := json.Marshal(opts.Doc["options"])
	if _, err := desk.Create(raw); err == nil {
		t.Fatal("the registered key was not excluded")
	}
	st := s.call(t, "GET", "/api/v1/mfa", "", strong)
	keys, _ := st.Doc["webauthn"].([]any)
	if len(keys) != 2 || st.Doc["webauthn_available"] != true {
		t.Fatalf("status: %s", st.Raw)
	}
	var deskID string
	for _, k := range keys {
		m := k.(map[string]any)
		if m["name"] == "desk key" {
			deskID = m["id"].(string)
			if m["last_used_at"] == nil {
				t.Error("the key used for the re-auth has no last use")
			}
		}
	}
	// Removal with a re-auth older than five minutes is refused.
	if _, err := s.pg.Owner.Exec(context.Background(), "UPDATE sessions SET reauth_at = now() - interval '6 minutes' WHERE user_id = $1", s.c.UserID); err != nil {
		t.Fatal(err)
	}
	if a := s.call(t, "DELETE", "/api/v1/mfa/webauthn/"+deskID, "", strong); a.Status != 401 || a.Doc["code"] != "reauth_required" {
		t.Fatalf("remove with an old re-auth: %d %s", a.Status, a.Raw)
	}
	strong = s.reauth(t, strong, s.withKey(t, strong, phone))
	other := testenv.NewCustomer(t, s.pg.Owner, s.c.Pepper, s.c.Secret)
	var otherKey string
	if err := s.pg.Owner.QueryRow(context.Background(), `INSERT INTO webauthn_credentials (user_id, credential_id, name, credential)
		VALUES ($1, '\x01', 'theirs', '{}') RETURNING id`, other.UserID).Scan(&otherKey); err != nil {
		t.Fatal(err)
	}
	if a := s.call(t, "DELETE", "/api/v1/mfa/webauthn/"+otherKey, "", strong); a.Status != 404 {
		t.Fatalf("another user's key: %d", a.Status)
	}
	if a := s.call(t, "DELETE", "/api/v1/mfa/webauthn/"+deskID, "", strong); a.Status != 204 {
		t.Fatalf("remove: %d %s", a.Status, a.Raw)
	}
	if a := s.call(t, "DELETE", "/api/v1/mfa/webauthn/not-an-id", "", strong); a.Status != 404 {
		t.Fatalf("bad id: %d", a.Status)
	}
	// The removed key no longer signs in; the other does.
	login := s.call(t, "POST", "/auth/login", body(map[string]string{"email": s.email, "password": pw}), "")
	token := login.Doc["mfa_token"].(string)
	a = s.call(t, "POST", "/auth/login/webauthn", body(map[string]string{"mfa_token": token}), "")
	raw, _ = json.Marshal(a.Doc)
	if _, err := desk.Get(raw); err == nil {
		t.Fatal("the removed key is still offered")
	}
	ans, err := phone.Get(raw)
	if err != nil {
		t.Fatal(err)
	}
	if a := s.call(t, "POST", "/auth/login/mfa", body(map[string]any{"mfa_token": token, "credential": json.RawMessage(ans)}), ""); a.Status != 204 {
		t.Fatalf("sign-in with the remaining key: %d %s", a.Status, a.Raw)
	}
	if n := s.audit(t, "resource_type = 'webauthn_credential' AND action IN ('create', 'delete') AND result = 'success' AND user_id = $1", s.c.UserID); n != 3 {
		t.Errorf("key audit rows: %d", n)
	}
}

func TestSecurityPageRendersTheFactors(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	session := s.signIn(t)
	if a := s.register(t, session, mfatest.New(s.origin), "<b>desk</b>"); a.Status != 201 {
		t.Fatalf("register: %d %s", a.Status, a.Raw)
	}
	p := s.call(t, "GET", "/settings/security", "", session)
	if p.Status != 200 || !strings.Contains(p.Header.Get("Content-Security-Policy"), "img-src 'self'") {
		t.Fatalf("page: %d %v", p.Status, p.Header)
	}
	for _, want := range []string{`id="setup-totp"`, `id="add-key"`, "&lt;b&gt;desk&lt;/b&gt;", `id="new-codes"`, "10 unused", `href="/settings/security"`} {
		if !strings.Contains(p.Raw, want) {
			t.Errorf("page lacks %s", want)
		}
	}
	req, _ := http.NewRequest("GET", s.URL+"/settings/security", nil)
	req.Header.Set("Accept", "text/html")
	resp, err := (&http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode/100 != 3 || !strings.HasPrefix(resp.Header.Get("Location"), "/login") {
		t.Fatalf("signed out: %d %v", resp.StatusCode, resp.Header)
	}
}

// A session stolen before the user added a second factor must not outlive
// it: the first factor ends every other session of the user.
func TestFirstFactorEndsTheOtherSessions(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	other := s.signIn(t)
	session := s.signIn(t)
	a := s.call(t, "POST", "/api/v1/mfa/totp", "", session)
	seed, _ := a.Doc["secret"].(string)
	if a.Status != 201 || seed == "" {
		t.Fatalf("begin: %d %s", a.Status, a.Raw)
	}
	code, _ := mfa.CodeAt(seed, time.Now())
	if a := s.call(t, "POST", "/api/v1/mfa/totp/confirm", body(map[string]string{"code": code}), session); a.Status != 200 {
		t.Fatalf("confirm: %d %s", a.Status, a.Raw)
	}
	ended := false
	for deadline := time.Now().Add(2 * time.Second); !ended && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		ended = s.call(t, "GET", "/api/v1/whoami", "", other).Status == 401
	}
	if !ended {
		t.Fatal("a session from before the first factor still works")
	}
	if a := s.call(t, "GET", "/api/v1/whoami", "", session); a.Status != 200 {
		t.Fatalf("the session that added the factor ended too: %d", a.Status)
	}
	if n := s.audit(t, "resource_type = 'mfa_totp' AND metadata->>'other_sessions_ended' = '1'"); n != 1 {
		t.Fatalf("audit rows naming the ended session: %d", n)
	}
}

// Strings of a registration the browser sends outside anything signed:
// unknown transports (a NUL in one included) are dropped, and a NUL
// elsewhere (the attachment) is not an outage either. Before, the NUL
// reached a jsonb column and the answer was 503.
func TestRegistrationWithNULsIsNotAnOutage(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	session := s.signIn(t)
	desk := mfatest.New(s.origin)
	a := s.registerTampered(t, session, desk, "k", func(c map[string]any) {
		c["response"].(map[string]any)["transports"] = []string{"usb\x00", "usb", "carrier-pigeon"}
	})
	if a.Status != 201 {
		t.Fatalf("unknown transports: %d %s", a.Status, a.Raw)
	}
	var stored string
	if err := s.pg.Owner.QueryRow(context.Background(), "SELECT credential->>'transport' FROM webauthn_credentials WHERE id = $1", a.Doc["id"]).Scan(&stored); err != nil || stored != `["usb"]` {
		t.Fatalf("transports stored: %s (%v)", stored, err)
	}
	strong := s.reauth(t, session, s.withKey(t, session, desk))
	a = s.registerTampered(t, strong, mfatest.New(s.origin), "k", func(c map[string]any) { c["authenticatorAttachment"] = "cross-platform\x00" })
	if a.Status >= 500 {
		t.Fatalf("NUL in the attachment: %d %s", a.Status, a.Raw)
	}
}
