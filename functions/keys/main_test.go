package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/glassmkr/guardian/shared/mfa"
	"github.com/glassmkr/guardian/shared/migrate"
	"github.com/glassmkr/guardian/shared/plan"
	"github.com/glassmkr/guardian/shared/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

const pw = "correct-horse-staple-9"

type site struct {
	*testenv.Stack
	c  *testenv.Customer
	pg *testenv.PG
}

func newSite(t *testing.T) *site {
	t.Helper()
	env, c, pg := testenv.EdgeEnv(t)
	c.Password(t, pw)
	return &site{Stack: testenv.StartStack(t, env), c: c, pg: pg}
}

func (s *site) do(t *testing.T, method, path, body string, header map[string]string) (int, map[string]any) {
	t.Helper()
	status, doc, err := s.send(method, path, body, header)
	if err != nil {
		t.Fatal(err)
	}
	return status, doc
}

// send is do for any goroutine: it reports a transport error instead of
// ending the test.
func (s *site) send(method, path, body string, header map[string]string) (int, map[string]any, error) {
	req, err := http.NewRequest(method, s.URL+path, strings.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, err
	}
	var doc map[string]any
	_ = json.Unmarshal(b, &doc)
	return resp.StatusCode, doc, nil
}

// signIn signs in with the password: a fresh session, re-authenticated now.
func (s *site) signIn(t *testing.T) map[string]string {
	t.Helper()
	req, _ := http.NewRequest("POST", s.URL+"/auth/login", strings.NewReader(`{"email":"`+s.email(t)+`","password":"`+pw+`"}`))
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for _, c := range resp.Cookies() {
		if c.Name == "guardian_token" {
			return map[string]string{"Cookie": "guardian_token=" + c.Value, "Origin": s.URL, "Sec-Fetch-Site": "same-origin"}
		}
	}
	t.Fatalf("sign-in failed: %d", resp.StatusCode)
	return nil
}

func (s *site) email(t *testing.T) string {
	var e string
	if err := s.pg.Owner.QueryRow(context.Background(), "SELECT email FROM users WHERE id = $1", s.c.UserID).Scan(&e); err != nil {
		t.Fatal(err)
	}
	return e
}

func bearer(k string) map[string]string { return map[string]string{"Authorization": "Bearer " + k} }

func (s *site) works(t *testing.T, key string) bool {
	status, _ := s.do(t, "GET", "/api/v1/whoami", "", bearer(key))
	return status == 200
}

// refused reports whether the edge refuses key as it refuses any key that
// is not (or no longer) valid: not a 503 or a 429, which "not 200" is too.
func (s *site) refused(t *testing.T, key string) bool {
	status, doc := s.do(t, "GET", "/api/v1/whoami", "", bearer(key))
	return status == 401 && doc["code"] == "invalid_credentials"
}

func TestCreateNeedsARecentPasswordAndShowsTheKeyOnce(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	_, stale := s.c.Session(t) // a session that never confirmed a password
	status, doc := s.do(t, "POST", "/api/v1/keys", `{"name":"ci","scope":"write"}`, map[string]string{"Cookie": "guardian_token=" + stale})
	if status != 401 || doc["code"] != "reauth_required" {
		t.Fatalf("stale session: %d %v", status, doc)
	}
	admin := s.c.AccountKey(t, "admin")
	if status, doc := s.do(t, "POST", "/api/v1/keys", `{"name":"ci","scope":"write"}`, bearer(admin)); status != 403 || doc["code"] != "session_required" {
		t.Fatalf("a key minting a key: %d %v", status, doc)
	}

	session := s.signIn(t)
	status, doc = s.do(t, "POST", "/api/v1/keys", `{"name":"ci","scope":"write","expires_at":"`+time.Now().Add(48*time.Hour).UTC().Format(time.RFC3339)+`"}`, session)
	key, _ := doc["key"].(string)
	if status != 201 || !strings.HasPrefix(key, "gmk_acct_live_") || doc["last4"] != key[len(key)-4:] || doc["expires_at"] == nil {
		t.Fatalf("create: %d %v", status, doc)
	}
	if !s.works(t, key) {
		t.Fatal("the new key does not work")
	}
	status, doc = s.do(t, "GET", "/api/v1/keys", "", session)
	items, _ := doc["items"].([]any)
	if status != 200 || len(items) != 2 {
		t.Fatalf("list: %d %v", status, doc)
	}
	raw, _ := json.Marshal(doc)
	if strings.Contains(string(raw), key[14:40]) || strings.Contains(string(raw), `"key":`) {
		t.Fatal("the list shows a key's secret")
	}
}

