package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/glassmkr/guardian/shared/apikey"
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

type answer = testenv.Answer

func (s *site) do(t *testing.T, method, path, body string, header map[string]string) answer {
	t.Helper()
	return s.Stack.Do(t, method, path, body, header)
}

func bearer(key string) map[string]string { return map[string]string{"Authorization": "Bearer " + key} }

func with(h map[string]string, k, v string) map[string]string {
	out := map[string]string{k: v}
	for hk, hv := range h {
		out[hk] = hv
	}
	return out
}

// collectorState tells a collector key's state from whoami, which refuses
// collector keys: 403 insufficient_scope while the key is valid, 401 once
// it is revoked or gone.
func (s *site) collectorState(t *testing.T, key string) int {
	t.Helper()
	a := s.do(t, "GET", "/api/v1/whoami", "", bearer(key))
	if a.Status == 403 && a.Doc["code"] != "insufficient_scope" {
		t.Fatalf("whoami with a collector key: %d %v", a.Status, a.Doc)
	}
	return a.Status
}

// waitRevoked waits for the edge to refuse key (revocation reaches every
// cache within a second).
func (s *site) waitRevoked(t *testing.T, key string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for s.collectorState(t, key) != 401 {
		if time.Now().After(deadline) {
			t.Fatal("a revoked collector key still works")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (s *site) valid(t *testing.T, key string) {
	t.Helper()
	if st := s.collectorState(t, key); st != 403 {
		t.Fatalf("a fresh collector key is refused: %d", st)
	}
}

// signIn returns the headers of a fresh session whose password was just
// confirmed.
func (s *site) signIn(t *testing.T) map[string]string {
	t.Helper()
	var email string
	if err := s.pg.Owner.QueryRow(context.Background(), "SELECT email FROM users WHERE id = $1", s.c.UserID).Scan(&email); err != nil {
		t.Fatal(err)
	}
	a := s.do(t, "POST", "/auth/login", `{"email":"`+email+`","password":"`+pw+`"}`, nil)
	return cookieFrom(t, a)
}

func cookieFrom(t *testing.T, a answer) map[string]string {
	t.Helper()
	resp := http.Response{Header: a.Header}
	for _, c := range resp.Cookies() {
		if c.Name == "guardian_token" && c.Value != "" {
			return map[string]string{"Cookie": "guardian_token=" + c.Value}
		}
	}
	t.Fatalf("no session cookie: %d %s", a.Status, a.Raw)
	return nil
}

func keys(m map[string]any) string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}

// enrolled checks the answer's shape, exactly what collector agents read,
// and returns the server id and the collector key.
func (s *site) enrolled(t *testing.T, a answer, status int, reenrolled bool) (string, string) {
	t.Helper()
	if a.Status != status {
		t.Fatalf("enroll: want %d, got %d %s", status, a.Status, a.Raw)
	}
	server, _ := a.Doc["server"].(map[string]any)
	if keys(a.Doc) != "ingest_url,reenrolled,server" || keys(server) != "collector_key,id,name" {
		t.Fatalf("enroll answer's shape: %s", a.Raw)
	}
	key, _ := server["collector_key"].(string)
	if p, err := apikey.Parse(key); err != nil || p.Kind != apikey.Collector {
		t.Fatalf("collector_key is not a collector key: %q", key)
	}
	if a.Doc["ingest_url"] != s.URL+"/api/v1/ingest" || a.Doc["reenrolled"] != reenrolled {
		t.Fatalf("enroll: %s", a.Raw)
	}
	if a.Header.Get("Cache-Control") != "no-store" || a.Header.Get("Content-Type") != "application/json" {
		t.Fatalf("enroll headers: %v", a.Header)
	}
	id, _ := server["id"].(string)
	return id, key
}

func (s *site) count(t *testing.T, query string, args ...any) int {
	t.Helper()
	var n int
	if err := s.pg.Owner.QueryRow(context.Background(), query, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

// auditRow returns the action, resource type, resource id and metadata of
// the audit row of the last request to method path.
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

func TestEnrollAndReenrollTheWayCollectorAgentsDo(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	key := s.c.AccountKey(t, "write")
	agent := with(bearer(key), "Idempotency-Key", "enroll-4c4c4544-0042-3510-8052-b4c04f384833")
	body := `{"hostname":"web-1.example.com","machine_id":"4c4c4544-0042-3510-8052-b4c04f384833","tags":["prod","eu"]}`

	serverID, first := s.enrolled(t, s.do(t, "POST", "/api/v1/servers", body, agent), 201, false)
	s.valid(t, first)
	var name, hostname, machine string
	var tags []string
	if err := s.pg.Owner.QueryRow(context.Background(), "SELECT name, hostname, machine_id, tags FROM servers WHERE id = $1 AND customer_id = $2",
		serverID, s.c.ID).Scan(&name, &hostname, &machine, &tags); err != nil {
		t.Fatal(err)
	}
	if name != "web-1.example.com" || hostname != name || machine != "4c4c4544-0042-3510-8052-b4c04f384833" || strings.Join(tags, ",") != "prod,eu" {
		t.Fatalf("stored server: %q %q %q %v", name, hostname, machine, tags)
	}
	// Only the key's HMAC is stored, bound to the server.
	h := apikey.Hash(s.c.Pepper, first)
	if n := s.count(t, `SELECT count(*) FROM api_keys WHERE key_hash = $1 AND kind = 'collector' AND server_id = $2 AND scope IS NULL
		AND last4 = $3 AND revoked_at IS NULL`, h[:], serverID, first[len(first)-4:]); n != 1 {
		t.Fatalf("stored collector key rows: %d", n)
	}
	if action, rtype, rid, meta := s.auditRow(t, "POST", "/api/v1/servers"); action != "create" || rtype != "server" || rid != serverID || meta["reenrolled"] != false {
		t.Fatalf("audit: %s %s %s %v", action, rtype, rid, meta)
	}

	// The same machine again, as the agent sends it (the same
	// Idempotency-Key, enroll-<machine_id>) with a new hostname and tags:
	// the same server, a fresh key, the old one stops at once.
	again := `{"hostname":"web-1b.example.com","machine_id":"4c4c4544-0042-3510-8052-b4c04f384833","tags":["prod"]}`
	id2, second := s.enrolled(t, s.do(t, "POST", "/api/v1/servers", again, agent), 200, true)
	if id2 != serverID || second == first {
		t.Fatalf("re-enrollment: server %s (want %s)", id2, serverID)
	}
	s.waitRevoked(t, first)
	s.valid(t, second)
	if n := s.count(t, "SELECT count(*) FROM api_keys WHERE key_hash = $1 AND revoked_reason = 'reenrolled' AND revoked_at <= now()", h[:]); n != 1 {
		t.Fatal("the old key is not marked reenrolled")
	}
	if n := s.count(t, "SELECT count(*) FROM servers WHERE customer_id = $1 AND hostname = 'web-1b.example.com' AND name = 'web-1.example.com'", s.c.ID); n != 1 {
		t.Fatal("re-enrollment should update the hostname and keep the name")
	}
	if action, rtype, rid, meta := s.auditRow(t, "POST", "/api/v1/servers"); action != "update" || rtype != "server" || rid != serverID ||
		meta["reenrolled"] != true || meta["revoked_key_count"] != float64(1) {
		t.Fatalf("audit: %s %s %s %v", action, rtype, rid, meta)
	}

	// And once more without the Idempotency-Key: the same server again.
	id3, third := s.enrolled(t, s.do(t, "POST", "/api/v1/servers", again, bearer(key)), 200, true)
	if id3 != serverID || third == second {
		t.Fatalf("re-enrollment without a key: server %s (want %s)", id3, serverID)
	}
	// From an agent whose base URL ends in a slash: //api/v1/servers.
	if id4, fourth := s.enrolled(t, s.do(t, "POST", "//api/v1/servers", again, bearer(key)), 200, true); id4 != serverID || fourth == third {
		t.Fatalf("re-enrollment at //api/v1/servers: server %s (want %s)", id4, serverID)
	}

	// No plaintext key anywhere in the database.
	for _, q := range []string{
		"SELECT count(*) FROM api_keys WHERE name LIKE '%' || $1 || '%' OR last4 = $1",
		"SELECT count(*) FROM api_audit_log WHERE metadata::text LIKE '%' || $1 || '%'",
		"SELECT count(*) FROM idempotency_keys WHERE key LIKE '%' || $1 || '%'",
	} {
		for _, k := range []string{first[13:50], second[13:50]} {
			if n := s.count(t, q, k); n != 0 {
				t.Fatalf("key material stored: %s", q)
			}
		}
	}
}

func TestIdempotencyKeyReplaysTheFirstServerAndRefusesAnotherBody(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	key := bearer(s.c.AccountKey(t, "write"))
	idem := with(key, "Idempotency-Key", "retry-7")
	serverID, first := s.enrolled(t, s.do(t, "POST", "/api/v1/servers", `{"hostname":"db9","tags":["a"]}`, idem), 201, false)

	// The same request (key order, spacing and an explicit default name do
	// not matter): the first server, as a re-enrollment with a fresh key.
	id2, second := s.enrolled(t, s.do(t, "POST", "/api/v1/servers", ` { "tags": ["a"], "name": "db9", "hostname": "db9" }`, idem), 200, true)
	if id2 != serverID || second == first {
		t.Fatalf("replay made server %s (first %s)", id2, serverID)
	}
	s.waitRevoked(t, first)
	s.valid(t, second)

	a := s.do(t, "POST", "/api/v1/servers", `{"hostname":"db10"}`, idem)
	if a.Status != 422 || a.Doc["code"] != "idempotency_key_reused" || a.Header.Get("Content-Type") != "application/problem+json" {
		t.Fatalf("another body under the same key: %d %s", a.Status, a.Raw)
	}
	s.valid(t, second)
	// A machine_id does not let a key bound to another machine's server
	// (or to a server without one) be taken over.
	m1 := with(key, "Idempotency-Key", "enroll-m1")
	s.enrolled(t, s.do(t, "POST", "/api/v1/servers", `{"hostname":"m1","machine_id":"m1"}`, m1), 201, false)
	for _, tc := range []struct{ header map[string]string }{{m1}, {idem}} {
		a := s.do(t, "POST", "/api/v1/servers", `{"hostname":"m2","machine_id":"m2"}`, tc.header)
		if a.Status != 422 || a.Doc["code"] != "idempotency_key_reused" {
			t.Fatalf("another machine under a bound key (%v): %d %s", tc.header, a.Status, a.Raw)
		}
	}
	// Another customer's identical key is another record.
	other := testenv.NewCustomer(t, s.pg.Owner, s.c.Pepper, s.c.Secret)
	otherID, _ := s.enrolled(t, s.do(t, "POST", "/api/v1/servers", `{"hostname":"db10"}`, with(bearer(other.AccountKey(t, "write")), "Idempotency-Key", "retry-7")), 201, false)
	if otherID == serverID {
		t.Fatal("an Idempotency-Key crossed customers")
	}
	// db1 and db2 of the fixture, db9 and m1.
	if n := s.count(t, "SELECT count(*) FROM servers WHERE customer_id = $1", s.c.ID); n != 4 {
		t.Fatalf("%d servers", n)
	}
	// A record older than a day binds no more.
	if _, err := s.pg.Owner.Exec(context.Background(), "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE customer_id = $1", s.c.ID); err != nil {
		t.Fatal(err)
	}
	s.enrolled(t, s.do(t, "POST", "/api/v1/servers", `{"hostname":"db10"}`, idem), 201, false)
}

func TestConcurrentIdenticalEnrollmentsMakeOneServer(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	key := bearer(s.c.AccountKey(t, "write"))
	for _, tc := range []struct {
		name string
		idem bool
	}{{"as agents send them, with an Idempotency-Key", true}, {"without an Idempotency-Key", false}} {
		machine := testenv.Name("m")
		header := key
		if tc.idem {
			header = with(key, "Idempotency-Key", "enroll-"+machine)
		}
		body := fmt.Sprintf(`{"hostname":"h-%s","machine_id":%q}`, machine, machine)
		var wg sync.WaitGroup
		answers := make([]answer, 10)
		errs := make([]error, len(answers))
		for i := range answers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				answers[i], errs[i] = s.TryDo("POST", "/api/v1/servers", body, header)
			}()
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		created, ids := 0, map[string]bool{}
		for _, a := range answers {
			if a.Status == 201 {
				created++
			}
			id, _ := s.enrolled(t, a, a.Status, a.Status == 200)
			ids[id] = true
		}
		if created != 1 || len(ids) != 1 {
			t.Fatalf("%s: %d created, %d distinct servers", tc.name, created, len(ids))
		}
		if n := s.count(t, "SELECT count(*) FROM servers WHERE customer_id = $1 AND machine_id = $2", s.c.ID, machine); n != 1 {
			t.Fatalf("%s: %d servers", tc.name, n)
		}
		if n := s.count(t, `SELECT count(*) FROM api_keys k JOIN servers v ON v.id = k.server_id
			WHERE v.machine_id = $1 AND k.revoked_at IS NULL`, machine); n != 1 {
			t.Fatalf("%s: %d live collector keys, want 1", tc.name, n)
		}
	}
}

func TestSessionsEnrollAndRotateOnlyAfterConfirmingThePassword(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	_, token := s.c.Session(t) // never confirmed a password
	stale := map[string]string{"Cookie": "guardian_token=" + token}
	if a := s.do(t, "POST", "/api/v1/servers", `{"hostname":"x"}`, stale); a.Status != 401 || a.Doc["code"] != "reauth_required" {
		t.Fatalf("stale session enrolls: %d %s", a.Status, a.Raw)
	}
	if a := s.do(t, "POST", "/api/v1/servers/"+s.c.ServerID+"/rotate-key", "", stale); a.Status != 401 || a.Doc["code"] != "reauth_required" {
		t.Fatalf("stale session rotates: %d %s", a.Status, a.Raw)
	}
	// Listing needs no step-up.
	if a := s.do(t, "GET", "/api/v1/servers", "", stale); a.Status != 200 {
		t.Fatalf("list: %d", a.Status)
	}
	a := s.do(t, "POST", "/auth/reauth", `{"password":"`+pw+`"}`, stale)
	if a.Status != 204 {
		t.Fatalf("reauth: %d %s", a.Status, a.Raw)
	}
	fresh := cookieFrom(t, a)
	serverID, key := s.enrolled(t, s.do(t, "POST", "/api/v1/servers", `{"hostname":"x","name":"X box"}`, fresh), 201, false)
	s.valid(t, key)
	if n := s.count(t, "SELECT count(*) FROM api_keys WHERE server_id = $1 AND created_by = $2", serverID, s.c.UserID); n != 1 {
		t.Fatal("the key does not name the user who enrolled it")
	}
	if a := s.do(t, "POST", "/api/v1/servers/"+serverID+"/rotate-key", "", fresh); a.Status != 201 {
		t.Fatalf("fresh session rotates: %d %s", a.Status, a.Raw)
	}
	s.waitRevoked(t, key)
	// The window closes after five minutes.
	if _, err := s.pg.Owner.Exec(context.Background(), "UPDATE sessions SET reauth_at = now() - interval '6 minutes' WHERE user_id = $1", s.c.UserID); err != nil {
		t.Fatal(err)
	}
	if a := s.do(t, "POST", "/api/v1/servers", `{"hostname":"y"}`, fresh); a.Status != 401 || a.Doc["code"] != "reauth_required" {
		t.Fatalf("six minutes later: %d %s", a.Status, a.Raw)
	}
}

func TestScopesAndCredentials(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	read, write := bearer(s.c.AccountKey(t, "read")), bearer(s.c.AccountKey(t, "write"))
	collector := bearer(s.c.CollectorKey(t, s.c.ServerID))
	cases := []struct {
		name, method, path, body string
		header                   map[string]string
		status                   int
		code                     string
	}{
		{"a read key may not enroll", "POST", "/api/v1/servers", `{"hostname":"x"}`, read, 403, "insufficient_scope"},
		{"a read key lists", "GET", "/api/v1/servers", "", read, 200, ""},
		{"a write key may not delete", "DELETE", "/api/v1/servers/" + s.c.ServerID, "", write, 403, "insufficient_scope"},
		{"a write key may not rotate", "POST", "/api/v1/servers/" + s.c.ServerID + "/rotate-key", "", write, 403, "insufficient_scope"},
		{"a write key may not rotate through an odd path", "POST", "/api/v1/servers//" + s.c.ServerID + "/rotate-key", "", write, 403, "insufficient_scope"},
		// Not the rotation route's shape: refused at the edge, never the
		// collection's write scope and the function's own check alone.
		{"a write key may not rotate through an encoded slash", "POST", "/api/v1/servers/" + s.c.ServerID + "%2Fx/rotate-key", "", write, 404, "not_found"},
		{"a write key may not rotate in capitals", "POST", "/api/v1/servers/" + s.c.ServerID + "%2Fx/ROTATE-KEY/", "", write, 404, "not_found"},
		{"a collector key may not list", "GET", "/api/v1/servers", "", collector, 403, "insufficient_scope"},
		{"a collector key may not enroll", "POST", "/api/v1/servers", `{"hostname":"x"}`, collector, 403, "insufficient_scope"},
		{"no credential", "GET", "/api/v1/servers", "", nil, 401, "unauthenticated"},
		{"a wrong method", "PUT", "/api/v1/servers", `{}`, write, 405, "method_not_allowed"},
	}
	for _, tc := range cases {
		if a := s.do(t, tc.method, tc.path, tc.body, tc.header); a.Status != tc.status || (tc.code != "" && a.Doc["code"] != tc.code) {
			t.Errorf("%s: %d %s", tc.name, a.Status, a.Raw)
		}
	}
	if n := s.count(t, "SELECT count(*) FROM servers WHERE customer_id = $1", s.c.ID); n != 2 {
		t.Fatalf("refused requests changed servers: %d", n)
	}
}

func TestListShowsOnlyTheCustomersServers(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	other := testenv.NewCustomer(t, s.pg.Owner, s.c.Pepper, s.c.Secret)
	s.enrolled(t, s.do(t, "POST", "/api/v1/servers", `{"hostname":"h","machine_id":"m-1","name":"Box","tags":["t"]}`, bearer(s.c.AccountKey(t, "write"))), 201, false)
	a := s.do(t, "GET", "/api/v1/servers", "", bearer(s.c.AccountKey(t, "read")))
	items, _ := a.Doc["items"].([]any)
	if a.Status != 200 || len(items) != 3 {
		t.Fatalf("list: %d %s", a.Status, a.Raw)
	}
	seen := map[string]bool{}
	for _, it := range items {
		m := it.(map[string]any)
		if keys(m) != "created_at,hostname,id,machine_id,name,tags" {
			t.Fatalf("item shape: %v", m)
		}
		if _, err := time.Parse(time.RFC3339Nano, m["created_at"].(string)); err != nil {
			t.Fatalf("created_at: %v", m["created_at"])
		}
		if _, ok := m["tags"].([]any); !ok {
			t.Fatalf("tags is not an array: %v", m)
		}
		seen[m["id"].(string)] = true
		if m["name"] == "Box" && (m["machine_id"] != "m-1" || m["hostname"] != "h") {
			t.Fatalf("item: %v", m)
		}
		if m["name"] == "db1" && m["machine_id"] != nil {
			t.Fatalf("no machine id should be null: %v", m)
		}
	}
	if !seen[s.c.ServerID] || !seen[s.c.OtherServerID] || seen[other.ServerID] {
		t.Fatalf("list mixes customers: %v", seen)
	}
	if action, rtype, _, meta := s.auditRow(t, "GET", "/api/v1/servers"); action != "list" || rtype != "server" || meta["count"] != float64(3) {
		t.Fatalf("audit: %s %s %v", action, rtype, meta)
	}
}

func TestDeleteAndRotate(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	admin := bearer(s.c.AccountKey(t, "admin"))
	other := testenv.NewCustomer(t, s.pg.Owner, s.c.Pepper, s.c.Secret)
	otherKey := other.CollectorKey(t, other.ServerID)

	// Another customer's server, a malformed id and an unknown one are
	// all simply not found; the other customer's key keeps working.
	for _, id := range []string{other.ServerID, "not-a-uuid", "00000000-0000-4000-8000-000000000000"} {
		if a := s.do(t, "DELETE", "/api/v1/servers/"+id, "", admin); a.Status != 404 || a.Doc["code"] != "not_found" {
			t.Errorf("delete %s: %d %s", id, a.Status, a.Raw)
		}
		if a := s.do(t, "POST", "/api/v1/servers/"+id+"/rotate-key", "", admin); a.Status != 404 || a.Doc["code"] != "not_found" {
			t.Errorf("rotate %s: %d %s", id, a.Status, a.Raw)
		}
	}
	s.valid(t, otherKey)

	// Rotation: the new key works, the old ones stop at once.
	old1, old2 := s.c.CollectorKey(t, s.c.ServerID), s.c.CollectorKey(t, s.c.ServerID)
	s.valid(t, old1)
	a := s.do(t, "POST", "/api/v1/servers/"+s.c.ServerID+"/rotate-key", "", admin)
	fresh, _ := a.Doc["collector_key"].(string)
	if a.Status != 201 || keys(a.Doc) != "collector_key" || !strings.HasPrefix(fresh, apikey.PrefixCollector) || a.Header.Get("Cache-Control") != "no-store" {
		t.Fatalf("rotate: %d %s", a.Status, a.Raw)
	}
	s.waitRevoked(t, old1)
	s.waitRevoked(t, old2)
	s.valid(t, fresh)
	h := apikey.Hash(s.c.Pepper, fresh)
	if n := s.count(t, `SELECT count(*) FROM api_keys n JOIN api_keys o ON o.id = n.rotated_from
		WHERE n.key_hash = $1 AND o.revoked_reason = 'rotated' AND o.server_id = n.server_id`, h[:]); n != 1 {
		t.Fatal("the new key does not name the key it replaced")
	}
	path := "/api/v1/servers/" + s.c.ServerID + "/rotate-key"
	var newID string
	_ = s.pg.Owner.QueryRow(context.Background(), "SELECT id::text FROM api_keys WHERE key_hash = $1", h[:]).Scan(&newID)
	if action, rtype, rid, meta := s.auditRow(t, "POST", path); action != "rotate" || rtype != "api_key" || rid != newID ||
		meta["server_id"] != s.c.ServerID || meta["revoked_key_count"] != float64(2) {
		t.Fatalf("audit: %s %s %s %v", action, rtype, rid, meta)
	}

	// A parameter the route does not take is refused, not ignored: the
	// server stays.
	if a := s.do(t, "DELETE", "/api/v1/servers/"+s.c.ServerID+"?dry_run=1", "", admin); a.Status != 400 || a.Doc["code"] != "invalid_filter" || a.Doc["param"] != "dry_run" {
		t.Fatalf("delete with ?dry_run=1: %d %s", a.Status, a.Raw)
	}
	if n := s.count(t, "SELECT count(*) FROM servers WHERE id = $1", s.c.ServerID); n != 1 {
		t.Fatal("a delete with a parameter it does not take deleted the server")
	}

	// Delete: gone with its keys; again, not found.
	if a := s.do(t, "DELETE", "/api/v1/servers/"+s.c.ServerID, "", admin); a.Status != 204 || a.Raw != "" {
		t.Fatalf("delete: %d %s", a.Status, a.Raw)
	}
	s.waitRevoked(t, fresh)
	if n := s.count(t, "SELECT count(*) FROM api_keys WHERE server_id = $1", s.c.ServerID); n != 0 {
		t.Fatal("the server's keys outlived it")
	}
	// Recorded for account-purge, which deletes its ClickHouse rows.
	if n := s.count(t, "SELECT count(*) FROM deleted_servers WHERE server_id = $1 AND customer_id = $2", s.c.ServerID, s.c.ID); n != 1 {
		t.Fatal("the deleted server is not recorded for the purge of its data")
	}
	if a := s.do(t, "DELETE", "/api/v1/servers/"+s.c.ServerID, "", admin); a.Status != 404 {
		t.Fatalf("delete again: %d", a.Status)
	}
	if action, rtype, rid, _ := s.auditRow(t, "DELETE", "/api/v1/servers/"+s.c.ServerID); action != "delete" || rtype != "server" || rid != s.c.ServerID {
		t.Fatalf("audit: %s %s %s", action, rtype, rid)
	}
	if n := s.count(t, "SELECT count(*) FROM servers WHERE id = $1", other.ServerID); n != 1 {
		t.Fatal("the other customer's server is gone")
	}
}

// Deleting a server while an enrolment replaying its Idempotency-Key runs
// takes the two rows' locks in the other order: PostgreSQL breaks the
// deadlock by failing one, and the delete, failed, is tried again instead
// of answering 503.
func TestDeleteRacingAnEnrolmentReplayIsRetried(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	write := bearer(s.c.AccountKey(t, "write"))
	admin := bearer(s.c.AccountKey(t, "admin"))
	// PostgreSQL looks for a deadlock once, deadlock_timeout (1 s) after a
	// wait begins, and fails the waiter that looks. The delete waits first,
	// so it is the one failed, unless more than a second passes before the
	// replay's side waits too (a loaded machine): then the replay is failed,
	// the delete goes through at once, and the scenario is run again.
	for attempt := 1; attempt <= 5; attempt++ {
		if deleteRacedAReplay(t, s, write, admin, fmt.Sprintf("race-%d", attempt)) {
			return
		}
		t.Logf("attempt %d: the replay's side was failed, not the delete's; again", attempt)
	}
	t.Fatal("in 5 attempts, the deadlock never failed the delete's side")
}

// deleteRacedAReplay runs the race once and reports whether the delete
// was the side PostgreSQL failed (and then answered 204); false if the
// replay's side was.
func deleteRacedAReplay(t *testing.T, s *site, write, admin map[string]string, idem string) bool {
	t.Helper()
	ctx := context.Background()
	serverID, _ := s.enrolled(t, s.do(t, "POST", "/api/v1/servers", `{"hostname":"`+idem+`"}`, with(write, "Idempotency-Key", idem)), 201, false)
	// The replay's first lock: the Idempotency-Key's record.
	replay, replayPID := testenv.Hold(t, s.pg.Owner, "SELECT 1 FROM idempotency_keys WHERE customer_id = $1 AND key = $2 FOR UPDATE", s.c.ID, idem)
	done := make(chan answer, 1)
	go func() {
		a, err := s.Stack.TryDo("DELETE", "/api/v1/servers/"+serverID, "", admin)
		if err != nil {
			a.Status, a.Raw = -1, err.Error()
		}
		done <- a
	}()
	if _, a, finished := testenv.BlockedBy(t, s.pg.Owner, replayPID, done); finished {
		t.Fatalf("the delete did not wait for the record: %d %s", a.Status, a.Raw)
	}
	// The replay's second lock, the server, which the delete holds: a
	// deadlock.
	_, err := replay.Exec(ctx, "SELECT 1 FROM servers WHERE id = $1 FOR UPDATE", serverID)
	var pe *pgconn.PgError
	replayFailed := errors.As(err, &pe) && pe.Code == "40P01"
	if err != nil && !replayFailed {
		t.Fatalf("the replay's side of the deadlock: %v", err)
	}
	if err := replay.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if a := <-done; a.Status != 204 {
		t.Fatalf("delete racing a replay: %d %s, want 204", a.Status, a.Raw)
	}
	return !replayFailed
}

func TestAnAccountScheduledForDeletionGetsNoNewKeys(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	write, admin := bearer(s.c.AccountKey(t, "write")), bearer(s.c.AccountKey(t, "admin"))
	if _, err := s.pg.Owner.Exec(context.Background(), "UPDATE customers SET deletion_requested_at = now(), delete_after = now() + interval '30 days' WHERE id = $1", s.c.ID); err != nil {
		t.Fatal(err)
	}
	if a := s.do(t, "POST", "/api/v1/servers", `{"hostname":"x"}`, write); a.Status != 409 || a.Doc["code"] != "account_closing" {
		t.Fatalf("enroll: %d %s", a.Status, a.Raw)
	}
	if a := s.do(t, "POST", "/api/v1/servers/"+s.c.ServerID+"/rotate-key", "", admin); a.Status != 409 {
		t.Fatalf("rotate: %d %s", a.Status, a.Raw)
	}
}

func TestBadInputIsRefusedNamingTheField(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	key := bearer(s.c.AccountKey(t, "write"))
	long := func(n int) string { return strings.Repeat("a", n) }
	tags := func(n int) string {
		t := make([]string, n)
		for i := range t {
			t[i] = fmt.Sprintf("%q", fmt.Sprint("t", i))
		}
		return "[" + strings.Join(t, ",") + "]"
	}
	cases := []struct {
		name, body, field string
		header            map[string]string
	}{
		{"hostname is required", `{"name":"x"}`, "hostname", nil},
		{"hostname may not be empty", `{"hostname":"  "}`, "hostname", nil},
		{"hostname is at most 253 characters", `{"hostname":"` + long(254) + `"}`, "hostname", nil},
		{"hostname must be a string", `{"hostname":42}`, "hostname", nil},
		{"hostname may not hold control characters", `{"hostname":"a\u0000b"}`, "hostname", nil},
		{"machine_id may not be empty", `{"hostname":"h","machine_id":""}`, "machine_id", nil},
		{"machine_id is at most 128 characters", `{"hostname":"h","machine_id":"` + long(129) + `"}`, "machine_id", nil},
		{"machine_id must be a string", `{"hostname":"h","machine_id":["x"]}`, "machine_id", nil},
		{"name is at most 200 characters", `{"hostname":"h","name":"` + long(201) + `"}`, "name", nil},
		{"name must be a string", `{"hostname":"h","name":true}`, "name", nil},
		{"tags must be an array", `{"hostname":"h","tags":"prod"}`, "tags", nil},
		{"tags must hold strings", `{"hostname":"h","tags":["a",1]}`, "tags", nil},
		{"at most 32 tags", `{"hostname":"h","tags":` + tags(33) + `}`, "tags", nil},
		{"a tag is at most 64 characters", `{"hostname":"h","tags":["` + long(65) + `"]}`, "tags", nil},
		{"a tag may not be empty", `{"hostname":"h","tags":[""]}`, "tags", nil},
		{"Idempotency-Key has visible ASCII", `{"hostname":"h"}`, "Idempotency-Key", map[string]string{"Idempotency-Key": "a b"}},
		{"Idempotency-Key is at most 255 characters", `{"hostname":"h"}`, "Idempotency-Key", map[string]string{"Idempotency-Key": long(256)}},
		{"the body must be a JSON object", `["h"]`, "", nil},
		{"the body must be JSON", `hostname=h`, "", nil},
	}
	for _, tc := range cases {
		h := key
		for k, v := range tc.header {
			h = with(h, k, v)
		}
		a := s.do(t, "POST", "/api/v1/servers", tc.body, h)
		field, _ := a.Doc["field"].(string)
		if a.Status != 400 || a.Doc["code"] != "invalid_request" || field != tc.field || a.Header.Get("Content-Type") != "application/problem+json" {
			t.Errorf("%s: %d %s", tc.name, a.Status, a.Raw)
		}
	}
	if a := s.do(t, "POST", "/api/v1/servers", `{"hostname":"`+long(20000)+`"}`, key); a.Status != 413 {
		t.Errorf("oversized body: %d", a.Status)
	}
	if a := s.do(t, "POST", "/api/v1/servers", `{"hostname":"h"}`, with(key, "Content-Type", "text/plain")); a.Status != 415 {
		t.Errorf("text body: %d", a.Status)
	}
	// The limits themselves pass, and unknown members are ignored (agents
	// may send more than Guardian reads).
	s.enrolled(t, s.do(t, "POST", "/api/v1/servers", `{"hostname":"`+long(253)+`","machine_id":"`+long(128)+`","tags":`+tags(32)+`,"os":"linux"}`, key), 201, false)
	s.enrolled(t, s.do(t, "POST", "/api/v1/servers", `{"hostname":"h2","machine_id":null,"name":null,"tags":null}`, key), 201, false)
	if n := s.count(t, "SELECT count(*) FROM servers WHERE customer_id = $1", s.c.ID); n != 4 {
		t.Fatalf("%d servers after the refusals", n)
	}
}

// An account has at most plan.MaxServers servers. At the bound a new
// machine is refused and a known one still enrols again; a first
// enrolment waits for another of the same customer, so two cannot both
// take the last place.
func TestServersAreBounded(t *testing.T) {
	t.Parallel()
	s := newSite(t)
	ctx := context.Background()
	write := bearer(s.c.AccountKey(t, "write"))
	known := `{"hostname":"known","machine_id":"5f1e1e0c-5e1a-4c1d-9e2b-0a1b2c3d4e5f"}`
	s.enrolled(t, s.do(t, "POST", "/api/v1/servers", known, write), 201, false)
	have := s.count(t, "SELECT count(*) FROM servers WHERE customer_id = $1", s.c.ID)
	if _, err := s.pg.Owner.Exec(ctx, `INSERT INTO servers (customer_id, name, hostname)
		SELECT $1, 'filler-' || i, 'filler-' || i FROM generate_series(1, $2) i`, s.c.ID, plan.MaxServers-have-1); err != nil {
		t.Fatal(err)
	}
	s.enrolled(t, s.do(t, "POST", "/api/v1/servers", `{"hostname":"last"}`, write), 201, false)
	if a := s.do(t, "POST", "/api/v1/servers", `{"hostname":"one-too-many"}`, write); a.Status != 409 || a.Doc["code"] != "limit_reached" {
		t.Fatalf("a server past the bound: %d %s; want 409 limit_reached", a.Status, a.Raw)
	}
	if a := s.do(t, "POST", "/api/v1/servers", `{"hostname":"again","machine_id":"00000000-0000-4000-8000-00000000abcd"}`, write); a.Status != 409 {
		t.Fatalf("an unknown machine past the bound: %d %s", a.Status, a.Raw)
	}
	s.enrolled(t, s.do(t, "POST", "/api/v1/servers", known, write), 200, true)
	if n := s.count(t, "SELECT count(*) FROM servers WHERE customer_id = $1", s.c.ID); n != plan.MaxServers {
		t.Fatalf("%d servers, want %d", n, plan.MaxServers)
	}

	// One place freed, and taken by a transaction holding the customer's
	// servers lock meanwhile: an enrolment waits for it, then finds no room.
	if _, err := s.pg.Owner.Exec(ctx, "DELETE FROM servers WHERE customer_id = $1 AND name = 'filler-1'", s.c.ID); err != nil {
		t.Fatal(err)
	}
	other, otherPID := testenv.Hold(t, s.pg.Owner, "SELECT pg_advisory_xact_lock(hashtextextended('guardian.servers:' || $1, 0))", s.c.ID)
	if _, err := other.Exec(ctx, "INSERT INTO servers (customer_id, name, hostname) VALUES ($1, 'taken', 'taken')", s.c.ID); err != nil {
		t.Fatal(err)
	}
	done := make(chan answer, 1)
	go func() {
		a, err := s.Stack.TryDo("POST", "/api/v1/servers", `{"hostname":"raced"}`, write)
		if err != nil {
			a.Status, a.Raw = -1, err.Error()
		}
		done <- a
	}()
	if _, a, finished := testenv.BlockedBy(t, s.pg.Owner, otherPID, done, migrate.FunctionRole(migrate.DefaultAppRole, "servers")); finished {
		t.Fatalf("an enrolment did not wait for another holding the customer's servers: %d %s", a.Status, a.Raw)
	}
	if err := other.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if a := <-done; a.Status != 409 || a.Doc["code"] != "limit_reached" {
		t.Fatalf("an enrolment after another took the last place: %d %s; want 409 limit_reached", a.Status, a.Raw)
	}
}
