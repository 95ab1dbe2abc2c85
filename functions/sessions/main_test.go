package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/glassmkr/guardian/shared/migrate"
	"github.com/glassmkr/guardian/shared/session"
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

type answer = testenv.Answer

func (s *site) do(t *testing.T, method, path, body string, header map[string]string) answer {
	t.Helper()
	return s.Stack.Do(t, method, path, body, header)
}

func cookie(token string) map[string]string {
	return map[string]string{"Cookie": "guardian_token=" + token}
}

func bearer(key string) map[string]string { return map[string]string{"Authorization": "Bearer " + key} }

func cookieFrom(t *testing.T, a answer) map[string]string {
	t.Helper()
	resp := http.Response{Header: a.Header}
	for _, c := range resp.Cookies() {
		if c.Name == "guardian_token" && c.Value != "" {
			return cookie(c.Value)
		}
	}
	t.Fatalf("no session cookie: %d %s", a.Status, a.Raw)
	return nil
}

// signIn signs the fixture's admin in with the password: a session with
// the client's address and user agent, its password just confirmed.
func (s *site) signIn(t *testing.T) map[string]string {
	t.Helper()
	var email string
	if err := s.pg.Owner.QueryRow(context.Background(), "SELECT email FROM users WHERE id = $1", s.c.UserID).Scan(&email); err != nil {
		t.Fatal(err)
	}
	return cookieFrom(t, s.do(t, "POST", "/auth/login", `{"email":"`+email+`","password":"`+pw+`"}`, map[string]string{"User-Agent": "signin-test/1.0"}))
}

// sessionOf stores a session of user (of customer) created at created,
// expiring at expires, and returns its id and token.
func (s *site) sessionOf(t *testing.T, user, customer string, created, expires time.Time) (string, string) {
	t.Helper()
	var id string
	if err := s.pg.Owner.QueryRow(context.Background(), "INSERT INTO sessions (user_id, customer_id, created_at, last_seen_at, expires_at) VALUES ($1, $2, $3, $3, $4) RETURNING id",
		user, customer, created, expires).Scan(&id); err != nil {
		t.Fatal(err)
	}
	token, err := session.Issue(s.c.Secret, id, user, customer, time.Now(), time.Now().Add(session.Lifetime))
	if err != nil {
		t.Fatal(err)
	}
	return id, token
}

// member adds a user with the member role to the fixture's customer.
func (s *site) member(t *testing.T) string {
	t.Helper()
	var id string
	if err := s.pg.Owner.QueryRow(context.Background(), "INSERT INTO users (customer_id, email, role) VALUES ($1, $2, 'member') RETURNING id",
		s.c.ID, testenv.Name("m")+"@example.com").Scan(&id); err != nil {
		t.Fatal(err)
	}
	return id
}

// works reports whether a session token or a key still authenticates,
// waiting up to three seconds for a revocation to reach the edge.
func (s *site) works(t *testing.T, header map[string]string, want bool) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for {
		a := s.do(t, "GET", "/api/v1/whoami", "", header)
		// 403: a collector key, valid but not for whoami.
		ok := a.Status == 200 || a.Status == 403
		if ok == want {
			return
		}
		if !want && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		t.Fatalf("credential works: %v, want %v (%d %s)", ok, want, a.Status, a.Raw)
	}
}

