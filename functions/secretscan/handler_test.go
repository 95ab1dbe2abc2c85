package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/glassmkr/guardian/shared/apikey"
	shaudit "github.com/glassmkr/guardian/shared/audit"
	"github.com/glassmkr/guardian/shared/db"
	"github.com/glassmkr/guardian/shared/notify"
	"github.com/glassmkr/guardian/shared/notify/notifytest"
	"github.com/glassmkr/guardian/shared/testenv"
)

// hookSink is a local webhook receiver.
type hookSink struct {
	*httptest.Server
	mu     sync.Mutex
	bodies []string
}

func newHookSink(t testing.TB) *hookSink {
	s := &hookSink{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		s.bodies = append(s.bodies, string(b))
		s.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *hookSink) received() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.bodies...)
}

func (s *hookSink) wait(t testing.TB, n int) []string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(s.received()) < n {
		if time.Now().After(deadline) {
			t.Fatalf("webhook: %d calls, want %d", len(s.received()), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	return s.received()
}

// fixture runs the handler in-process against a real database, a fake
// GitHub key endpoint, a real SMTP relay and a webhook receiver.
type fixture struct {
	t      testing.TB
	pg     *testenv.PG
	pepper []byte
	gh     *fakeGitHub
	relay  *notifytest.Relay
	hooks  *hookSink
	h      *handler
	outbox *outbox
	srv    *httptest.Server
	opts   fixtureOpts
	pool   *pgxpool.Pool
}

type fixtureOpts struct {
	smtpAddr string // default: the fixture's relay
	webhooks []string
	allow    []string
	// stopped: the outbox does not run (a function that stopped before
	// delivering); startOutbox runs one later.
	stopped bool
}

func newFixture(t testing.TB, o fixtureOpts) *fixture {
	t.Helper()
	f := &fixture{t: t, pg: testenv.Postgres(t), pepper: []byte(testenv.Name("pepper-") + testenv.Name("") + testenv.Name("")),
		gh: newFakeGitHub(t), relay: notifytest.StartRelay(t, nil, "", ""), hooks: newHookSink(t)}
	if o.smtpAddr == "" {
		o.smtpAddr = f.relay.Addr
	}
	if o.webhooks == nil {
		o.webhooks, o.allow = []string{f.hooks.URL + "/security"}, []string{"127.0.0.1/32"}
	}
	f.opts = o
	// As deployed: the function's own role, with only its grants.
	pool, err := db.Open(context.Background(), "GUARDIAN_PG_APP_DSN", f.pg.FunctionDSNs["GUARDIAN_PG_DSN_SECRETSCAN"], 4)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	f.pool = pool
	f.outbox = f.newOutbox()
	f.h = &handler{db: pool, hasher: apikey.NewHasher(f.pepper), keys: newKeySource(f.gh.KeysURL(), zap.NewNop()), chain: newChain(),
		outbox: f.outbox, log: zap.NewNop()}
	if !o.stopped {
		f.startOutbox(f.outbox)
	}
	f.srv = httptest.NewServer(f.h.routes())
	t.Cleanup(f.srv.Close)
	return f
}

// newOutbox is an outbox as the function makes it, with short waits.
func (f *fixture) newOutbox() *outbox {
	f.t.Helper()
	mailer, err := notify.NewMailer(notify.SMTPConfig{Addr: f.opts.smtpAddr, From: "Guardian <security@guardian.test>"})
	if err != nil {
		f.t.Fatal(err)
	}
	guard, err := notify.NewGuard(f.opts.allow, nil)
	if err != nil {
		f.t.Fatal(err)
	}
	ob := newOutbox(f.pool, mailer, notify.NewWebhooks(guard), f.opts.webhooks, zap.NewNop())
	ob.retry, ob.maxRetry, ob.poll, ob.lease = 10*time.Millisecond, 20*time.Millisecond, 20*time.Millisecond, 5*time.Second
	return ob
}

// startOutbox runs ob until the test ends.
func (f *fixture) startOutbox(ob *outbox) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		ob.run(ctx)
	}()
	f.t.Cleanup(func() { cancel(); <-done })
}

// customer makes a customer with its admin, a second admin and a member.
func (f *fixture) customer() (*testenv.Customer, []string) {
	f.t.Helper()
	c := testenv.NewCustomer(f.t, f.pg.Owner, f.pepper, []byte("unused-session-secret-unused-session"))
	var admins []string
	var email string
	ctx := context.Background()
	if err := f.pg.Owner.QueryRow(ctx, "SELECT email FROM users WHERE id = $1", c.UserID).Scan(&email); err != nil {
		f.t.Fatal(err)
	}
	admins = append(admins, email)
	second := testenv.Name("second") + "@example.com"
	if _, err := f.pg.Owner.Exec(ctx, "INSERT INTO users (customer_id, email, role) VALUES ($1, $2, 'admin'), ($1, $3, 'member')",
		c.ID, second, testenv.Name("member")+"@example.com"); err != nil {
		f.t.Fatal(err)
	}
	admins = append(admins, second)
	sort.Strings(admins) // the order the function reads them in
	return c, admins
}

// mint stores n account keys of customer in one COPY and returns them.
func (f *fixture) mint(customer string, n int) []string {
	f.t.Helper()
	keys := make([]string, n)
	rows := make([][]any, n)
	for i := range keys {
		k, err := apikey.Generate(apikey.Account)
		if err != nil {
			f.t.Fatal(err)
		}
		h := apikey.Hash(f.pepper, k)
		keys[i], rows[i] = k, []any{customer, "account", "write", fmt.Sprintf("key %d", i), h[:], k[len(k)-4:]}
	}
	if _, err := f.pg.Owner.CopyFrom(context.Background(), pgx.Identifier{"api_keys"},
		[]string{"customer_id", "kind", "scope", "name", "key_hash", "last4"}, pgx.CopyFromRows(rows)); err != nil {
		f.t.Fatal(err)
	}
	return keys
}

