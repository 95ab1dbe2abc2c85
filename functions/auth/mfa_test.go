package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/glassmkr/guardian/shared/mfa"
	"github.com/glassmkr/guardian/shared/mfa/mfatest"
	"github.com/glassmkr/guardian/shared/testenv"
)

// Second factors are enrolled through the product's own API
// (functions/mfa) with a fresh password session, as the dashboard does.

// passwordStep signs in with the right password, for a user with a
// second factor, and returns the challenge's mfa_token.
func (s *site) passwordStep(t *testing.T) string {
	t.Helper()
	a := s.post(t, "/auth/login", login(s.email, goodPassword), nil)
	token, _ := a.doc["mfa_token"].(string)
	if a.status != 401 || token == "" {
		t.Fatalf("password step: %d %v", a.status, a.doc)
	}
	return token
}

func cookieHeader(tok string) map[string]string {
	return map[string]string{"Cookie": "guardian_token=" + tok}
}

func jsonBody(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// signInPassword signs in a user who has no second factor yet.
func (s *site) signInPassword(t *testing.T) string {
	t.Helper()
	a := s.post(t, "/auth/login", login(s.email, goodPassword), nil)
	if a.status != 204 || a.cookie == nil {
		t.Fatalf("password sign-in: %d %v", a.status, a.doc)
	}
	return a.cookie.Value
}

// enrolTOTP turns an authenticator app on and returns its seed and the
// recovery codes.
func (s *site) enrolTOTP(t *testing.T, tok string) (string, []string) {
	t.Helper()
	a := s.post(t, "/api/v1/mfa/totp", "", cookieHeader(tok))
	seed, _ := a.doc["secret"].(string)
	if a.status != 201 || seed == "" {
		t.Fatalf("begin TOTP: %d %v", a.status, a.doc)
	}
	code, _ := mfa.CodeAt(seed, time.Now())
	a = s.post(t, "/api/v1/mfa/totp/confirm", jsonBody(map[string]string{"code": code}), cookieHeader(tok))
	raw, _ := a.doc["recovery_codes"].([]any)
	if a.status != 200 || len(raw) != mfa.RecoveryCodes {
		t.Fatalf("confirm TOTP: %d %v", a.status, a.doc)
	}
	codes := make([]string, len(raw))
	for i, c := range raw {
		codes[i] = c.(string)
	}
	return seed, codes
}

// enrolKey registers a software security key and returns it.
func (s *site) enrolKey(t *testing.T, tok string) *mfatest.Authenticator {
	t.Helper()
	a := s.post(t, "/api/v1/mfa/webauthn/options", "", cookieHeader(tok))
	opts, _ := json.Marshal(a.doc["options"])
	if a.status != 200 {
		t.Fatalf("registration options: %d %v", a.status, a.doc)
	}
	key := mfatest.New(s.origin)
	cred, err := key.Create(opts)
	if err != nil {
		t.Fatal(err)
	}
	a = s.post(t, "/api/v1/mfa/webauthn", jsonBody(map[string]any{"ceremony": a.doc["ceremony"], "name": "desk key", "credential": json.RawMessage(cred)}), cookieHeader(tok))
	if a.status != 201 || a.doc["name"] != "desk key" {
		t.Fatalf("register: %d %v", a.status, a.doc)
	}
	return key
}

// nextCode is the code of the step after now's: accepted (it is within the
// ±1 window) where the current one was used already.
func nextCode(t *testing.T, seed string, steps int) string {
	t.Helper()
	c, err := mfa.CodeAt(seed, time.Now().Add(time.Duration(steps)*mfa.Period))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// notACode returns six digits that are no code of seed near now.
func notACode(seed string) string {
	near := map[string]bool{}
	for s := -2; s <= 2; s++ {
		c, _ := mfa.CodeAt(seed, time.Now().Add(time.Duration(s)*mfa.Period))
		near[c] = true
	}
	for i := 0; ; i++ {
		c := strings.Repeat(string(rune('0'+i%10)), 6)
		if !near[c] {
			return c
		}
	}
}

func (s *site) auditCount(t *testing.T, where string, args ...any) int {
	t.Helper()
	var n int
	if err := s.pg.Owner.QueryRow(context.Background(), "SELECT count(*) FROM api_audit_log WHERE "+where, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestSignInWithAnAuthenticatorApp(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	seed, recovery := s.enrolTOTP(t, s.signInPassword(t))

	// The right password alone no longer signs in.
	a := s.post(t, "/auth/login", login(s.email, goodPassword), nil)
	token, _ := a.doc["mfa_token"].(string)
	if a.status != 401 || a.doc["code"] != "mfa_required" || a.cookie != nil || token == "" {
		t.Fatalf("password of a user with TOTP: %d %v", a.status, a.doc)
	}
	if methods, _ := a.doc["methods"].([]any); len(methods) != 2 || methods[0] != "totp" || methods[1] != "recovery_code" {
		t.Fatalf("methods %v", a.doc["methods"])
	}
	// A wrong password is still just that.
	if a := s.post(t, "/auth/login", login(s.email, "wrong-"+goodPassword), nil); a.status != 401 || a.doc["code"] != "invalid_credentials" {
		t.Fatalf("wrong password: %d %v", a.status, a.doc)
	}
	if a := s.post(t, "/auth/login/mfa", jsonBody(map[string]string{"mfa_token": token, "code": notACode(seed)}), nil); a.status != 401 || a.doc["code"] != "invalid_second_factor" || a.cookie != nil {
		t.Fatalf("wrong code: %d %v", a.status, a.doc)
	}
	// The confirming code was used: the next step's code signs in, once.
	code := nextCode(t, seed, 1)
	a = s.post(t, "/auth/login/mfa", jsonBody(map[string]string{"mfa_token": token, "code": code}), nil)
	if a.status != 204 || a.cookie == nil || s.whoami(t, a.cookie.Value) != 200 {
		t.Fatalf("right code: %d %v", a.status, a.doc)
	}
	var aal int
	if err := s.pg.Owner.QueryRow(context.Background(), "SELECT aal FROM sessions WHERE user_id = $1 ORDER BY created_at DESC LIMIT 1", s.c.UserID).Scan(&aal); err != nil || aal != 2 {
		t.Fatalf("session assurance %d (%v)", aal, err)
	}
	if a := s.post(t, "/auth/login/mfa", jsonBody(map[string]string{"mfa_token": token, "code": code}), nil); a.status != 401 || a.doc["code"] != "mfa_expired" {
		t.Fatalf("a used challenge: %d %v", a.status, a.doc)
	}
	a = s.post(t, "/auth/login", login(s.email, goodPassword), nil)
	token = a.doc["mfa_token"].(string)
	if a := s.post(t, "/auth/login/mfa", jsonBody(map[string]string{"mfa_token": token, "code": code}), nil); a.status != 401 || a.doc["code"] != "invalid_second_factor" {
		t.Fatalf("a code used twice: %d %v", a.status, a.doc)
	}
	// A recovery code works once.
	if a := s.post(t, "/auth/login/mfa", jsonBody(map[string]string{"mfa_token": token, "code": strings.ToUpper(recovery[0])}), nil); a.status != 204 || a.cookie == nil {
		t.Fatalf("recovery code: %d %v", a.status, a.doc)
	}
	a = s.post(t, "/auth/login", login(s.email, goodPassword), nil)
	if a := s.post(t, "/auth/login/mfa", jsonBody(map[string]string{"mfa_token": a.doc["mfa_token"].(string), "code": recovery[0]}), nil); a.status != 401 {
		t.Fatalf("a recovery code used twice: %d %v", a.status, a.doc)
	}

	// The audit log has the failures and the successes, and no secret.
	if n := s.auditCount(t, "path = '/auth/login/mfa' AND action = 'auth_failed' AND metadata->>'reason' = 'wrong_code' AND user_id = $1", s.c.UserID); n != 1 {
		t.Errorf("wrong-code audit rows: %d", n)
	}
	if n := s.auditCount(t, "path = '/auth/login/mfa' AND action = 'auth_failed' AND metadata->>'reason' = 'replayed_code'"); n != 1 {
		t.Errorf("replayed-code audit rows: %d", n)
	}
	if n := s.auditCount(t, "path = '/auth/login/mfa' AND action = 'create' AND result = 'success' AND metadata->>'second_factor' IN ('totp', 'recovery_code') AND customer_id = $1", s.c.ID); n != 2 {
		t.Errorf("second-factor sign-in audit rows: %d", n)
	}
	if n := s.auditCount(t, "path LIKE '/api/v1/mfa/totp%' AND resource_type = 'mfa_totp' AND action IN ('create', 'update')"); n != 2 {
		t.Errorf("enrolment audit rows: %d", n)
	}
	// The secrets this test sent: the seed, the recovery code (sent in
	// both cases), the TOTP code and the challenge token.
	for _, secret := range []string{seed, recovery[0], code, token} {
		if n := s.auditCount(t, "metadata::text ILIKE '%' || $1 || '%' OR coalesce(resource_id, '') ILIKE '%' || $1 || '%'", secret); n != 0 {
			t.Errorf("%d audit rows hold a seed, a recovery code, a TOTP code or a challenge token", n)
		}
	}
}

func TestTooManyWrongCodesPauseSignInWithoutRevealingTheAccount(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	seed, _ := s.enrolTOTP(t, s.signInPassword(t))
	token := s.post(t, "/auth/login", login(s.email, goodPassword), nil).doc["mfa_token"].(string)
	// The enrolment's code counted as an attempt and was given back.
	for i := range mfa.DefaultLimits.PerUser {
		if a := s.post(t, "/auth/login/mfa", jsonBody(map[string]string{"mfa_token": token, "code": notACode(seed)}), nil); a.status != 401 {
			t.Fatalf("wrong code %d: %d %v", i, a.status, a.doc)
		}
	}
	a := s.post(t, "/auth/login/mfa", jsonBody(map[string]string{"mfa_token": token, "code": nextCode(t, seed, 1)}), nil)
	if a.status != 429 || a.doc["code"] != "too_many_attempts" || a.header.Get("Retry-After") == "" || a.cookie != nil {
		t.Fatalf("the right code over the limit: %d %v", a.status, a.doc)
	}
	// The password step answers as for a user who is not locked out: the
	// right password gets its second-factor prompt, a wrong one what an
	// unknown e-mail gets. The lockout tells neither who has an account
	// nor whether the password was right; the second step, which only
	// the password opens, tells it.
	right := s.post(t, "/auth/login", login(s.email, goodPassword), nil)
	if right.status != 401 || right.doc["code"] != "mfa_required" || right.doc["mfa_token"] == nil {
		t.Fatalf("locked, right password: %d %v, want the second-factor prompt", right.status, right.doc)
	}
	if a := s.post(t, "/auth/login/mfa", jsonBody(map[string]string{"mfa_token": right.doc["mfa_token"].(string), "code": nextCode(t, seed, 2)}), nil); a.status != 429 || a.doc["code"] != "too_many_attempts" {
		t.Fatalf("locked, its second step: %d %v", a.status, a.doc)
	}
	wrong := s.post(t, "/auth/login", login(s.email, "wrong-"+goodPassword), nil)
	unknown := s.post(t, "/auth/login", login("nobody-"+s.email, "wrong-"+goodPassword), nil)
	delete(wrong.doc, "request_id")
	delete(unknown.doc, "request_id")
	if wrong.status != 401 || unknown.status != 401 || jsonBody(wrong.doc) != jsonBody(unknown.doc) {
		t.Fatalf("locked account, wrong password: %d %v; unknown e-mail: %d %v", wrong.status, wrong.doc, unknown.status, unknown.doc)
	}
	wrongForm := url.Values{"email": {s.email}, "password": {"wrong-" + goodPassword}}.Encode()
	if a := s.post(t, "/auth/login", wrongForm, map[string]string{"Content-Type": "application/x-www-form-urlencoded"}); a.status != 303 || a.header.Get("Location") != "/login?error=credentials" {
		t.Fatalf("locked account, wrong password in the form: %d %v", a.status, a.header)
	}
	form := url.Values{"email": {s.email}, "password": {goodPassword}}.Encode()
	if a := s.post(t, "/auth/login", form, map[string]string{"Content-Type": "application/x-www-form-urlencoded"}); a.status != 303 || strings.Contains(a.header.Get("Location"), "error") {
		t.Fatalf("locked form sign-in, right password: %d %v, want the second-factor form", a.status, a.header)
	}
	if n := s.auditCount(t, "action = 'auth_failed' AND metadata->>'reason' = 'second_factor_locked' AND user_id = $1", s.c.UserID); n != 2 {
		t.Errorf("lockout audit rows: %d", n)
	}
}

func TestSignInWithASecurityKey(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	key := s.enrolKey(t, s.signInPassword(t))

	a := s.post(t, "/auth/login", login(s.email, goodPassword), nil)
	token, _ := a.doc["mfa_token"].(string)
	if methods, _ := a.doc["methods"].([]any); a.status != 401 || len(methods) != 2 || methods[0] != "webauthn" {
		t.Fatalf("password of a user with a key: %d %v", a.status, a.doc)
	}
	assertion := func(token string, k *mfatest.Authenticator, header map[string]string) []byte {
		t.Helper()
		a := s.post(t, "/auth/login/webauthn", jsonBody(map[string]string{"mfa_token": token}), header)
		if a.status != 200 {
			t.Fatalf("assertion options: %d %v", a.status, a.doc)
		}
		opts, _ := json.Marshal(a.doc)
		ans, err := k.Get(opts)
		if err != nil {
			t.Fatal(err)
		}
		return ans
	}
	// A look-alike site cannot use the key's answer.
	phish := key.Clone()
	phish.Origin = "http://localhost.evil.example"
	if a := s.post(t, "/auth/login/mfa", jsonBody(map[string]any{"mfa_token": token, "credential": json.RawMessage(assertion(token, phish, nil))}), nil); a.status != 401 || a.doc["code"] != "invalid_second_factor" {
		t.Fatalf("assertion for another origin: %d %v", a.status, a.doc)
	}
	key.Counter = phish.Counter
	a = s.post(t, "/auth/login/mfa", jsonBody(map[string]any{"mfa_token": token, "credential": json.RawMessage(assertion(token, key, nil))}), nil)
	if a.status != 204 || a.cookie == nil || s.whoami(t, a.cookie.Value) != 200 {
		t.Fatalf("security key: %d %v", a.status, a.doc)
	}
	var used *time.Time
	_ = s.pg.Owner.QueryRow(context.Background(), "SELECT last_used_at FROM webauthn_credentials WHERE user_id = $1", s.c.UserID).Scan(&used)
	if used == nil {
		t.Fatal("the key's last use was not recorded")
	}

	// The browser flow without script for the password: a redirect to the
	// second step and the challenge in a cookie the page's script uses.
	form := url.Values{"email": {s.email}, "password": {goodPassword}}.Encode()
	a = s.post(t, "/auth/login", form, map[string]string{"Content-Type": "application/x-www-form-urlencoded"})
	loc, _ := url.Parse(a.header.Get("Location"))
	if a.status != 303 || loc.Path != "/login" || loc.Query().Get("step") != "mfa" || !strings.Contains(loc.Query().Get("methods"), "webauthn") || a.cookie != nil {
		t.Fatalf("form sign-in of a user with a key: %d %v", a.status, a.header)
	}
	var mfaCookie *http.Cookie
	for _, c := range (&http.Response{Header: a.header}).Cookies() {
		if c.Name == mfa.CookieName {
			mfaCookie = c
		}
	}
	if mfaCookie == nil || !mfaCookie.HttpOnly || !mfaCookie.Secure || mfaCookie.SameSite != http.SameSiteStrictMode || mfaCookie.Path != "/auth/" {
		t.Fatalf("challenge cookie %v", mfaCookie)
	}
	withCookie := map[string]string{"Cookie": mfa.CookieName + "=" + mfaCookie.Value}
	ans := assertion("", key, withCookie)
	a = s.post(t, "/auth/login/mfa", jsonBody(map[string]any{"credential": json.RawMessage(ans)}), withCookie)
	if a.status != 204 || a.cookie == nil || !strings.Contains(strings.Join(a.header.Values("Set-Cookie"), "\n"), mfa.CookieName+"=;") {
		t.Fatalf("security key with the cookie: %d %v %v", a.status, a.doc, a.header.Values("Set-Cookie"))
	}
	// Replaying the same assertion is refused (challenge used, counter).
	if a := s.post(t, "/auth/login/mfa", jsonBody(map[string]any{"credential": json.RawMessage(ans)}), withCookie); a.status != 401 || a.doc["code"] != "mfa_expired" {
		t.Fatalf("a replayed assertion: %d %v", a.status, a.doc)
	}
	if n := s.auditCount(t, "path = '/auth/login/mfa' AND result = 'success' AND metadata->>'second_factor' = 'webauthn'"); n != 2 {
		t.Errorf("security-key sign-in audit rows: %d", n)
	}
	if n := s.auditCount(t, "path = '/auth/login/mfa' AND action = 'auth_failed' AND metadata->>'reason' = 'webauthn_failed'"); n != 1 {
		t.Errorf("refused-assertion audit rows: %d", n)
	}
}

func TestReauthAsksForTheSecondFactorAndKeysNeedIt(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	first := s.signInPassword(t)
	seed, recovery := s.enrolTOTP(t, first)

	// The session signed in with the password alone, before the factor
	// existed: sensitive actions now need the factor.
	a := s.post(t, "/api/v1/keys", `{"name":"ci","scope":"read"}`, cookieHeader(first))
	if a.status != 401 || a.doc["code"] != "reauth_required" || a.doc["second_factor"] != true {
		t.Fatalf("key from a password-only session: %d %v", a.status, a.doc)
	}
	if a := s.post(t, "/auth/reauth", `{"password":"wrong-wrong-wrong"}`, cookieHeader(first)); a.status != 401 || a.doc["code"] != "invalid_credentials" {
		t.Fatalf("wrong password: %d %v", a.status, a.doc)
	}
	a = s.post(t, "/auth/reauth", `{"password":"`+goodPassword+`"}`, cookieHeader(first))
	token, _ := a.doc["mfa_token"].(string)
	if a.status != 401 || a.doc["code"] != "mfa_required" || a.cookie != nil {
		t.Fatalf("reauth with a factor: %d %v", a.status, a.doc)
	}
	// The token is bound to the session that asked, and to re-auth.
	other := s.signInWith(t, recovery[0])
	if a := s.post(t, "/auth/reauth/mfa", jsonBody(map[string]string{"mfa_token": token, "code": nextCode(t, seed, 1)}), cookieHeader(other)); a.doc["code"] != "mfa_expired" {
		t.Fatalf("another session used the re-auth: %d %v", a.status, a.doc)
	}
	if a := s.post(t, "/auth/login/mfa", jsonBody(map[string]string{"mfa_token": token, "code": nextCode(t, seed, 1)}), nil); a.doc["code"] != "mfa_expired" {
		t.Fatalf("a re-auth challenge signed in: %d %v", a.status, a.doc)
	}
	a = s.post(t, "/auth/reauth/mfa", jsonBody(map[string]string{"mfa_token": token, "code": nextCode(t, seed, 1)}), cookieHeader(first))
	if a.status != 204 || a.cookie == nil || a.cookie.Value == first {
		t.Fatalf("reauth second step: %d %v", a.status, a.doc)
	}
	if !s.endsWithinASecond(t, first) {
		t.Fatal("the session before the re-auth still works")
	}
	if a := s.post(t, "/api/v1/keys", `{"name":"ci","scope":"read"}`, cookieHeader(a.cookie.Value)); a.status != 201 {
		t.Fatalf("key after the re-auth with the factor: %d %v", a.status, a.doc)
	}
	if n := s.auditCount(t, "path = '/auth/reauth/mfa' AND action = 'update' AND result = 'success' AND metadata->>'second_factor' = 'totp'"); n != 1 {
		t.Errorf("re-auth audit rows: %d", n)
	}
}

// signInWith signs in with the password and a code.
func (s *site) signInWith(t *testing.T, code string) string {
	t.Helper()
	a := s.post(t, "/auth/login", login(s.email, goodPassword), nil)
	a = s.post(t, "/auth/login/mfa", jsonBody(map[string]string{"mfa_token": a.doc["mfa_token"].(string), "code": code}), nil)
	if a.status != 204 || a.cookie == nil {
		t.Fatalf("sign-in with a code: %d %v", a.status, a.doc)
	}
	return a.cookie.Value
}

func TestSecondStepRefusesBadRequests(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	s.enrolTOTP(t, s.signInPassword(t))
	token := s.post(t, "/auth/login", login(s.email, goodPassword), nil).doc["mfa_token"].(string)
	for _, tc := range []struct {
		name, body string
		status     int
		code       string
	}{
		{"no token", `{"code":"123456"}`, 401, "mfa_expired"},
		{"unknown token", `{"mfa_token":"` + strings.Repeat("A", 43) + `","code":"123456"}`, 401, "mfa_expired"},
		{"no factor", `{"mfa_token":"` + token + `"}`, 400, "invalid_request"},
		{"unknown field", `{"mfa_token":"` + token + `","otp":"123456"}`, 400, "invalid_request"},
		{"credential not an object", `{"mfa_token":"` + token + `","credential":"x"}`, 401, "invalid_second_factor"},
	} {
		if a := s.post(t, "/auth/login/mfa", tc.body, nil); a.status != tc.status || a.doc["code"] != tc.code {
			t.Errorf("%s: %d %v", tc.name, a.status, a.doc)
		}
	}
	// No security key: no WebAuthn options.
	if a := s.post(t, "/auth/login/webauthn", `{"mfa_token":"`+token+`"}`, nil); a.status != 409 || a.doc["code"] != "webauthn_unavailable" {
		t.Errorf("options without a key: %d %v", a.status, a.doc)
	}
	// The second-factor page renders what the redirect names.
	resp, err := http.Get(s.URL + "/login?step=mfa&methods=totp,webauthn")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	page := string(b)
	for _, want := range []string{`action="/auth/login/mfa"`, `id="use-key"`, `name="code"`} {
		if !strings.Contains(page, want) {
			t.Errorf("second-factor page lacks %s", want)
		}
	}
	if !strings.Contains(resp.Header.Get("Content-Security-Policy"), "script-src 'self'") {
		t.Error("the page lost its CSP")
	}
}

// A user with a second factor changes the password only from a session
// re-authenticated with it: a stolen cookie plus the password is not
// enough to take the account and sign its owner out everywhere.
func TestPasswordChangeNeedsTheSecondFactor(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	first := s.signInPassword(t)
	seed, _ := s.enrolTOTP(t, first)
	change := jsonBody(map[string]string{"current_password": goodPassword, "new_password": "another long passphrase 42"})
	a := s.post(t, "/auth/password", change, cookieHeader(first))
	if a.status != 401 || a.doc["code"] != "reauth_required" || a.doc["second_factor"] != true {
		t.Fatalf("password change from a password-only session: %d %v", a.status, a.doc)
	}
	full := s.signInWith(t, nextCode(t, seed, 1))
	if a := s.post(t, "/auth/password", change, cookieHeader(full)); a.status != 204 {
		t.Fatalf("password change with the factor: %d %v", a.status, a.doc)
	}
}

// An account scheduled for deletion between the password step and the
// second factor gets no session: the same answer as a wrong credential.
func TestSecondFactorOfAnAccountScheduledForDeletionStartsNoSession(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	_, recovery := s.enrolTOTP(t, s.signInPassword(t))
	token := s.passwordStep(t)
	if _, err := s.pg.Owner.Exec(context.Background(), "UPDATE customers SET deletion_requested_at = now(), delete_after = now() + interval '29 days' WHERE id = $1", s.c.ID); err != nil {
		t.Fatal(err)
	}
	a := s.post(t, "/auth/login/mfa", jsonBody(map[string]string{"mfa_token": token, "code": recovery[0]}), nil)
	if a.status != 401 || a.doc["code"] != "invalid_credentials" || a.cookie != nil {
		t.Fatalf("second factor of a closing account: %d %v", a.status, a.doc)
	}
	if n := s.auditCount(t, "path = '/auth/login/mfa' AND action = 'auth_failed' AND metadata->>'reason' = 'account_closing'"); n != 1 {
		t.Fatalf("%d audit rows for the refusal", n)
	}
}

// A sign-in begun with the old password cannot be finished after the
// password changed: its second step would start a session (stamped as
// just re-authenticated) on a password that no longer works.
func TestPasswordChangeEndsSignInsWaitingForTheirSecondFactor(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	_, recovery := s.enrolTOTP(t, s.signInPassword(t))
	token := s.passwordStep(t)
	owner := s.signInWith(t, recovery[0])
	change := jsonBody(map[string]string{"current_password": goodPassword, "new_password": "another long passphrase 42"})
	if a := s.post(t, "/auth/password", change, cookieHeader(owner)); a.status != 204 {
		t.Fatalf("password change: %d %v", a.status, a.doc)
	}
	a := s.post(t, "/auth/login/mfa", jsonBody(map[string]string{"mfa_token": token, "code": recovery[1]}), nil)
	if a.status != 401 || a.cookie != nil {
		t.Fatalf("the old password's sign-in finished after the change: %d %v", a.status, a.doc)
	}
	if s.whoami(t, owner) != 200 {
		t.Fatal("the session that changed the password ended")
	}
}

// A session started by a second factor counts as re-authenticated from
// when the password was verified, not from when the code was entered:
// sensitive actions get five minutes from the password, as the posture
// says, however long the second step took.
func TestReauthTimeIsThePasswordsNotTheSecondFactors(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	_, recovery := s.enrolTOTP(t, s.signInPassword(t))
	token := s.passwordStep(t)
	ctx := context.Background()
	// The password was checked 290 s ago; the code comes now.
	if _, err := s.pg.Owner.Exec(ctx, `UPDATE mfa_challenges SET verified_at = verified_at - interval '290 seconds' WHERE user_id = $1 AND purpose = 'login'`, s.c.UserID); err != nil {
		t.Fatal(err)
	}
	done := s.post(t, "/auth/login/mfa", jsonBody(map[string]string{"mfa_token": token, "code": recovery[0]}), nil)
	if done.status != 204 || done.cookie == nil {
		t.Fatalf("second step: %d %v", done.status, done.doc)
	}
	var age float64
	if err := s.pg.Owner.QueryRow(ctx, `SELECT extract(epoch FROM now() - reauth_at) FROM sessions WHERE user_id = $1 AND revoked_at IS NULL ORDER BY created_at DESC LIMIT 1`, s.c.UserID).Scan(&age); err != nil {
		t.Fatal(err)
	}
	if age < 280 || age > 400 {
		t.Fatalf("the new session was re-authenticated %.0f s ago, want about 290 (the password's check)", age)
	}
}

// The second step's new session replaces the one the completing request
// came with: a browser that signed in as someone else between the two
// steps must not keep that other session valid behind the new cookie.
func TestSecondStepEndsTheSessionItsRequestCameWith(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	seed, _ := s.enrolTOTP(t, s.signInPassword(t))
	token := s.passwordStep(t)
	other := testenv.NewCustomer(t, s.pg.Owner, s.c.Pepper, s.c.Secret)
	_, between := other.Session(t) // signed in as another user meanwhile
	a := s.post(t, "/auth/login/mfa", jsonBody(map[string]string{"mfa_token": token, "code": nextCode(t, seed, 1)}), cookieHeader(between))
	if a.status != 204 || a.cookie == nil || s.whoami(t, a.cookie.Value) != 200 {
		t.Fatalf("second step: %d %v", a.status, a.doc)
	}
	if !s.endsWithinASecond(t, between) {
		t.Fatal("the session the second step's request came with still works")
	}
}