func (s *site) count(t *testing.T, query string, args ...any) int {
	t.Helper()
	var n int
	if err := s.pg.Owner.QueryRow(context.Background(), query, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

func (s *site) auditRow(t *testing.T, method, path string) (action, rtype, rid string, meta map[string]any) {
	t.Helper()
	var raw []byte
	var rt, ri *string
	err := s.pg.Owner.QueryRow(context.Background(), `SELECT action, resource_type, resource_id, metadata FROM api_audit_log
		WHERE customer_id = $1 AND method = $2 AND path = $3 ORDER BY id DESC LIMIT 1`, s.c.ID, method, path).Scan(&action, &rt, &ri, &raw)
	if err != nil {
		t.Fatalf("audit row of %s %s: %v", method, path, err)
	}
	_ = json.Unmarshal(raw, &meta)
	if rt != nil {
		rtype = *rt
	}
	if ri != nil {
		rid = *ri
	}
	return action, rtype, rid, meta
}

func keys(m map[string]any) string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}

func TestListShowsTheUsersLiveSessionsNewestFirst(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	now := time.Now()
	old, _ := s.sessionOf(t, s.c.UserID, s.c.ID, now.Add(-48*time.Hour), now.Add(24*time.Hour))
	expired, _ := s.sessionOf(t, s.c.UserID, s.c.ID, now.Add(-8*24*time.Hour), now.Add(-time.Hour))
	revoked, _ := s.sessionOf(t, s.c.UserID, s.c.ID, now.Add(-time.Hour), now.Add(24*time.Hour))
	if _, err := s.pg.Owner.Exec(context.Background(), "UPDATE sessions SET revoked_at = now() WHERE id = $1", revoked); err != nil {
		t.Fatal(err)
	}
	// The older session was made with a second factor.
	if _, err := s.pg.Owner.Exec(context.Background(), "UPDATE sessions SET aal = 2 WHERE id = $1", old); err != nil {
		t.Fatal(err)
	}
	colleague, _ := s.sessionOf(t, s.member(t), s.c.ID, now, now.Add(24*time.Hour))
	other := testenv.NewCustomer(t, s.pg.Owner, s.c.Pepper, s.c.Secret)
	stranger, _ := other.Session(t)
	me := s.signIn(t)

	a := s.do(t, "GET", "/api/v1/sessions", "", me)
	items, _ := a.Doc["items"].([]any)
	if a.Status != 200 || len(items) != 2 || a.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("list: %d %s", a.Status, a.Raw)
	}
	first, second := items[0].(map[string]any), items[1].(map[string]any)
	if keys(first) != "created_at,current,id,last_seen_at,second_factor,source_ip,user_agent" {
		t.Fatalf("item shape: %v", first)
	}
	if first["current"] != true || first["source_ip"] != "127.0.0.1" || first["user_agent"] != "signin-test/1.0" || first["second_factor"] != false {
		t.Fatalf("the caller's session: %v", first)
	}
	if second["id"] != old || second["current"] != false || second["source_ip"] != nil || second["second_factor"] != true {
		t.Fatalf("the older session: %v", second)
	}
	for _, id := range []string{expired, revoked, colleague, stranger} {
		if strings.Contains(a.Raw, id) {
			t.Fatalf("list shows session %s: %s", id, a.Raw)
		}
	}
	if action, rtype, _, meta := s.auditRow(t, "GET", "/api/v1/sessions"); action != "list" || rtype != "session" || meta["count"] != float64(2) {
		t.Fatalf("audit: %s %s %v", action, rtype, meta)
	}
	// Sessions only: keys are refused at the edge.
	if a := s.do(t, "GET", "/api/v1/sessions", "", bearer(s.c.AccountKey(t, "admin"))); a.Status != 403 || a.Doc["code"] != "insufficient_scope" {
		t.Fatalf("an account key: %d %s", a.Status, a.Raw)
	}
}

func TestRevokeOneSessionOfTheUser(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	now := time.Now()
	mine, mineToken := s.sessionOf(t, s.c.UserID, s.c.ID, now, now.Add(24*time.Hour))
	colleague, colleagueToken := s.sessionOf(t, s.member(t), s.c.ID, now, now.Add(24*time.Hour))
	other := testenv.NewCustomer(t, s.pg.Owner, s.c.Pepper, s.c.Secret)
	stranger, strangerToken := other.Session(t)
	me := s.signIn(t)

	for _, id := range []string{colleague, stranger, "not-a-uuid", "00000000-0000-4000-8000-000000000000"} {
		if a := s.do(t, "DELETE", "/api/v1/sessions/"+id, "", me); a.Status != 404 || a.Doc["code"] != "not_found" {
			t.Errorf("delete %s: %d %s", id, a.Status, a.Raw)
		}
	}
	s.works(t, cookie(colleagueToken), true)
	s.works(t, cookie(strangerToken), true)

	if a := s.do(t, "DELETE", "/api/v1/sessions/"+mine, "", me); a.Status != 204 || a.Raw != "" {
		t.Fatalf("delete: %d %s", a.Status, a.Raw)
	}
	s.works(t, cookie(mineToken), false)
	s.works(t, me, true)
	if action, rtype, rid, _ := s.auditRow(t, "DELETE", "/api/v1/sessions/"+mine); action != "delete" || rtype != "session" || rid != mine {
		t.Fatalf("audit: %s %s %s", action, rtype, rid)
	}
	// Again: already ended, still the user's, so the same answer.
	if a := s.do(t, "DELETE", "/api/v1/sessions/"+mine, "", me); a.Status != 204 {
		t.Fatalf("delete again: %d %s", a.Status, a.Raw)
	}
	// The caller's own session may end this way too.
	a := s.do(t, "GET", "/api/v1/sessions", "", me)
	items, _ := a.Doc["items"].([]any)
	if len(items) != 1 {
		t.Fatalf("list after: %s", a.Raw)
	}
	current := items[0].(map[string]any)["id"].(string)
	if a := s.do(t, "DELETE", "/api/v1/sessions/"+current, "", me); a.Status != 204 {
		t.Fatalf("delete the current session: %d", a.Status)
	}
	s.works(t, me, false)
}