type answer struct {
	status int
	header http.Header
	raw    string
	labels []label
	doc    map[string]any
}

func post(t testing.TB, url string, body []byte, header map[string]string) answer {
	t.Helper()
	req, _ := http.NewRequest("POST", url, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "GitHub-Secret-Scanning/1.0")
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode, header: resp.Header, raw: string(b)}
	_ = json.Unmarshal(b, &a.labels)
	_ = json.Unmarshal(b, &a.doc)
	return a
}

// signed posts body with a valid GitHub signature.
func (f *fixture) signed(body []byte) answer {
	f.t.Helper()
	return post(f.t, f.srv.URL+Route, body, f.gh.sign(f.t, katKeyID, body))
}

type item struct {
	Token  string `json:"token"`
	Type   string `json:"type"`
	URL    string `json:"url"`
	Source string `json:"source"`
}

func payload(t testing.TB, items ...item) []byte {
	b, err := json.Marshal(items)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sha(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

func (f *fixture) count(query string, args ...any) int {
	f.t.Helper()
	var n int
	if err := f.pg.Owner.QueryRow(context.Background(), query, args...).Scan(&n); err != nil {
		f.t.Fatalf("%s: %v", query, err)
	}
	return n
}

func (f *fixture) revokedReason(key string) string {
	f.t.Helper()
	h := apikey.Hash(f.pepper, key)
	var reason *string
	if err := f.pg.Owner.QueryRow(context.Background(), "SELECT revoked_reason FROM api_keys WHERE key_hash = $1 AND revoked_at <= now()", h[:]).Scan(&reason); err != nil {
		if err == pgx.ErrNoRows {
			return ""
		}
		f.t.Fatal(err)
	}
	if reason == nil {
		return "(null)"
	}
	return *reason
}

func TestRevokesMatchesLabelsAndNotifies(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	c1, admins1 := f.customer()
	c2, admins2 := f.customer()
	k1 := c1.AccountKey(t, "admin")
	k2 := c1.CollectorKey(t, c1.ServerID)
	k3 := c2.AccountKey(t, "read")
	old := c1.AccountKey(t, "read")
	c1.Revoke(t, old)
	unknown, _ := apikey.Generate(apikey.Account)
	badSum := k1[:len(k1)-1] + string("0123456789abcdef"[(strings.IndexByte("0123456789abcdef", k1[len(k1)-1])+1)%16])
	if _, err := apikey.Parse(badSum); err == nil {
		badSum = k1[:len(k1)-4] + "zzzz"
	}
	leakURL := "https://github.com/octo/app/blob/0123456789abcdef0123456789abcdef01234567/config/prod.env?plain=1#L7"
	body := payload(t,
		item{k1, "guardian_account_key", leakURL, "content"},
		item{unknown, "guardian_account_key", "https://github.com/x/y/blob/a/b", "content"},
		item{k2, "guardian_collector_key", "https://github.com/octo/app/blob/abc/agent.yml", "commit"},
		item{badSum, "guardian_account_key", "https://github.com/x/y/blob/a/c", "content"},
		item{k1, "guardian_account_key", "https://github.com/dup/dup/blob/a/b", "issue"}, // repeated
		item{k3, "guardian_account_key", "https://gist.github.com/octo/123", "gist"},
		item{old, "guardian_account_key", "https://github.com/x/y/blob/a/d", "content"},
		item{"ghp_notoursatall", "guardian_account_key", "https://github.com/x/y/blob/a/e", "content"},
	)
	a := f.signed(body)
	if a.status != 200 || a.header.Get("Content-Type") != "application/json" {
		t.Fatalf("%d %s", a.status, a.raw)
	}
	want := []label{
		{sha(k1), "guardian_account_key", TruePositive},
		{sha(unknown), "guardian_account_key", FalsePositive},
		{sha(k2), "guardian_collector_key", TruePositive},
		{sha(badSum), "guardian_account_key", FalsePositive},
		{sha(k3), "guardian_account_key", TruePositive},
		{sha(old), "guardian_account_key", TruePositive},
		{sha("ghp_notoursatall"), "guardian_account_key", FalsePositive},
	}
	if len(a.labels) != len(want) {
		t.Fatalf("labels: %s", a.raw)
	}
	for i := range want {
		if a.labels[i] != want[i] {
			t.Errorf("label %d: %+v, want %+v", i, a.labels[i], want[i])
		}
	}
	if strings.Contains(a.raw, k1) || strings.ToLower(a.labels[0].TokenHash) != a.labels[0].TokenHash {
		t.Fatal("the answer must carry lower-case hashes, never tokens")
	}
	for _, k := range []string{k1, k2, k3} {
		if r := f.revokedReason(k); r != RevokedReason {
			t.Errorf("key ...%s: revoked_reason %q", k[len(k)-4:], r)
		}
	}
	if r := f.revokedReason(old); r != "test" {
		t.Errorf("a key revoked before was revoked again: %q", r)
	}

	// One audit row per revoked key, in its customer's log.
	rows, err := f.pg.Owner.Query(context.Background(), `SELECT customer_id::text, resource_id, action, result, status_code, request_id, metadata::text
		FROM api_audit_log WHERE resource_type = 'api_key' ORDER BY customer_id, resource_id`)
	if err != nil {
		t.Fatal(err)
	}
	type row struct {
		customer, resource, action, result string
		status                             int
		reqID, meta                        string
	}
	audit, _ := pgx.CollectRows(rows, func(r pgx.CollectableRow) (row, error) {
		var x row
		err := r.Scan(&x.customer, &x.resource, &x.action, &x.result, &x.status, &x.reqID, &x.meta)
		return x, err
	})
	if len(audit) != 3 {
		t.Fatalf("%d audit rows, want 3: %+v", len(audit), audit)
	}
	perCustomer := map[string]int{}
	ids := map[string]bool{}
	for _, r := range audit {
		perCustomer[r.customer]++
		ids[r.reqID] = true
		var meta map[string]any
		_ = json.Unmarshal([]byte(r.meta), &meta)
		if r.action != "delete" || r.result != "success" || r.status != 200 || meta["reason"] != RevokedReason || !strings.HasPrefix(meta["url"].(string), "https://") {
			t.Errorf("audit row: %+v", r)
		}
		// k1, reported in two places, says so; the others were in one.
		if first := meta["url"] == leakURL; (meta["other_locations"] == 1.0) != first || first && meta["source"] != "content" {
			t.Errorf("audit row of a key in %v places: %s", map[bool]int{true: 2, false: 1}[first], r.meta)
		}
		for _, k := range []string{k1, k2, k3} {
			if strings.Contains(r.meta, k[14:40]) {
				t.Fatal("key material in the audit log")
			}
		}
	}
	if perCustomer[c1.ID] != 2 || perCustomer[c2.ID] != 1 || len(ids) != 3 {
		t.Fatalf("audit rows per customer %v, request ids %v", perCustomer, ids)
	}

	// Each admin of each customer gets one e-mail (one per recipient, so a
	// refused address keeps it from nobody else) naming the customer's
	// keys by last 4 and where they were found; the operator's webhook
	// hears of each customer too.
	msgs := f.relay.WaitMessages(t, len(admins1)+len(admins2), 10*time.Second)
	byRcpt := map[string]notifytest.Received{}
	for _, m := range msgs {
		byRcpt[strings.Join(m.To, ",")] = m
	}
	if len(byRcpt) != len(admins1)+len(admins2) {
		t.Fatalf("recipients: %v, want one message each to %v and %v", keysOf(byRcpt), admins1, admins2)
	}
	for _, a := range admins1 {
		m1, ok := byRcpt[a]
		if !ok || !strings.Contains(m1.Text, k1[len(k1)-4:]) || !strings.Contains(m1.Text, k2[len(k2)-4:]) || !strings.Contains(m1.Text, leakURL) ||
			!strings.Contains(m1.Text, "and at:     https://github.com/dup/dup/blob/a/b") || !strings.Contains(m1.Text, "Source:     issue") ||
			!strings.Contains(m1.Subject, "2 API keys") || strings.Contains(m1.Text, k3[len(k3)-4:]) {
			t.Fatalf("e-mail to %s (%v):\n%s", a, ok, m1.Text)
		}
	}
	for _, a := range admins2 {
		m2, ok := byRcpt[a]
		if !ok || !strings.Contains(m2.Text, k3[len(k3)-4:]) || !strings.Contains(m2.Text, "https://gist.github.com/octo/123") || strings.Contains(m2.Text, k1[len(k1)-4:]) {
			t.Fatalf("e-mail to %s (%v):\n%s", a, ok, m2.Text)
		}
	}
	for _, m := range msgs {
		for _, k := range []string{k1, k2, k3, old} {
			if strings.Contains(string(m.Data), k[14:57]) || strings.Contains(m.Text, k[14:57]) {
				t.Fatal("an e-mail carries a key")
			}
		}
	}
	hooks := f.hooks.wait(t, 2)
	joined := strings.Join(hooks, "\n")
	if !strings.Contains(joined, c1.ID) || !strings.Contains(joined, c2.ID) || !strings.Contains(joined, `"event":"api_key.revoked"`) ||
		strings.Contains(joined, k1[14:57]) || !strings.Contains(joined, k1[len(k1)-4:]) ||
		!strings.Contains(joined, `"locations":[{"source":"content","url":"`+leakURL+`"},{"source":"issue","url":"https://github.com/dup/dup/blob/a/b"}]`) {
		t.Fatalf("webhooks: %s", joined)
	}

	// The keys found again: still true positives, revoked once, not
	// notified again, and each customer's log says where its key was found
	// again (migration 0045), but only at a place not reported before
	// (0046): the same report again (GitHub sends it again when our answer
	// is late) adds nothing, and a report naming a known place and a new
	// one adds a row naming the new one. The key revoked for another
	// reason is left out, as before.
	k1Again := payload(t, item{k1, "guardian_account_key", leakURL, "content"},
		item{k1, "guardian_account_key", "https://github.com/fork/app/blob/a/prod.env", "content"})
	for _, b := range [][]byte{body, k1Again, body, k1Again} {
		if a = f.signed(b); a.status != 200 || a.labels[0].Label != TruePositive {
			t.Fatalf("again: %d %s", a.status, a.raw)
		}
	}
	if n := f.count("SELECT count(*) FROM api_audit_log WHERE metadata->>'already_revoked' = 'true' AND action = 'delete' AND resource_type = 'api_key'"); n != 1 {
		t.Fatalf("%d audit rows of keys found again, want 1 (the one new place)", n)
	}
	if n := f.count("SELECT count(*) FROM api_audit_log WHERE customer_id = $1 AND metadata->>'url' = 'https://github.com/fork/app/blob/a/prod.env' AND metadata->>'already_revoked' = 'true' AND metadata->>'other_locations' = '1'", c1.ID); n != 1 {
		t.Fatalf("%d rows in the customer's log of the key found at a new place, want 1", n)
	}
	oldHash := apikey.Hash(f.pepper, old)
	if n := f.count("SELECT count(*) FROM api_audit_log WHERE resource_id = (SELECT id::text FROM api_keys WHERE key_hash = $1)", oldHash[:]); n != 0 {
		t.Fatalf("%d audit rows of the key revoked for another reason", n)
	}
	// The rows are chained, in one chain: verify holds them, and finds an
	// edit to one, even by the table's owner.
	ctx := context.Background()
	if rep, err := shaudit.Verify(ctx, f.pg.Owner); err != nil || !rep.OK() || rep.Rows != 4 || rep.Writers != 1 || rep.Unchained != 0 {
		t.Fatalf("verify: %+v %v", rep, err)
	}
	for _, stmt := range []string{
		"ALTER TABLE api_audit_log DISABLE TRIGGER api_audit_log_no_update_delete",
		"UPDATE api_audit_log SET metadata = metadata || '{\"url\":\"https://example.com/elsewhere\"}' WHERE writer_seq = 2",
		"ALTER TABLE api_audit_log ENABLE TRIGGER api_audit_log_no_update_delete",
	} {
		if _, err := f.pg.Owner.Exec(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
	if rep, err := shaudit.Verify(ctx, f.pg.Owner); err != nil || rep.OK() || rep.Breaks[0].WriterSeq != 2 || rep.Breaks[0].Reason != "content" {
		t.Fatalf("an edited revocation row: %+v %v", rep, err)
	}
	time.Sleep(100 * time.Millisecond)
	if len(f.relay.Messages()) != len(admins1)+len(admins2) || len(f.hooks.received()) != 2 {
		t.Fatal("a repeated report notified again")
	}
}

func keysOf[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestRefusals(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	c, _ := f.customer()
	victim := c.AccountKey(t, "admin")
	body := payload(t, item{victim, "guardian_account_key", "https://github.com/a/b/blob/c/d", "content"})
	// A signature whose base64 has a '+' or '/', so that its URL-safe
	// spelling differs.
	good := f.gh.sign(t, katKeyID, body)
	for !strings.ContainsAny(good[HeaderSignature], "+/") {
		good = f.gh.sign(t, katKeyID, body)
	}
	urlSafe := base64.URLEncoding.EncodeToString(mustB64(t, good[HeaderSignature]))
	other := f.gh.sign(t, f.gh.rotate(t), body) // a real GitHub key, but not the one named
	rawRS := func() string {
		sig, _ := base64.StdEncoding.DecodeString(good[HeaderSignature])
		r, s, err := parseSignature(good[HeaderSignature])
		if err != nil || len(sig) == 0 {
			t.Fatal(err)
		}
		return base64.StdEncoding.EncodeToString(append(r.FillBytes(make([]byte, 32)), s.FillBytes(make([]byte, 32))...))
	}()
	with := func(k, v string) map[string]string {
		out := map[string]string{HeaderKeyID: good[HeaderKeyID], HeaderSignature: good[HeaderSignature]}
		if v == "" {
			delete(out, k)
		} else {
			out[k] = v
		}
		return out
	}
	cases := []struct {
		name   string
		body   []byte
		header map[string]string
		status int
		code   string
	}{
		{"no key identifier", body, with(HeaderKeyID, ""), 400, "missing_signature"},
		{"no signature", body, with(HeaderSignature, ""), 400, "missing_signature"},
		{"an unknown key identifier", body, with(HeaderKeyID, strings.Repeat("ab", 32)), 401, "unknown_key_identifier"},
		{"a junk key identifier", body, with(HeaderKeyID, "../../etc/passwd"), 401, "unknown_key_identifier"},
		{"another key's signature", body, with(HeaderSignature, other[HeaderSignature]), 401, "invalid_signature"},
		{"a signature of another body", body, with(HeaderSignature, f.gh.sign(t, katKeyID, []byte("[]"))[HeaderSignature]), 401, "invalid_signature"},
		{"a URL-safe base64 signature", body, with(HeaderSignature, urlSafe), 401, "invalid_signature"},
		{"a raw r||s signature", body, with(HeaderSignature, rawRS), 401, "invalid_signature"},
		{"a tampered body", append(bytes.TrimSuffix(body, []byte("]")), []byte(`,{"token":"x"}]`)...), good, 401, "invalid_signature"},
	}
	for _, tc := range cases {
		a := post(t, f.srv.URL+Route, tc.body, tc.header)
		if a.status != tc.status || a.doc["code"] != tc.code || !strings.HasPrefix(a.header.Get("Content-Type"), "application/problem+json") {
			t.Errorf("%s: %d %s, want %d %s", tc.name, a.status, a.raw, tc.status, tc.code)
		}
		if tc.status == 401 && !strings.Contains(a.header.Get("Guardian-Audit"), "auth_failed") {
			t.Errorf("%s: not annotated as a failed authentication: %q", tc.name, a.header.Get("Guardian-Audit"))
		}
	}
	if r := f.revokedReason(victim); r != "" {
		t.Fatalf("a refused report revoked the key: %q", r)
	}

	// Signed but malformed payloads.
	for _, b := range []string{`{"token":"x"}`, `null`, `[{"token":5}]`, `[{"type":"t"}]`, `not json`} {
		a := post(t, f.srv.URL+Route, []byte(b), f.gh.sign(t, katKeyID, []byte(b)))
		if a.status != 400 || a.doc["code"] != "invalid_payload" {
			t.Errorf("%s: %d %s", b, a.status, a.raw)
		}
	}
	big := append([]byte(`[{"token":"`), bytes.Repeat([]byte("a"), MaxBody)...)
	big = append(big, `"}]`...)
	if a := post(t, f.srv.URL+Route, big, f.gh.sign(t, katKeyID, big)); a.status != 413 || a.doc["code"] != "payload_too_large" {
		t.Errorf("over 5 MiB: %d %s", a.status, a.raw)
	}
	// Exactly at the limit is read (and then judged on its content).
	edge := append([]byte(`[{"token":"`), bytes.Repeat([]byte("a"), MaxBody-len(`[{"token":""}]`))...)
	edge = append(edge, `"}]`...)
	if a := post(t, f.srv.URL+Route, edge, f.gh.sign(t, katKeyID, edge)); a.status != 200 || len(a.labels) != 1 || a.labels[0].Label != FalsePositive {
		t.Errorf("5 MiB exactly: %d %.200s", a.status, a.raw)
	}
	resp, err := http.Get(f.srv.URL + Route)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("GET: %d", resp.StatusCode)
	}
	// The unknown identifier caused the first fetch; the junk one none.
	if hits := f.gh.hits.Load(); hits != 1 {
		t.Errorf("%d key fetches, want 1", hits)
	}
	if a := f.signed(body); a.status != 200 || a.labels[0].Label != TruePositive || f.revokedReason(victim) != RevokedReason {
		t.Fatalf("the genuine report: %d %s", a.status, a.raw)
	}
}

func mustB64(t testing.TB, s string) []byte {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A broken relay and a forbidden webhook do not fail the revocation or
// the answer. The forbidden webhook is given up at once; the e-mails
// wait in the table, retried, until the relay answers or a day passes.
func TestNotificationFailuresDoNotFailTheAnswer(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{smtpAddr: "127.0.0.1:1", webhooks: []string{"http://169.254.169.254/latest/meta-data/"}})
	c, admins := f.customer()
	k := c.AccountKey(t, "write")
	f.report(k)
	waitFor(t, "the webhook given up and the e-mails retried", func() bool {
		return f.outbox.failed.Load() == 1 && f.outbox.retried.Load() >= 4 &&
			f.count("SELECT count(*) FROM revocation_notices WHERE channel = 'email' AND attempts >= 2") == len(admins) &&
			f.count("SELECT count(*) FROM revocation_notices") == len(admins)
	})
	// A row first tried a day ago is given up on its next failure.
	f.asOwner("UPDATE revocation_notices SET first_attempt_at = now() - interval '25 hours'")
	waitFor(t, "the day-old e-mails given up", func() bool {
		return f.count("SELECT count(*) FROM revocation_notices") == 0 && f.outbox.failed.Load() == int64(1+len(admins))
	})
	if f.outbox.delivered.Load() != 0 {
		t.Fatal("a failed delivery counted as delivered")
	}
}

// waitFor polls cond for up to 10 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited 10 s for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Notices are committed with the revocation and outlive the process that
// wrote them: a function that stopped before delivering, or died in the
// middle of a delivery, leaves them to the next one, which delivers each
// once. They go with their customer.
func TestNoticesOutliveTheProcess(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{stopped: true})
	c, admins := f.customer()
	gone, _ := f.customer()
	k := c.AccountKey(t, "write")
	kg := gone.AccountKey(t, "write")
	a := f.signed(payload(t, item{k, "guardian_account_key", "https://github.com/a/b/blob/c/d", "content"},
		item{kg, "guardian_account_key", "https://github.com/a/b/blob/c/e", "content"}))
	if a.status != 200 || a.labels[0].Label != TruePositive || a.labels[1].Label != TruePositive {
		t.Fatalf("%d %s", a.status, a.raw)
	}
	// Two admins and the webhook, per customer.
	if n := f.count("SELECT count(*) FROM revocation_notices WHERE customer_id = $1", c.ID); n != len(admins)+1 {
		t.Fatalf("%d notices of the customer, want %d", n, len(admins)+1)
	}
	// The other customer is deleted before its notices go: they go too.
	ctx := context.Background()
	f.asOwner("DELETE FROM customers WHERE id = $1", gone.ID)
	if n := f.count("SELECT count(*) FROM revocation_notices WHERE customer_id = $1", gone.ID); n != 0 {
		t.Fatalf("%d notices of a deleted customer", n)
	}
	// A process takes the rows and dies before delivering them.
	crashed := f.newOutbox()
	crashed.lease = 2 * time.Second
	rows, err := f.pool.Query(ctx, takeDue, crashed.lease, crashed.batch, true, nonNilStrings(crashed.webhooks), crashed.maxAge)
	if err != nil {
		t.Fatal(err)
	}
	rows.Close()
	if n := f.count("SELECT count(*) FROM revocation_notices WHERE attempts = 1 AND next_attempt_at > now()"); n != len(admins)+1 {
		t.Fatalf("%d rows taken", n)
	}
	// The next process delivers them once the lease has passed.
	f.startOutbox(f.outbox)
	msgs := f.relay.WaitMessages(t, len(admins), 10*time.Second)
	hooks := f.hooks.wait(t, 1)
	f.waitDrained()
	time.Sleep(100 * time.Millisecond)
	if len(f.relay.Messages()) != len(admins) || len(f.hooks.received()) != 1 {
		t.Fatalf("%d e-mails and %d webhook calls, want %d and 1", len(f.relay.Messages()), len(f.hooks.received()), len(admins))
	}
	var to []string
	for _, m := range msgs {
		to = append(to, m.To...)
		if !strings.Contains(m.Text, k[len(k)-4:]) || strings.Contains(m.Text, kg[len(kg)-4:]) {
			t.Fatalf("e-mail:\n%s", m.Text)
		}
	}
	sort.Strings(to)
	if strings.Join(to, ",") != strings.Join(admins, ",") {
		t.Fatalf("e-mailed %v, want %v", to, admins)
	}
	if !strings.Contains(hooks[0], c.ID) || strings.Contains(hooks[0], gone.ID) || !strings.Contains(hooks[0], `"event":"api_key.revoked"`) {
		t.Fatalf("webhook: %s", hooks[0])
	}
	if f.outbox.delivered.Load() != int64(len(admins)+1) {
		t.Fatalf("delivered %d", f.outbox.delivered.Load())
	}
}

// GitHub's batch of 1,000 matches across customers, answered well inside
// its 30 s; the benchmark (BenchmarkThousandMatches) measures it.
func TestThousandMatches(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	var items []item
	for range 4 {
		c, _ := f.customer()
		for _, k := range f.mint(c.ID, 250) {
			items = append(items, item{k, "guardian_account_key", "https://github.com/o/r/blob/a/f", "content"})
		}
	}
	start := time.Now()
	a := f.signed(payload(t, items...))
	took := time.Since(start)
	if a.status != 200 || len(a.labels) != 1000 {
		t.Fatalf("%d %.300s", a.status, a.raw)
	}
	for _, l := range a.labels {
		if l.Label != TruePositive {
			t.Fatalf("label %+v", l)
		}
	}
	if n := f.count("SELECT count(*) FROM api_keys WHERE revoked_reason = $1", RevokedReason); n != 1000 {
		t.Fatalf("%d revoked", n)
	}
	if n := f.count("SELECT count(*) FROM api_audit_log WHERE resource_type = 'api_key'"); n != 1000 {
		t.Fatalf("%d audit rows", n)
	}
	t.Logf("1,000 matches verified, revoked and answered in %s", took)
	if took > 10*time.Second {
		t.Fatalf("took %s", took)
	}
	f.relay.WaitMessages(t, 4*2, 20*time.Second) // two admins each
}

// GitHub giving up on the request (its context ending) does not stop the
// revocation of the keys it reported.
func TestRevocationOutlivesTheRequest(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	c, _ := f.customer()
	k := c.AccountKey(t, "admin")
	body := payload(t, item{k, "guardian_account_key", "https://github.com/octo/app/blob/abc/.env", "content"})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	req := httptest.NewRequest("POST", Route, bytes.NewReader(body)).WithContext(ctx)
	req.Header.Set("Content-Type", "application/json")
	for name, v := range f.gh.sign(t, katKeyID, body) {
		req.Header.Set(name, v)
	}
	f.h.routes().ServeHTTP(httptest.NewRecorder(), req)
	if r := f.revokedReason(k); r != RevokedReason {
		t.Fatalf("the reported key's revoked_reason is %q after GitHub went away, want %q", r, RevokedReason)
	}
}

// While the table cannot be read (here: the role's grant is gone, as
// when the database refuses it), the outbox keeps polling and delivers
// once it can.
func TestOutboxRetriesAnUnreadableTable(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{stopped: true})
	c, admins := f.customer()
	k := c.AccountKey(t, "write")
	f.report(k)
	ctx := context.Background()
	role := f.role()
	f.asOwner("REVOKE SELECT ON revocation_notices FROM " + role)
	if _, err := f.outbox.deliverDue(ctx); err == nil {
		t.Fatal("took rows without the grant")
	}
	f.startOutbox(f.outbox)
	time.Sleep(100 * time.Millisecond) // polls that fail
	if len(f.relay.Messages()) != 0 {
		t.Fatal("delivered without reading the table")
	}
	f.asOwner("GRANT SELECT ON revocation_notices TO " + role)
	f.relay.WaitMessages(t, len(admins), 10*time.Second)
	f.hooks.wait(t, 1)
	f.waitDrained()
}

// A process without a mail relay (a host whose GUARDIAN_SMTP_ADDR is not
// set) delivers the webhooks and leaves the e-mail rows to a process that
// has one, rather than giving them up.
func TestOutboxWithoutRelayLeavesTheEmails(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{stopped: true})
	c, admins := f.customer()
	k := c.AccountKey(t, "write")
	f.report(k)
	relayless := f.newOutbox()
	relayless.mailer = nil
	if n, err := relayless.deliverDue(context.Background()); err != nil || n != 1 {
		t.Fatalf("took %d rows (%v), want the webhook's alone", n, err)
	}
	f.hooks.wait(t, 1)
	if n := f.count("SELECT count(*) FROM revocation_notices WHERE channel = 'email' AND attempts = 0"); n != len(admins) {
		t.Fatalf("%d untouched e-mail rows, want %d", n, len(admins))
	}
	f.startOutbox(f.outbox)
	f.relay.WaitMessages(t, len(admins), 10*time.Second)
	f.waitDrained()
}

// A process takes only the webhook rows of the webhooks it is configured
// with: another host's webhook may be one this host's allow list refuses,
// and its refusal, permanent, would give the row up. A row of a webhook
// no host has any more is taken by any once it is a day old, and given up
// unsent: the operator may have removed the webhook because its address
// leaked or its domain lapsed.
func TestOutboxLeavesOtherHostsWebhooks(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{stopped: true})
	c, _ := f.customer()
	f.report(c.AccountKey(t, "write"))
	other := f.newOutbox()
	other.mailer, other.webhooks = nil, []string{"https://hooks.other.test/guardian"}
	if n, err := other.deliverDue(context.Background()); err != nil || n != 0 {
		t.Fatalf("a host without the webhook took %d rows (%v), want none", n, err)
	}
	if n := f.count("SELECT count(*) FROM revocation_notices WHERE channel = 'webhook' AND attempts = 0"); n != 1 {
		t.Fatalf("%d untouched webhook rows, want 1", n)
	}
	// A day on: taken, and given up without a call (the receiver, which
	// this process could reach, gets nothing).
	f.asOwner("UPDATE revocation_notices SET created_at = now() - interval '25 hours' WHERE channel = 'webhook'")
	if n, err := other.deliverDue(context.Background()); err != nil || n != 1 {
		t.Fatalf("a day on, a host without the webhook took %d rows (%v), want it", n, err)
	}
	if n := f.count("SELECT count(*) FROM revocation_notices WHERE channel = 'webhook'"); n != 0 || other.failed.Load() != 1 {
		t.Fatalf("a webhook no host has: %d rows left, %d given up; want it given up", n, other.failed.Load())
	}
	time.Sleep(100 * time.Millisecond)
	if got := f.hooks.received(); len(got) != 0 {
		t.Fatalf("a webhook no host has any more was called: %q", got)
	}
}