// Rotating a key needs what creating one does: a session (a key never
// mints an account key, not even a successor of itself) whose password
// was confirmed within the last five minutes, four and a half minutes ago
// still counting.
func TestRotateNeedsASessionConfirmedWithinFiveMinutes(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	session := s.signIn(t)
	_, doc := s.do(t, "POST", "/api/v1/keys", `{"name":"deploy","scope":"read"}`, session)
	id, _ := doc["id"].(string)
	if id == "" {
		t.Fatalf("create: %v", doc)
	}
	admin := s.c.AccountKey(t, "admin")
	if status, doc := s.do(t, "POST", "/api/v1/keys/"+id+"/rotate", ``, bearer(admin)); status != 403 || doc["code"] != "session_required" {
		t.Fatalf("a key rotating a key: %d %v", status, doc)
	}
	confirmed := func(ago string) {
		t.Helper()
		if _, err := s.pg.Owner.Exec(context.Background(), "UPDATE sessions SET reauth_at = now() - $2::interval WHERE user_id = $1", s.c.UserID, ago); err != nil {
			t.Fatal(err)
		}
	}
	confirmed("6 minutes")
	if status, doc := s.do(t, "POST", "/api/v1/keys/"+id+"/rotate", ``, session); status != 401 || doc["code"] != "reauth_required" {
		t.Fatalf("rotation six minutes after the password: %d %v", status, doc)
	}
	confirmed("4 minutes 30 seconds")
	if status, doc := s.do(t, "POST", "/api/v1/keys/"+id+"/rotate", `{"grace":60}`, session); status != 400 || doc["field"] != "grace" {
		t.Fatalf("a rotation with an unknown member: %d %v", status, doc)
	}
	if status, doc := s.do(t, "POST", "/api/v1/keys/"+id+"/rotate", ``, session); status != 201 {
		t.Fatalf("rotation four and a half minutes after the password: %d %v", status, doc)
	}
	// Each refusal is audited as a rotation of that key, with its code as
	// the reason, whichever step refused it.
	var rows string
	if err := s.pg.Owner.QueryRow(context.Background(), `SELECT string_agg(concat_ws(' ', status_code, action, resource_id, coalesce(metadata->>'reason', '-')), ',' ORDER BY id)
		FROM api_audit_log WHERE path = $1 AND status_code >= 400`, "/api/v1/keys/"+id+"/rotate").Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if want := "403 rotate " + id + " session_required,401 rotate " + id + " reauth_required,400 rotate " + id + " invalid_request"; rows != want {
		t.Errorf("refused rotations audited as\n%s\nwant\n%s", rows, want)
	}
}