func TestRevokeOthersEndsEveryOtherSessionOfTheUser(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	now := time.Now()
	var mine []map[string]string
	for range 3 {
		_, token := s.sessionOf(t, s.c.UserID, s.c.ID, now, now.Add(24*time.Hour))
		mine = append(mine, cookie(token))
	}
	expired, _ := s.sessionOf(t, s.c.UserID, s.c.ID, now.Add(-8*24*time.Hour), now.Add(-time.Hour))
	_, colleague := s.sessionOf(t, s.member(t), s.c.ID, now, now.Add(24*time.Hour))
	me := s.signIn(t)

	a := s.do(t, "POST", "/api/v1/sessions/revoke-others", "", me)
	if a.Status != 200 || a.Raw != "{\"revoked\":3}\n" {
		t.Fatalf("revoke-others: %d %q", a.Status, a.Raw)
	}
	for _, h := range mine {
		s.works(t, h, false)
	}
	s.works(t, me, true)
	s.works(t, cookie(colleague), true)
	if n := s.count(t, "SELECT count(*) FROM sessions WHERE id = $1 AND revoked_at IS NULL", expired); n != 1 {
		t.Fatal("an expired session was counted as revoked")
	}
	if action, rtype, _, meta := s.auditRow(t, "POST", "/api/v1/sessions/revoke-others"); action != "delete" || rtype != "session" || meta["revoked"] != float64(3) {
		t.Fatalf("audit: %s %s %v", action, rtype, meta)
	}
	if a := s.do(t, "POST", "/api/v1/sessions/revoke-others", "", me); a.Status != 200 || a.Doc["revoked"] != float64(0) {
		t.Fatalf("again: %d %s", a.Status, a.Raw)
	}
	if a := s.do(t, "GET", "/api/v1/sessions/revoke-others", "", me); a.Status != 405 || a.Header.Get("Allow") != "POST" {
		t.Fatalf("GET revoke-others: %d %s", a.Status, a.Raw)
	}
	// No id names no session: 404, not a 405 that allows DELETE.
	if a := s.do(t, "DELETE", "/api/v1/sessions/", "", me); a.Status != 404 || a.Doc["code"] != "not_found" {
		t.Fatalf("DELETE without an id: %d %s", a.Status, a.Raw)
	}
	if a := s.do(t, "GET", "/api/v1/sessions/x", "", me); a.Status != 405 || a.Header.Get("Allow") != "DELETE" {
		t.Fatalf("GET one session: %d %s", a.Status, a.Raw)
	}
}