// A revocation by a process without a mail relay still writes the
// customer's e-mails: they wait, untouched, for a process with a relay,
// which sends them. Before, they were never written, and the customer
// never told.
func TestRevocationWithoutRelayKeepsTheEmails(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{stopped: true})
	f.outbox.mailer = nil // the process that takes GitHub's report has no relay
	c, admins := f.customer()
	f.report(c.AccountKey(t, "write"))
	if n, err := f.outbox.deliverDue(context.Background()); err != nil || n != 1 {
		t.Fatalf("took %d rows (%v), want the webhook's alone", n, err)
	}
	if n := f.count("SELECT count(*) FROM revocation_notices WHERE channel = 'email' AND attempts = 0"); n != len(admins) {
		t.Fatalf("%d e-mail rows wait, want one per admin (%d)", n, len(admins))
	}
	// They waited days; the relay's first answer is a failure: retried,
	// not given up (their day runs from their first attempt).
	f.asOwner("UPDATE revocation_notices SET created_at = now() - interval '3 days'")
	flaky := f.newOutbox()
	broken, err := notify.NewMailer(notify.SMTPConfig{Addr: "127.0.0.1:1", From: "Guardian <security@guardian.test>"})
	if err != nil {
		t.Fatal(err)
	}
	flaky.mailer = broken
	if n, err := flaky.deliverDue(context.Background()); err != nil || n != len(admins) {
		t.Fatalf("took %d rows (%v), want the %d e-mails", n, err, len(admins))
	}
	if flaky.failed.Load() != 0 || f.count("SELECT count(*) FROM revocation_notices WHERE channel = 'email'") != len(admins) {
		t.Fatalf("e-mails that waited for a relay were given up at their first failure (%d given up)", flaky.failed.Load())
	}
	f.asOwner("UPDATE revocation_notices SET next_attempt_at = now()")
	f.startOutbox(f.newOutbox()) // a process with a working relay
	f.relay.WaitMessages(t, len(admins), 10*time.Second)
	f.waitDrained()
}