func TestRotateWithAndWithoutGrace(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	session := s.signIn(t)
	_, doc := s.do(t, "POST", "/api/v1/keys", `{"name":"deploy","scope":"read"}`, session)
	old, oldID := doc["key"].(string), doc["id"].(string)

	status, doc := s.do(t, "POST", "/api/v1/keys/"+oldID+"/rotate", `{"grace_seconds":3600}`, session)
	graced, gracedID := doc["key"].(string), doc["id"].(string)
	if status != 201 || !s.works(t, graced) || !s.works(t, old) {
		t.Fatalf("rotation with grace: %d %v; both keys must work for the hour", status, doc)
	}
	// Once rotated, the old key cannot be rotated again (a retry would mint
	// a second live successor and push the old key's end out again).
	var endsAt time.Time
	if err := s.pg.Owner.QueryRow(context.Background(), "SELECT revoked_at FROM api_keys WHERE id = $1", oldID).Scan(&endsAt); err != nil {
		t.Fatal(err)
	}
	status, doc = s.do(t, "POST", "/api/v1/keys/"+oldID+"/rotate", `{"grace_seconds":86400}`, session)
	if status != 409 || doc["code"] != "already_rotated" || doc["successor_id"] != gracedID {
		t.Fatalf("second rotation of the same key: %d %v", status, doc)
	}
	var endsAfter time.Time
	if err := s.pg.Owner.QueryRow(context.Background(), "SELECT revoked_at FROM api_keys WHERE id = $1", oldID).Scan(&endsAfter); err != nil {
		t.Fatal(err)
	}
	if !endsAfter.Equal(endsAt) {
		t.Fatalf("a refused rotation moved the old key's end from %v to %v", endsAt, endsAfter)
	}
	status, doc = s.do(t, "POST", "/api/v1/keys/"+gracedID+"/rotate", ``, session)
	fresh := doc["key"].(string)
	if status != 201 || !s.works(t, fresh) {
		t.Fatalf("rotation: %d %v", status, doc)
	}
	deadline := time.Now().Add(time.Second)
	for !s.refused(t, graced) {
		if time.Now().After(deadline) {
			t.Fatal("a key rotated without grace is not refused after 1 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The old key's trail points at its successor.
	_, doc = s.do(t, "GET", "/api/v1/keys", "", session)
	linked := false
	for _, it := range doc["items"].([]any) {
		k := it.(map[string]any)
		if k["id"] == oldID && k["rotated_to"] == gracedID {
			linked = true
		}
	}
	if !linked {
		t.Fatalf("rotated key not linked to its successor: %v", doc)
	}
	// An expired key is not rotated into an expired successor.
	_, doc = s.do(t, "POST", "/api/v1/keys", `{"name":"lapsed","scope":"read"}`, session)
	lapsedID := doc["id"].(string)
	if _, err := s.pg.Owner.Exec(context.Background(), "UPDATE api_keys SET expires_at = now() - interval '1 minute' WHERE id = $1", lapsedID); err != nil {
		t.Fatal(err)
	}
	if status, doc := s.do(t, "POST", "/api/v1/keys/"+lapsedID+"/rotate", ``, session); status != 409 || doc["code"] != "key_expired" {
		t.Fatalf("rotating an expired key: %d %v", status, doc)
	}
	s.c.CollectorKey(t, s.c.ServerID)
	var collectorID string
	if err := s.pg.Owner.QueryRow(context.Background(), "SELECT id FROM api_keys WHERE kind = 'collector' AND customer_id = $1", s.c.ID).Scan(&collectorID); err != nil {
		t.Fatal(err)
	}
	if status, doc := s.do(t, "POST", "/api/v1/keys/"+collectorID+"/rotate", ``, session); status != 422 {
		t.Fatalf("rotating a collector key here: %d %v", status, doc)
	}
}

func TestRevokeNeedsAdminAndStopsTheKey(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	read, admin := s.c.AccountKey(t, "read"), s.c.AccountKey(t, "admin")
	victim := s.c.AccountKey(t, "write")
	var victimID string
	_ = s.pg.Owner.QueryRow(context.Background(), "SELECT id FROM api_keys WHERE last4 = $1", victim[len(victim)-4:]).Scan(&victimID)
	if status, doc := s.do(t, "DELETE", "/api/v1/keys/"+victimID, "", bearer(read)); status != 403 || doc["code"] != "insufficient_scope" {
		t.Fatalf("read key revoking: %d %v", status, doc)
	}
	if status, _ := s.do(t, "DELETE", "/api/v1/keys/"+victimID, "", bearer(admin)); status != 204 {
		t.Fatalf("revoke: %d", status)
	}
	if status, _ := s.do(t, "DELETE", "/api/v1/keys/"+victimID, "", bearer(admin)); status != 204 {
		t.Fatalf("revoking twice: %d", status)
	}
	// The log tells the revocation from the repeat.
	rows, err := s.pg.Owner.Query(context.Background(), `SELECT coalesce(metadata->>'already_ended', '') FROM api_audit_log
		WHERE method = 'DELETE' AND resource_id = $1 AND status_code = 204 ORDER BY id`, victimID)
	if err != nil {
		t.Fatal(err)
	}
	if ended, err := pgx.CollectRows(rows, pgx.RowTo[string]); err != nil || !slices.Equal(ended, []string{"", "true"}) {
		t.Fatalf("already_ended of the two revocations: %q %v, want none then true", ended, err)
	}
	// So does the revocation of a key past its expiry.
	lapsed := s.c.AccountKey(t, "read")
	var lapsedID string
	if err := s.pg.Owner.QueryRow(context.Background(), "UPDATE api_keys SET expires_at = now() - interval '1 minute' WHERE last4 = $1 RETURNING id::text", lapsed[len(lapsed)-4:]).Scan(&lapsedID); err != nil {
		t.Fatal(err)
	}
	if status, _ := s.do(t, "DELETE", "/api/v1/keys/"+lapsedID, "", bearer(admin)); status != 204 {
		t.Fatalf("revoking an expired key: %d", status)
	}
	var ended string
	if err := s.pg.Owner.QueryRow(context.Background(), `SELECT coalesce(metadata->>'already_ended', '') FROM api_audit_log
		WHERE method = 'DELETE' AND resource_id = $1 AND status_code = 204`, lapsedID).Scan(&ended); err != nil || ended != "true" {
		t.Fatalf("already_ended of an expired key's revocation: %q %v, want true", ended, err)
	}
	deadline := time.Now().Add(time.Second)
	for !s.refused(t, victim) {
		if time.Now().After(deadline) {
			t.Fatal("revoked key is not refused after 1 s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	other := testenv.NewCustomer(t, s.pg.Owner, s.c.Pepper, s.c.Secret)
	otherKey := other.AccountKey(t, "read")
	var otherID string
	_ = s.pg.Owner.QueryRow(context.Background(), "SELECT id FROM api_keys WHERE last4 = $1 AND customer_id = $2", otherKey[len(otherKey)-4:], other.ID).Scan(&otherID)
	if status, _ := s.do(t, "DELETE", "/api/v1/keys/"+otherID, "", bearer(admin)); status != 404 {
		t.Fatalf("another customer's key: %d", status)
	}
	if !s.works(t, otherKey) {
		t.Fatal("another customer's key was revoked")
	}
}

func TestBadRequestsNameTheField(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	session := s.signIn(t)
	cases := []struct{ body, field string }{
		{`{"scope":"read"}`, "name"},
		{`{"name":"","scope":"read"}`, "name"},
		{`{"name":"ci\u0000","scope":"read"}`, "name"},
		{`{"name":"line\nbreak","scope":"read"}`, "name"},
		{`{"name":"x","scope":"root"}`, "scope"},
		{`{"name":"x","scope":"read","expires_at":"2020-01-01T00:00:00Z"}`, "expires_at"},
		{`{"name":"x","scope":"read","expires_at":"tomorrow"}`, "expires_at"},
		{`{"name":"` + strings.Repeat("é", 201) + `","scope":"read"}`, "name"},
	}
	for _, tc := range cases {
		status, doc := s.do(t, "POST", "/api/v1/keys", tc.body, session)
		if status != 400 || doc["field"] != tc.field {
			t.Errorf("%s: %d %v", tc.body, status, doc)
		}
	}
	// 200 characters, as the database counts them (400 bytes).
	if status, doc := s.do(t, "POST", "/api/v1/keys", `{"name":"`+strings.Repeat("é", 200)+`","scope":"read"}`, session); status != 201 {
		t.Errorf("a name of 200 characters outside ASCII: %d %v", status, doc)
	}
	if status, doc := s.do(t, "POST", "/api/v1/keys", `{"name":"x","scope":"read","owner":"me"}`, session); status != 400 || !strings.Contains(doc["detail"].(string), "unknown field") {
		t.Errorf("unknown field: %d %v", status, doc)
	}
	if status, doc := s.do(t, "POST", "/api/v1/keys", `{"name":"x","scope":"read"} {"name":"y"}`, session); status != 400 || !strings.Contains(doc["detail"].(string), "more after the object") {
		t.Errorf("trailing data: %d %v", status, doc)
	}
	plain := map[string]string{"Content-Type": "text/plain"}
	for k, v := range session {
		plain[k] = v
	}
	if status, doc := s.do(t, "POST", "/api/v1/keys", `{"name":"x","scope":"read"}`, plain); status != 415 || doc["code"] != "unsupported_media_type" {
		t.Errorf("text/plain body: %d %v", status, doc)
	}
	if status, _ := s.do(t, "POST", "/api/v1/keys/not-a-uuid/rotate", ``, session); status != 404 {
		t.Errorf("bad id: %d", status)
	}
	// Paths and methods no route takes answer problem+json, not text.
	for _, c := range []struct {
		method, path string
		status       int
		code         string
	}{
		{"PATCH", "/api/v1/keys", 405, "method_not_allowed"},
		{"GET", "/api/v1/keys/0b7c2a4e-8f61-4e7a-9d3c-5a1b2c3d4e5f", 405, "method_not_allowed"},
		{"GET", "/api/v1/keysfoo", 404, "not_found"},
	} {
		if status, doc := s.do(t, c.method, c.path, "", session); status != c.status || doc["code"] != c.code {
			t.Errorf("%s %s: %d %v", c.method, c.path, status, doc)
		}
	}
	_, doc := s.do(t, "POST", "/api/v1/keys", `{"name":"y","scope":"read"}`, session)
	if status, doc := s.do(t, "POST", "/api/v1/keys/"+doc["id"].(string)+"/rotate", `{"grace_seconds":90000}`, session); status != 400 || doc["field"] != "grace_seconds" {
		t.Errorf("grace too long: %d %v", status, doc)
	}
	if status, doc := s.do(t, "POST", "/api/v1/keys/"+doc["id"].(string)+"/rotate", `{"grace_seconds":9223372037}`, session); status != 400 || doc["field"] != "grace_seconds" {
		t.Errorf("grace that overflows a duration: %d %v", status, doc)
	}
	var reasons string
	if err := s.pg.Owner.QueryRow(context.Background(), `SELECT string_agg(action || ' ' || coalesce(metadata->>'reason', '-'), ',') FROM api_audit_log
		WHERE path = $1 AND status_code = 400`, "/api/v1/keys/"+doc["id"].(string)+"/rotate").Scan(&reasons); err != nil {
		t.Fatal(err)
	}
	if reasons != "rotate invalid_request,rotate invalid_request" {
		t.Errorf("refused graces audited as %q, want two rotations with reason invalid_request", reasons)
	}
	// An id in upper case is the same id.
	id := doc["id"].(string)
	status, rotated := s.do(t, "POST", "/api/v1/keys/"+strings.ToUpper(id)+"/rotate", ``, session)
	if status != 201 {
		t.Fatalf("rotating by the upper-case id: %d %v", status, rotated)
	}
	var from string
	if err := s.pg.Owner.QueryRow(context.Background(), "SELECT rotated_from::text FROM api_keys WHERE id = $1", rotated["id"]).Scan(&from); err != nil || from != id {
		t.Fatalf("the key rotated by the upper-case id came from %q (%v), want %s", from, err, id)
	}
}

// enrolTOTP turns an authenticator app on for the user through the
// product's API (functions/mfa) and returns its seed.
func (s *site) enrolTOTP(t *testing.T, session map[string]string) string {
	t.Helper()
	status, doc := s.do(t, "POST", "/api/v1/mfa/totp", "", session)
	seed, _ := doc["secret"].(string)
	if status != 201 || seed == "" {
		t.Fatalf("begin TOTP: %d %v", status, doc)
	}
	code, _ := mfa.CodeAt(seed, time.Now())
	if status, doc := s.do(t, "POST", "/api/v1/mfa/totp/confirm", `{"code":"`+code+`"}`, session); status != 200 {
		t.Fatalf("confirm TOTP: %d %v", status, doc)
	}
	return seed
}

func TestCreateAndRotateNeedTheSecondFactorOnceTheUserHasOne(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	session := s.signIn(t)
	_, doc := s.do(t, "POST", "/api/v1/keys", `{"name":"before","scope":"read"}`, session)
	id, _ := doc["id"].(string)
	if id == "" {
		t.Fatalf("create before the factor: %v", doc)
	}
	seed := s.enrolTOTP(t, session)

	// The password was confirmed a moment ago, but without the factor.
	for _, tc := range []struct{ path, body string }{{"/api/v1/keys", `{"name":"after","scope":"read"}`}, {"/api/v1/keys/" + id + "/rotate", ``}} {
		if status, doc := s.do(t, "POST", tc.path, tc.body, session); status != 401 || doc["code"] != "reauth_required" || doc["second_factor"] != true {
			t.Fatalf("%s without the factor: %d %v", tc.path, status, doc)
		}
	}
	status, doc := s.do(t, "POST", "/auth/reauth", `{"password":"`+pw+`"}`, session)
	token, _ := doc["mfa_token"].(string)
	if status != 401 || doc["code"] != "mfa_required" {
		t.Fatalf("reauth: %d %v", status, doc)
	}
	next, _ := mfa.CodeAt(seed, time.Now().Add(mfa.Period))
	req, _ := http.NewRequest("POST", s.URL+"/auth/reauth/mfa", strings.NewReader(`{"mfa_token":"`+token+`","code":"`+next+`"}`))
	req.Header.Set("Content-Type", "application/json")
	for k, v := range session {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	strong := map[string]string{"Origin": s.URL, "Sec-Fetch-Site": "same-origin"}
	for _, c := range resp.Cookies() {
		if c.Name == "guardian_token" {
			strong["Cookie"] = "guardian_token=" + c.Value
		}
	}
	if resp.StatusCode != 204 || strong["Cookie"] == "" {
		t.Fatalf("reauth with the code: %d", resp.StatusCode)
	}
	if status, doc := s.do(t, "POST", "/api/v1/keys", `{"name":"after","scope":"read"}`, strong); status != 201 {
		t.Fatalf("create with the factor: %d %v", status, doc)
	}
	if status, doc := s.do(t, "POST", "/api/v1/keys/"+id+"/rotate", ``, strong); status != 201 {
		t.Fatalf("rotate with the factor: %d %v", status, doc)
	}
	// Still only for five minutes.
	if _, err := s.pg.Owner.Exec(context.Background(), "UPDATE sessions SET reauth_at = now() - interval '6 minutes' WHERE user_id = $1", s.c.UserID); err != nil {
		t.Fatal(err)
	}
	if status, doc := s.do(t, "POST", "/api/v1/keys", `{"name":"later","scope":"read"}`, strong); status != 401 || doc["second_factor"] != true {
		t.Fatalf("create after five minutes: %d %v", status, doc)
	}
}

// Once the account is scheduled for deletion (which revokes every key),
// no key is minted any more, not even from the session that asked for the
// deletion, and that session cannot re-authenticate to try again.
func TestNoKeysForAnAccountScheduledForDeletion(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	session := s.signIn(t)
	status, doc := s.do(t, "POST", "/api/v1/keys", `{"name":"before","scope":"read"}`, session)
	if status != 201 {
		t.Fatalf("create: %d %v", status, doc)
	}
	before, _ := doc["id"].(string)
	if status, doc := s.do(t, "DELETE", "/api/v1/account", "", session); status != 202 {
		t.Fatalf("account deletion: %d %v", status, doc)
	}
	if status, doc := s.do(t, "POST", "/api/v1/keys", `{"name":"after","scope":"admin"}`, session); status != 409 || doc["code"] != "account_closing" {
		t.Fatalf("create after the deletion request: %d %v, want 409 account_closing", status, doc)
	}
	if status, doc := s.do(t, "POST", "/api/v1/keys/"+before+"/rotate", `{}`, session); status != 409 || doc["code"] != "account_closing" {
		t.Fatalf("rotate after the deletion request: %d %v, want 409 account_closing", status, doc)
	}
	if status, doc := s.do(t, "POST", "/auth/reauth", `{"password":"`+pw+`"}`, session); status != 409 || doc["code"] != "account_closing" {
		t.Fatalf("re-auth after the deletion request: %d %v, want 409 account_closing", status, doc)
	}
	var live int
	if err := s.pg.Owner.QueryRow(context.Background(), `SELECT count(*) FROM api_keys WHERE customer_id = $1
		AND (revoked_at IS NULL OR revoked_at > now())`, s.c.ID).Scan(&live); err != nil || live != 0 {
		t.Fatalf("%d keys still live (%v)", live, err)
	}
}

// A session signed out while its request to mint a key runs (the owner
// signing out everywhere, say) mints nothing: the key's transaction takes
// a share lock on the session's row, so it waits for the revocation and
// then finds the session ended. Before, the step-up check alone, made
// before the revocation committed, let the key through.
func TestASessionSignedOutMidRequestMintsNoKey(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	session := s.signIn(t)
	ctx := context.Background()
	var sessionID string
	if err := s.pg.Owner.QueryRow(ctx, "SELECT id::text FROM sessions WHERE user_id = $1 ORDER BY created_at DESC LIMIT 1", s.c.UserID).Scan(&sessionID); err != nil {
		t.Fatal(err)
	}
	revoke, revokePID := testenv.Hold(t, s.pg.Owner, "UPDATE sessions SET revoked_at = now() WHERE id = $1", sessionID)
	type answer struct {
		status int
		doc    map[string]any
	}
	done := make(chan answer, 1)
	go func() {
		status, doc, err := s.send("POST", "/api/v1/keys", `{"name":"race","scope":"write"}`, session)
		if err != nil {
			status, doc = -1, map[string]any{"error": err.Error()}
		}
		done <- answer{status, doc}
	}()
	if _, a, finished := testenv.BlockedBy(t, s.pg.Owner, revokePID, done, migrate.FunctionRole(migrate.DefaultAppRole, "keys")); finished {
		t.Fatalf("the key's transaction did not wait for the revocation: %d %v", a.status, a.doc)
	}
	if err := revoke.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if a := <-done; a.status != 401 || a.doc["code"] != "session_ended" {
		t.Fatalf("a session signed out mid-request: %d %v; want 401 session_ended", a.status, a.doc)
	}
	var keys int
	if err := s.pg.Owner.QueryRow(ctx, "SELECT count(*) FROM api_keys WHERE name = 'race'").Scan(&keys); err != nil || keys != 0 {
		t.Fatalf("%d keys minted by a signed-out session (%v)", keys, err)
	}
}

// An account has at most plan.MaxAccountKeys working account keys:
// keys revoked or expired do not count, keys in a rotation's grace do.
// A mint waits for another of the same customer, so two cannot both
// take the last place.
func TestWorkingKeysAreBounded(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	session := s.signIn(t)
	ctx := context.Background()
	fill := func(n int, revoked, expires string) {
		t.Helper()
		if _, err := s.pg.Owner.Exec(ctx, `INSERT INTO api_keys (customer_id, kind, scope, name, key_hash, last4, revoked_at, expires_at)
			SELECT $1, 'account', 'read', 'filler', sha256(gen_random_uuid()::text::bytea), 'abcd', `+revoked+`, `+expires+` FROM generate_series(1, $2)`,
			s.c.ID, n); err != nil {
			t.Fatal(err)
		}
	}
	// Rows that do not work any more must not count.
	fill(5, "now() - interval '1 minute'", "NULL")
	fill(5, "NULL", "now() - interval '1 minute'")
	var working int
	if err := s.pg.Owner.QueryRow(ctx, "SELECT count(*) FROM api_keys WHERE customer_id = $1 AND kind = 'account' AND name <> 'filler'", s.c.ID).Scan(&working); err != nil {
		t.Fatal(err)
	}
	fill(plan.MaxAccountKeys-working-2, "NULL", "NULL") // room for 2 more, one of which in a rotation's grace
	status, doc := s.do(t, "POST", "/api/v1/keys", `{"name":"last but one","scope":"read"}`, session)
	if status != 201 {
		t.Fatalf("a key under the bound: %d %v", status, doc)
	}
	// A rotation with grace needs room for one more key.
	status, doc = s.do(t, "POST", "/api/v1/keys/"+doc["id"].(string)+"/rotate", `{"grace_seconds":600}`, session)
	if status != 201 {
		t.Fatalf("a rotation with grace at the last free place: %d %v", status, doc)
	}
	graced := doc["id"].(string)
	// At the bound, two mints at once: both refused.
	type answer struct {
		status int
		doc    map[string]any
	}
	answers := make(chan answer, 2)
	for range 2 {
		go func() {
			status, doc, err := s.send("POST", "/api/v1/keys", `{"name":"one too many","scope":"read"}`, session)
			if err != nil {
				status, doc = -1, map[string]any{"error": err.Error()}
			}
			answers <- answer{status, doc}
		}()
	}
	for range 2 {
		if a := <-answers; a.status != 409 || a.doc["code"] != "limit_reached" {
			t.Fatalf("a key past the bound: %d %v; want 409 limit_reached", a.status, a.doc)
		}
	}
	if status, doc := s.do(t, "POST", "/api/v1/keys/"+graced+"/rotate", `{"grace_seconds":600}`, session); status != 409 || doc["code"] != "limit_reached" ||
		!strings.Contains(doc["detail"].(string), "grace_seconds 0") {
		t.Fatalf("a rotation with grace at the bound: %d %v", status, doc)
	}
	// A rotation without grace keeps the count, so it still passes.
	if status, doc := s.do(t, "POST", "/api/v1/keys/"+graced+"/rotate", ``, session); status != 201 {
		t.Fatalf("a rotation without grace at the bound: %d %v", status, doc)
	}
	// One place freed, and taken by a transaction that holds the
	// customer's key lock meanwhile: a mint waits for it, then finds no room.
	if _, err := s.pg.Owner.Exec(ctx, "UPDATE api_keys SET revoked_at = now() WHERE id = (SELECT id FROM api_keys WHERE customer_id = $1 AND name = 'filler' AND revoked_at IS NULL AND expires_at IS NULL LIMIT 1)", s.c.ID); err != nil {
		t.Fatal(err)
	}
	other, otherPID := testenv.Hold(t, s.pg.Owner, "SELECT pg_advisory_xact_lock(hashtextextended('guardian.account_keys:' || $1, 0))", s.c.ID)
	if _, err := other.Exec(ctx, `INSERT INTO api_keys (customer_id, kind, scope, name, key_hash, last4)
		VALUES ($1, 'account', 'read', 'filler', sha256(gen_random_uuid()::text::bytea), 'abcd')`, s.c.ID); err != nil {
		t.Fatal(err)
	}
	go func() {
		status, doc, err := s.send("POST", "/api/v1/keys", `{"name":"raced","scope":"read"}`, session)
		if err != nil {
			status, doc = -1, map[string]any{"error": err.Error()}
		}
		answers <- answer{status, doc}
	}()
	if _, a, finished := testenv.BlockedBy(t, s.pg.Owner, otherPID, answers, migrate.FunctionRole(migrate.DefaultAppRole, "keys")); finished {
		t.Fatalf("a mint did not wait for another holding the customer's keys: %d %v", a.status, a.doc)
	}
	if err := other.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if a := <-answers; a.status != 409 || a.doc["code"] != "limit_reached" {
		t.Fatalf("a mint after another took the last place: %d %v; want 409 limit_reached", a.status, a.doc)
	}
	if err := s.pg.Owner.QueryRow(ctx, `SELECT count(*) FROM api_keys WHERE customer_id = $1 AND kind = 'account'
		AND (revoked_at IS NULL OR revoked_at > now()) AND (expires_at IS NULL OR expires_at > now())`, s.c.ID).Scan(&working); err != nil || working != plan.MaxAccountKeys {
		t.Fatalf("%d working keys (%v), want %d", working, err, plan.MaxAccountKeys)
	}
}

// A key revoked by a transaction that committed while a rotation waited
// for its row is not found: its revocation time lies after the
// rotation's now(), but it was revoked, not rotated.
func TestAKeyRevokedWhileARotationWaitsIsNotFound(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	session := s.signIn(t)
	ctx := context.Background()
	_, doc := s.do(t, "POST", "/api/v1/keys", `{"name":"raced","scope":"read"}`, session)
	keyID := doc["id"].(string)
	revoke, revokePID := testenv.Hold(t, s.pg.Owner, "SELECT 1 FROM api_keys WHERE id = $1 FOR UPDATE", keyID)
	type answer struct {
		status int
		doc    map[string]any
	}
	done := make(chan answer, 1)
	go func() {
		status, doc, err := s.send("POST", "/api/v1/keys/"+keyID+"/rotate", ``, session)
		if err != nil {
			status, doc = -1, map[string]any{"error": err.Error()}
		}
		done <- answer{status, doc}
	}()
	if _, a, finished := testenv.BlockedBy(t, s.pg.Owner, revokePID, done, migrate.FunctionRole(migrate.DefaultAppRole, "keys")); finished {
		t.Fatalf("the rotation did not wait for the key: %d %v", a.status, a.doc)
	}
	// Revoked now, after the rotation's transaction began.
	if _, err := revoke.Exec(ctx, "UPDATE api_keys SET revoked_at = clock_timestamp(), revoked_reason = 'revoked' WHERE id = $1", keyID); err != nil {
		t.Fatal(err)
	}
	if err := revoke.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if a := <-done; a.status != 404 || a.doc["code"] != "not_found" {
		t.Fatalf("rotating a key revoked meanwhile: %d %v; want 404 not_found", a.status, a.doc)
	}
}

// A rotation revokes the key it replaces, an administrator's to do: a
// member rotates the keys it created, not an admin's or a colleague's.
func TestAMemberRotatesOnlyItsOwnKeys(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	ctx := context.Background()
	_, doc := s.do(t, "POST", "/api/v1/keys", `{"name":"admin's ci","scope":"read"}`, s.signIn(t))
	adminsKey, adminsID := doc["key"].(string), doc["id"].(string)
	// The key is another user's, an admin's; the signed-in user becomes a
	// member.
	var admin string
	if err := s.pg.Owner.QueryRow(ctx, "INSERT INTO users (customer_id, email, role) VALUES ($1, 'admin-'||gen_random_uuid()||'@example.com', 'admin') RETURNING id",
		s.c.ID).Scan(&admin); err != nil {
		t.Fatal(err)
	}
	if _, err := s.pg.Owner.Exec(ctx, "UPDATE api_keys SET created_by = $2 WHERE id = $1", adminsID, admin); err != nil {
		t.Fatal(err)
	}
	if _, err := s.pg.Owner.Exec(ctx, "UPDATE users SET role = 'member' WHERE id = $1", s.c.UserID); err != nil {
		t.Fatal(err)
	}
	member := s.signIn(t) // a new session carries the new role
	status, doc := s.do(t, "POST", "/api/v1/keys/"+adminsID+"/rotate", `{"grace_seconds":0}`, member)
	if status != 403 || doc["code"] != "insufficient_scope" || doc["required_scope"] != "admin" {
		t.Fatalf("a member rotating an admin's key: %d %v; want 403 insufficient_scope", status, doc)
	}
	if !s.works(t, adminsKey) {
		t.Fatal("the refused rotation stopped the admin's key")
	}
	// Audited as a refused rotation of that key, with the reason.
	var action, resType, resID, reason, result string
	if err := s.pg.Owner.QueryRow(ctx, `SELECT action, coalesce(resource_type, ''), coalesce(resource_id, ''), coalesce(metadata->>'reason', ''), result
		FROM api_audit_log WHERE path = $1 AND status_code = 403`, "/api/v1/keys/"+adminsID+"/rotate").Scan(&action, &resType, &resID, &reason, &result); err != nil {
		t.Fatal(err)
	}
	if action != "rotate" || resType != "api_key" || resID != adminsID || reason != "insufficient_scope" || result != "denied" {
		t.Fatalf("the refused rotation's audit row: %s %s %s reason %q %s", action, resType, resID, reason, result)
	}
	// Every refusal of the kind says which scope it needs: an admin key
	// rotated, or created, by a member.
	if _, err := s.pg.Owner.Exec(ctx, "UPDATE api_keys SET scope = 'admin' WHERE id = $1", adminsID); err != nil {
		t.Fatal(err)
	}
	if status, doc := s.do(t, "POST", "/api/v1/keys/"+adminsID+"/rotate", `{"grace_seconds":0}`, member); status != 403 || doc["code"] != "insufficient_scope" || doc["required_scope"] != "admin" {
		t.Fatalf("a member rotating an admin key: %d %v; want 403 insufficient_scope, required_scope admin", status, doc)
	}
	if status, doc := s.do(t, "POST", "/api/v1/keys", `{"name":"elevated","scope":"admin"}`, member); status != 403 || doc["code"] != "insufficient_scope" || doc["required_scope"] != "admin" {
		t.Fatalf("a member creating an admin key: %d %v; want 403 insufficient_scope, required_scope admin", status, doc)
	}
	_, doc = s.do(t, "POST", "/api/v1/keys", `{"name":"member's own","scope":"read"}`, member)
	if status, doc := s.do(t, "POST", "/api/v1/keys/"+doc["id"].(string)+"/rotate", ``, member); status != 201 {
		t.Fatalf("a member rotating its own key: %d %v; want 201", status, doc)
	}
}