// Ending another session needs a password confirmed within the re-auth
// window: a stolen cookie must not be able to end each session its owner
// starts (and so keep the owner from ending the thief's). Signing out
// needs nothing.
func TestEndingAnotherSessionNeedsAFreshPassword(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	now := time.Now()
	_, thiefToken := s.sessionOf(t, s.c.UserID, s.c.ID, now.Add(-time.Hour), now.Add(24*time.Hour))
	thief := cookie(thiefToken)
	_, spareToken := s.sessionOf(t, s.c.UserID, s.c.ID, now.Add(-time.Hour), now.Add(24*time.Hour))
	owner := s.signIn(t)
	var ownerID string
	for _, it := range s.do(t, "GET", "/api/v1/sessions", "", owner).Doc["items"].([]any) {
		if m := it.(map[string]any); m["current"] == true {
			ownerID = m["id"].(string)
		}
	}
	if ownerID == "" {
		t.Fatal("the owner's session is not listed as current")
	}

	for _, req := range [][2]string{{"DELETE", "/api/v1/sessions/" + ownerID}, {"POST", "/api/v1/sessions/revoke-others"}} {
		if a := s.do(t, req[0], req[1], "", thief); a.Status != 401 || a.Doc["code"] != "reauth_required" {
			t.Fatalf("%s %s with a stale session: %d %s", req[0], req[1], a.Status, a.Raw)
		}
		if action, rtype, _, _ := s.auditRow(t, req[0], req[1]); action != "delete" || rtype != "session" {
			t.Fatalf("audit of the refusal: %s %s", action, rtype)
		}
	}
	s.works(t, owner, true)
	s.works(t, cookie(spareToken), true)

	// The owner, just signed in, ends the others.
	if a := s.do(t, "POST", "/api/v1/sessions/revoke-others", "", owner); a.Status != 200 || a.Doc["revoked"] != float64(2) {
		t.Fatalf("revoke-others by the owner: %d %s", a.Status, a.Raw)
	}
	s.works(t, thief, false)
	s.works(t, cookie(spareToken), false)

	// A stale session may still sign itself out.
	staleID, staleToken := s.sessionOf(t, s.c.UserID, s.c.ID, now.Add(-time.Hour), now.Add(24*time.Hour))
	if a := s.do(t, "DELETE", "/api/v1/sessions/"+staleID, "", cookie(staleToken)); a.Status != 204 {
		t.Fatalf("signing a stale session out: %d %s", a.Status, a.Raw)
	}
	s.works(t, cookie(staleToken), false)
}

func TestAccountDeletion(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	now := time.Now()
	account, collector := s.c.AccountKey(t, "admin"), s.c.CollectorKey(t, s.c.ServerID)
	_, otherAdmin := s.sessionOf(t, s.c.UserID, s.c.ID, now, now.Add(24*time.Hour))
	_, member := s.sessionOf(t, s.member(t), s.c.ID, now, now.Add(24*time.Hour))
	other := testenv.NewCustomer(t, s.pg.Owner, s.c.Pepper, s.c.Secret)
	otherKey := other.AccountKey(t, "read")

	// Members may not; administrators must have confirmed their password.
	if a := s.do(t, "DELETE", "/api/v1/account", "", cookie(member)); a.Status != 403 || a.Doc["code"] != "insufficient_scope" {
		t.Fatalf("a member: %d %s", a.Status, a.Raw)
	}
	if a := s.do(t, "DELETE", "/api/v1/account", "", bearer(account)); a.Status != 403 {
		t.Fatalf("an admin key: %d %s", a.Status, a.Raw)
	}
	_, staleToken := s.c.Session(t)
	stale := cookie(staleToken)
	if a := s.do(t, "DELETE", "/api/v1/account", "", stale); a.Status != 401 || a.Doc["code"] != "reauth_required" {
		t.Fatalf("a stale session: %d %s", a.Status, a.Raw)
	}
	if n := s.count(t, "SELECT count(*) FROM customers WHERE id = $1 AND deletion_requested_at IS NULL", s.c.ID); n != 1 {
		t.Fatal("a refused request scheduled the deletion")
	}
	a := s.do(t, "POST", "/auth/reauth", `{"password":"`+pw+`"}`, stale)
	if a.Status != 204 {
		t.Fatalf("reauth: %d %s", a.Status, a.Raw)
	}
	me := cookieFrom(t, a)

	a = s.do(t, "DELETE", "/api/v1/account", "", me)
	at, err := time.Parse(time.RFC3339, func() string { v, _ := a.Doc["delete_after"].(string); return v }())
	if a.Status != 202 || keys(a.Doc) != "delete_after" || err != nil {
		t.Fatalf("delete: %d %s", a.Status, a.Raw)
	}
	if d := time.Until(at) - time.Hour; d > time.Minute || d < -time.Minute {
		t.Fatalf("delete_after %s is not an hour ahead", at)
	}
	for _, h := range []map[string]string{bearer(account), bearer(collector), cookie(otherAdmin), cookie(member)} {
		s.works(t, h, false)
	}
	s.works(t, me, true)
	s.works(t, bearer(otherKey), true)
	if n := s.count(t, "SELECT count(*) FROM api_keys WHERE customer_id = $1 AND (revoked_reason IS DISTINCT FROM 'account_deletion' OR revoked_at > now())", s.c.ID); n != 0 {
		t.Fatalf("%d keys not revoked for the deletion", n)
	}
	if n := s.count(t, "SELECT count(*) FROM customers WHERE id = $1 AND deletion_requested_at IS NOT NULL AND delete_after = deletion_requested_at + interval '1 hour'", s.c.ID); n != 1 {
		t.Fatal("the deletion is not scheduled in the database")
	}
	// The row's customer_id names the customer, and is nulled with it; a
	// resource_id would keep the id in the row for good.
	if action, rtype, rid, meta := s.auditRow(t, "DELETE", "/api/v1/account"); action != "delete" || rtype != "customer" || rid != "" ||
		meta["already_requested"] != false || meta["revoked_key_count"] != float64(2) {
		t.Fatalf("audit: %s %s %s %v", action, rtype, rid, meta)
	}

	// Asked again: the same date.
	again := s.do(t, "DELETE", "/api/v1/account", "", me)
	if again.Status != 202 || again.Doc["delete_after"] != a.Doc["delete_after"] {
		t.Fatalf("again: %d %s (first %s)", again.Status, again.Raw, a.Raw)
	}
	if _, _, _, meta := s.auditRow(t, "DELETE", "/api/v1/account"); meta["already_requested"] != true {
		t.Fatalf("audit again: %v", meta)
	}
	if n := s.count(t, "SELECT count(*) FROM customers WHERE id = $1 AND deletion_requested_at IS NULL", other.ID); n != 1 {
		t.Fatal("another customer is scheduled for deletion")
	}
}