// An outcome that cannot be recorded (here the role lost its DELETE
// grant, as when the database goes away right after a delivery) leaves
// the row leased, not lost: nothing takes it again before the lease ends,
// and then it is delivered again (at least once; the webhook's body keeps
// its id, so a receiver can drop the repeat).
func TestAnUnrecordedOutcomeIsDeliveredAgainAfterItsLease(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{stopped: true})
	c, admins := f.customer()
	f.report(c.AccountKey(t, "write"))
	ctx := context.Background()
	role := f.role()
	f.asOwner("REVOKE DELETE ON revocation_notices FROM " + role)
	core, logs := observer.New(zapcore.WarnLevel)
	ob := f.newOutbox()
	ob.log, ob.lease = zap.New(core), 2*time.Second
	want := len(admins) + 1
	if n, err := ob.deliverDue(ctx); err != nil || n != want {
		t.Fatalf("took %d rows (%v), want %d", n, err, want)
	}
	f.relay.WaitMessages(t, len(admins), 10*time.Second)
	first := f.hooks.wait(t, 1)
	if n := logs.FilterMessageSnippet("outcome was not recorded").Len(); n != want {
		t.Fatalf("%d warnings of an unrecorded outcome, want %d", n, want)
	}
	if n := f.count("SELECT count(*) FROM revocation_notices WHERE attempts = 1 AND next_attempt_at > now()"); n != want {
		t.Fatalf("%d rows still leased, want %d", n, want)
	}
	// Within the lease, nothing is taken (nor sent) again.
	if n, err := ob.deliverDue(ctx); err != nil || n != 0 {
		t.Fatalf("took %d rows (%v) within their lease", n, err)
	}
	f.asOwner("GRANT DELETE ON revocation_notices TO " + role)
	// After it, the rows are taken, sent again and deleted.
	f.startOutbox(f.outbox)
	f.relay.WaitMessages(t, 2*len(admins), 10*time.Second)
	again := f.hooks.wait(t, 2)
	f.waitDrained()
	if len(again) != 2 || again[1] != first[0] {
		t.Fatalf("the repeated webhook call differs from the first:\n%s\n%s", first[0], again[len(again)-1])
	}
}

// Notices that cannot be written (here the role lost its INSERT grant on
// their table) do not cost the revocation: the key is revoked and
// audited, and the answer is GitHub's labels.
func TestUnwritableNoticesDoNotStopTheRevocation(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{stopped: true})
	c, _ := f.customer()
	k := c.AccountKey(t, "write")
	role := f.role()
	f.asOwner("REVOKE INSERT ON revocation_notices FROM " + role)
	f.report(k)
	if n := f.count("SELECT count(*) FROM api_audit_log WHERE action = 'delete' AND resource_type = 'api_key'"); n != 1 {
		t.Fatalf("%d revocation rows", n)
	}
	if n := f.count("SELECT count(*) FROM revocation_notices"); n != 0 {
		t.Fatalf("%d notices", n)
	}
}

// report has GitHub report key as found public, and requires it revoked.
func (f *fixture) report(key string) {
	f.t.Helper()
	a := f.signed(payload(f.t, item{key, "guardian_account_key", "https://github.com/a/b/blob/c/d", "content"}))
	if a.status != 200 || a.labels[0].Label != TruePositive || f.revokedReason(key) != RevokedReason {
		f.t.Fatalf("%d %s", a.status, a.raw)
	}
}

// asOwner runs a statement as the database's owner (grants, and what
// the function's role may not do).
func (f *fixture) asOwner(sql string, args ...any) {
	f.t.Helper()
	if _, err := f.pg.Owner.Exec(context.Background(), sql, args...); err != nil {
		f.t.Fatal(err)
	}
}