func TestSessionsPageListsThisAndOtherSessions(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	other, _ := s.c.Session(t) // another session of the same user, made with a second factor
	if _, err := s.pg.Owner.Exec(context.Background(), "UPDATE sessions SET aal = 2 WHERE id = $1", other); err != nil {
		t.Fatal(err)
	}
	_, mine := s.c.Session(t)

	req, _ := http.NewRequest("GET", s.URL+"/settings/sessions", nil)
	req.AddCookie(&http.Cookie{Name: "guardian_token", Value: mine})
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || !strings.Contains(string(body), "this session") || !strings.Contains(string(body), "Sign out of all other sessions") ||
		strings.Count(string(body), `data-method="DELETE"`) != 1 || resp.Header.Get("Content-Security-Policy") == "" || resp.Header.Get("Cache-Control") != "no-store" ||
		strings.Count(string(body), `<td class="factor">used</td>`) != 1 || strings.Count(string(body), `<td class="factor">not used</td>`) != 1 {
		t.Fatalf("page: %d %v\n%.500s", resp.StatusCode, resp.Header, body)
	}
	// Signed out, a browser is sent to sign in.
	req, _ = http.NewRequest("GET", s.URL+"/settings/sessions", nil)
	req.Header.Set("Accept", "text/html")
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	if resp, err := noRedirect.Do(req); err != nil || resp.StatusCode != 303 || resp.Header.Get("Location") != "/login" {
		t.Fatalf("signed-out page visit: %v %v", err, resp)
	}
}

// A session that a password change ends while its request waits (the
// owner, signing the thief out with a new password) does nothing: ending
// the other sessions, one of them, or scheduling the account's deletion
// waits for the change's lock on the user and then finds its session
// ended. The step-up check alone, made before, let the change through.
func TestASessionEndedByAPasswordChangeMidRequestChangesNothing(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, method, path string
		other              bool // the path ends in the owner's session id
	}{
		{"revoke-others", "POST", "/api/v1/sessions/revoke-others", false},
		{"one other session", "DELETE", "/api/v1/sessions/", true},
		{"the account", "DELETE", "/api/v1/account", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := newSite(t)
			ctx := context.Background()
			now := time.Now()
			owner, _ := s.sessionOf(t, s.c.UserID, s.c.ID, now, now.Add(24*time.Hour))
			thief := s.signIn(t)
			path := tc.path
			if tc.other {
				path += owner
			}
			// The owner's password change, holding the user's row where it
			// ends the other sessions.
			change, changePID := testenv.Hold(t, s.pg.Owner, "SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE", s.c.UserID)
			done := s.blockedBy(t, changePID, tc.method, path, thief)
			if _, err := change.Exec(ctx, "UPDATE sessions SET revoked_at = now() WHERE user_id = $1 AND id <> $2 AND revoked_at IS NULL", s.c.UserID, owner); err != nil {
				t.Fatal(err)
			}
			if err := change.Commit(ctx); err != nil {
				t.Fatal(err)
			}
			if a := <-done; a.Status != 401 || a.Doc["code"] != "session_ended" {
				t.Fatalf("a session ended mid-request: %d %s; want 401 session_ended", a.Status, a.Raw)
			}
			if n := s.count(t, "SELECT count(*) FROM sessions WHERE id = $1 AND revoked_at IS NULL", owner); n != 1 {
				t.Error("the owner's session was ended by the thief's")
			}
			if n := s.count(t, "SELECT count(*) FROM customers WHERE id = $1 AND deletion_requested_at IS NULL", s.c.ID); n != 1 {
				t.Error("the account's deletion was scheduled by an ended session")
			}
		})
	}
}