// waitDrained waits until every notice is delivered (or given up) and
// its row deleted.
func (f *fixture) waitDrained() {
	f.t.Helper()
	waitFor(f.t, "the delivered rows deleted", func() bool { return f.count("SELECT count(*) FROM revocation_notices") == 0 })
}

// role is the function's database role, quoted for a GRANT or REVOKE.
func (f *fixture) role() string { return pgx.Identifier{f.pool.Config().ConnConfig.User}.Sanitize() }

// A function asked to stop while a webhook hangs cuts the delivery short
// and leaves the row due at once, for the next process; the e-mails it
// did deliver are gone from the table.
func TestStopMidDeliveryLeavesTheRowDue(t *testing.T) {
	t.Parallel()
	arrived := make(chan struct{}, 1)
	release := make(chan struct{})
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case arrived <- struct{}{}:
		default:
		}
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	t.Cleanup(func() { close(release); hang.Close() })
	f := newFixture(t, fixtureOpts{stopped: true, webhooks: []string{hang.URL + "/security"}, allow: []string{"127.0.0.1/32"}})
	c, admins := f.customer()
	f.report(c.AccountKey(t, "write"))
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.outbox.run(ctx)
	}()
	select {
	case <-arrived:
	case <-time.After(10 * time.Second):
		t.Fatal("the webhook was never called")
	}
	f.relay.WaitMessages(t, len(admins), 10*time.Second)
	stop()
	<-done
	if n := f.count("SELECT count(*) FROM revocation_notices WHERE channel = 'webhook' AND attempts = 1 AND next_attempt_at <= now()"); n != 1 {
		t.Fatalf("%d webhook rows due at once after the stop, want 1", n)
	}
	if n := f.count("SELECT count(*) FROM revocation_notices"); n != 1 {
		t.Fatalf("%d rows left, want the webhook's alone", n)
	}
	if f.outbox.failed.Load() != 0 || f.outbox.retried.Load() != 0 {
		t.Fatalf("a stop counted as a failure: failed %d, retried %d", f.outbox.failed.Load(), f.outbox.retried.Load())
	}
}

// A report that cannot be processed (PostgreSQL away) is answered 503,
// which GitHub may or may not send again: the error names the public
// places of the keys, for an operator to revoke them by hand, never the
// tokens.
func TestAFailedRevocationLogsWhereTheKeysWere(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{stopped: true})
	c, _ := f.customer()
	key := c.AccountKey(t, "write")
	core, logs := observer.New(zap.ErrorLevel)
	closed, err := pgxpool.New(context.Background(), f.pg.FunctionDSNs["GUARDIAN_PG_DSN_SECRETSCAN"])
	if err != nil {
		t.Fatal(err)
	}
	closed.Close()
	f.h.db, f.h.log = closed, zap.New(core)
	const leak = "https://github.com/octo/app/blob/abc/prod.env"
	a := f.signed(payload(t, item{key, "guardian_account_key", leak, "content"}, item{"ghp_notours", "guardian_account_key", "https://github.com/x/y/blob/a/b", "content"}))
	if a.status != 503 {
		t.Fatalf("with PostgreSQL away: %d %s", a.status, a.raw)
	}
	all := logs.FilterMessageSnippet("revocation failed").All()
	if len(all) != 1 {
		t.Fatalf("%d error lines, want 1", len(all))
	}
	urls, _ := all[0].ContextMap()["urls"].([]any)
	if len(urls) != 1 || urls[0] != leak {
		t.Fatalf("logged urls %v, want only the key's place", all[0].ContextMap()["urls"])
	}
	if strings.Contains(fmt.Sprint(all[0].ContextMap()), key[14:57]) {
		t.Fatal("the error line carries the key")
	}
	if r := f.revokedReason(key); r != "" {
		t.Fatalf("revoked as %q with PostgreSQL away", r)
	}
}