// Two sessions of a user ending each other at the same moment take turns:
// one ends the other, which then finds itself ended (401), whatever the
// timing; neither deadlocks into a 503, and they do not both win.
func TestTwoSessionsEndingEachOtherTakeTurns(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	for round := range 3 {
		a, b := s.signIn(t), s.signIn(t)
		start := make(chan struct{})
		statuses := make(chan int, 2)
		for _, h := range []map[string]string{a, b} {
			go func() {
				<-start
				ans, err := s.TryDo("POST", "/api/v1/sessions/revoke-others", "", h)
				if err != nil {
					ans.Status = -1
				}
				statuses <- ans.Status
			}()
		}
		close(start)
		got := []int{<-statuses, <-statuses}
		sort.Ints(got)
		if got[0] != 200 || got[1] != 401 {
			t.Fatalf("round %d: two sessions ending each other answered %v, want one 200 and one 401", round, got)
		}
	}
}

// A deletion of the account waiting for the customer's row, which another
// admin's deletion holds while it ends every other session of the account
// (this one's included), changes nothing once that commits: 401, and the
// other admin's session stays. Before, both answered 202 and the second
// ended the first's session, leaving nobody signed in to the account.
func TestADeletionWaitingForAnotherEndsNothing(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	ctx := context.Background()
	now := time.Now()
	other, _ := s.sessionOf(t, s.c.UserID, s.c.ID, now, now.Add(24*time.Hour))
	caller := s.signIn(t)
	// The other admin's deletion, holding the customer's row where it has
	// ended the account's other sessions.
	first, firstPID := testenv.Hold(t, s.pg.Owner, "UPDATE customers SET deletion_requested_at = now(), delete_after = now() + interval '1 hour' WHERE id = $1", s.c.ID)
	if _, err := first.Exec(ctx, "UPDATE sessions SET revoked_at = now() WHERE customer_id = $1 AND id <> $2 AND revoked_at IS NULL", s.c.ID, other); err != nil {
		t.Fatal(err)
	}
	done := s.blockedBy(t, firstPID, "DELETE", "/api/v1/account", caller)
	if err := first.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if a := <-done; a.Status != 401 || a.Doc["code"] != "session_ended" {
		t.Fatalf("a deletion whose session the other ended: %d %s; want 401 session_ended", a.Status, a.Raw)
	}
	if n := s.count(t, "SELECT count(*) FROM sessions WHERE id = $1 AND revoked_at IS NULL", other); n != 1 {
		t.Error("the other admin's session was ended by a session already ended")
	}
}

// blockedBy sends a request in the background and returns its answer's
// channel once the function's query waits for a lock that backend pid
// holds; a request that finishes without waiting fails the test.
func (s *site) blockedBy(t *testing.T, pid int, method, path string, header map[string]string) <-chan answer {
	t.Helper()
	done := make(chan answer, 1)
	go func() {
		a, err := s.TryDo(method, path, "", header)
		if err != nil {
			a = answer{Status: -1, Raw: err.Error()}
		}
		done <- a
	}()
	if _, a, finished := testenv.BlockedBy(t, s.pg.Owner, pid, done, migrate.FunctionRole(migrate.DefaultAppRole, "sessions")); finished {
		t.Fatalf("%s %s did not wait for the lock: %d %s", method, path, a.Status, a.Raw)
	}
	return done
}
