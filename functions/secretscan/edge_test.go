package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/glassmkr/guardian/shared/identity"
	"github.com/glassmkr/guardian/shared/notify/notifytest"
	"github.com/glassmkr/guardian/shared/testenv"
)

// startEdge runs the repository's Caddyfile with env.
func startEdge(t *testing.T, env map[string]string) *testenv.Stack {
	t.Helper()
	return testenv.StartStack(t, env)
}

// TestThroughTheEdge runs the real Caddy and function binary: GitHub's
// report goes through the audit, per-IP limit and function runtime; the
// key stops working at the edge within a second; the customer's admins
// get the e-mail, the operator's webhook the event; the edge writes the
// request's own audit row.
func TestThroughTheEdge(t *testing.T) {
	t.Parallel()
	env, c, pg := testenv.EdgeEnv(t)
	gh := newFakeGitHub(t)
	relay := notifytest.StartRelay(t, nil, "", "")
	hooks := newHookSink(t)
	env["GUARDIAN_GITHUB_KEYS_URL"] = gh.KeysURL()
	env["GUARDIAN_SMTP_ADDR"] = relay.Addr
	env["GUARDIAN_SMTP_FROM"] = "Guardian <security@guardian.test>"
	env["GUARDIAN_SECURITY_WEBHOOKS"] = hooks.URL + "/guardian"
	env["GUARDIAN_WEBHOOK_ALLOW"] = "127.0.0.1/32"
	e := startEdge(t, env)

	key := c.AccountKey(t, "admin")
	works := func() bool {
		req, _ := http.NewRequest("GET", e.URL+"/api/v1/whoami", nil)
		req.Header.Set("Authorization", "Bearer "+key)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	}
	if !works() {
		t.Fatal("the key does not work before the report")
	}
	leak := "https://github.com/octo/app/blob/0123456789abcdef0123456789abcdef01234567/.env"
	body := payload(t, item{key, "guardian_account_key", leak, "content"}, item{"gmk_acct_live_nope", "guardian_account_key", leak, "content"})

	// A forged report first: refused, audited, nothing revoked.
	forged := gh.sign(t, katKeyID, []byte(`[]`))
	a := post(t, e.URL+Route, body, forged)
	if a.status != 401 || a.doc["code"] != "invalid_signature" || a.header.Get("Guardian-Audit") != "" || a.header.Get("Strict-Transport-Security") == "" {
		t.Fatalf("forged report: %d %v %s", a.status, a.header, a.raw)
	}
	if !works() {
		t.Fatal("a forged report revoked the key")
	}

	a = post(t, e.URL+Route, body, gh.sign(t, katKeyID, body))
	if a.status != 200 || len(a.labels) != 2 || a.labels[0] != (label{sha(key), "guardian_account_key", TruePositive}) || a.labels[1].Label != FalsePositive {
		t.Fatalf("report: %d %s", a.status, a.raw)
	}
	if a.header.Get("RateLimit-Limit") != "1000" || a.header.Get("Request-Id") == "" || a.header.Get("Guardian-Audit") != "" {
		t.Fatalf("edge headers: %v", a.header)
	}
	deadline := time.Now().Add(time.Second)
	for works() {
		if time.Now().After(deadline) {
			t.Fatal("the reported key still works at the edge after 1 s")
		}
		time.Sleep(20 * time.Millisecond)
	}

	// Audit: the edge's row for each request, the function's per key.
	ctx := context.Background()
	var n int
	reqID := a.header.Get("Request-Id")
	if err := pg.Owner.QueryRow(ctx, `SELECT count(*) FROM api_audit_log WHERE request_id = $1 AND action = 'create'
		AND resource_type = 'secret_scanning_report' AND metadata->>'revoked' = '1' AND customer_id IS NULL`, reqID).Scan(&n); err != nil || n != 1 {
		t.Fatalf("the edge's row of the report: %d %v", n, err)
	}
	var meta []byte
	if err := pg.Owner.QueryRow(ctx, `SELECT metadata FROM api_audit_log WHERE request_id = $1 || '.' || resource_id
		AND customer_id = $2 AND action = 'delete' AND resource_type = 'api_key' AND source_ip = '127.0.0.1'`, reqID, c.ID).Scan(&meta); err != nil {
		t.Fatalf("the key's audit row: %v", err)
	}
	var m map[string]any
	_ = json.Unmarshal(meta, &m)
	if m["reason"] != RevokedReason || m["url"] != leak || m["github_request_id"] != reqID {
		t.Fatalf("the key's audit metadata: %s", meta)
	}
	if err := pg.Owner.QueryRow(ctx, `SELECT count(*) FROM api_audit_log WHERE action = 'auth_failed'
		AND resource_type = 'secret_scanning_report' AND metadata->>'reason' = 'invalid_signature'`).Scan(&n); err != nil || n != 1 {
		t.Fatalf("the forged report's audit row: %d %v", n, err)
	}

	msg := relay.WaitMessages(t, 1, 10*time.Second)[0]
	if !strings.Contains(msg.Text, key[len(key)-4:]) || !strings.Contains(msg.Text, leak) || strings.Contains(string(msg.Data), key[14:57]) || len(msg.To) != 1 {
		t.Fatalf("e-mail to %v:\n%s", msg.To, msg.Text)
	}
	if got := hooks.wait(t, 1); !strings.Contains(got[0], c.ID) {
		t.Fatalf("webhook: %s", got[0])
	}

	// Missing headers and the wrong method, through the edge.
	if a := post(t, e.URL+Route, body, nil); a.status != 400 || a.doc["code"] != "missing_signature" {
		t.Fatalf("no headers: %d %s", a.status, a.raw)
	}

	// 1,000 matches through the whole edge.
	f := &fixture{t: t, pg: pg, pepper: c.Pepper}
	var items []item
	for _, k := range f.mint(c.ID, 1000) {
		items = append(items, item{k, "guardian_account_key", leak, "content"})
	}
	big := payload(t, items...)
	start := time.Now()
	a = post(t, e.URL+Route, big, gh.sign(t, katKeyID, big))
	took := time.Since(start)
	if a.status != 200 || len(a.labels) != 1000 || a.labels[999].Label != TruePositive {
		t.Fatalf("1,000 matches: %d %.300s", a.status, a.raw)
	}
	t.Logf("1,000 matches through the edge in %s", took)
}

// TestForgedReportsSpendTheAddressBudget: a report whose signature fails
// is a failed credential check. The sender's address pays for each from
// its brute-force budget (100, 10/s), and once that is spent the edge
// refuses the address before the function runs: its guesses no longer
// cost a signature check or an audit row.
func TestForgedReportsSpendTheAddressBudget(t *testing.T) {
	t.Parallel()
	spendsTheBudget(t, func(gh *fakeGitHub, body []byte, _ int) map[string]string {
		return gh.sign(t, katKeyID, []byte(`[{}]`))
	})
}

// TestMadeUpKeyIdentifiersSpendTheAddressBudget: a report naming a key
// identifier GitHub's list does not hold gets 503 "try again" while no
// fetch since it came can say the key is not GitHub's newest (fetches are
// rate limited), so GitHub would retry a genuine one. It is charged all
// the same: otherwise a new made-up identifier per report would pass the
// failure budget, each report read, checked and audited.
func TestMadeUpKeyIdentifiersSpendTheAddressBudget(t *testing.T) {
	t.Parallel()
	spendsTheBudget(t, func(gh *fakeGitHub, body []byte, i int) map[string]string {
		h := gh.sign(t, katKeyID, body)
		h[HeaderKeyID] = fmt.Sprintf("made-up-%d", i)
		return h
	})
}

// spendsTheBudget sends reports forge makes until the edge refuses the
// address, and checks the function refused each before that (401, or 503
// keys_unavailable), charging it, with one auth_failed row each.
func spendsTheBudget(t *testing.T, forge func(gh *fakeGitHub, body []byte, i int) map[string]string) {
	env, _, pg := testenv.EdgeEnv(t)
	gh := newFakeGitHub(t)
	env["GUARDIAN_GITHUB_KEYS_URL"] = gh.KeysURL()
	e := startEdge(t, env)

	body := []byte(`[]`)
	failed, refusedAt := 0, 0
	for i := 1; i <= 400 && refusedAt == 0; i++ {
		switch a := post(t, e.URL+Route, body, forge(gh, body, i)); a.status {
		case 401, 503:
			if a.status == 503 && (a.doc["code"] != "keys_unavailable" || a.header.Get("Retry-After") == "") {
				t.Fatalf("report %d: %v %s", i, a.header, a.raw)
			}
			if a.header.Get(identity.HeaderAuthFailure) != "" {
				t.Fatalf("the function's failure report reached the client: %v", a.header)
			}
			failed++
		case 429:
			if a.doc["code"] != "rate_limited" || a.header.Get("Retry-After") == "" {
				t.Fatalf("refusal: %v %s", a.header, a.raw)
			}
			refusedAt = i
		default:
			t.Fatalf("forged report %d: %d %s", i, a.status, a.raw)
		}
	}
	// 100 tokens, plus what refilled while they were spent.
	if refusedAt == 0 || failed < 100 {
		t.Fatalf("%d forged reports refused by the function, the first refused by the edge: %d", failed, refusedAt)
	}
	// From now on the address gets 429 before the function runs, but for
	// the token the bucket refills every 100 ms (10/s): one report per
	// refill reaches the function, is refused (and charged), and blocks
	// the address again.
	start, passed := time.Now(), 0
	for i := range 20 {
		switch a := post(t, e.URL+Route, body, forge(gh, body, 1000+i)); a.status {
		case 429:
		case 401, 503:
			passed++
			failed++
		default:
			t.Fatalf("a forged report from a refused address: %d %s", a.status, a.raw)
		}
	}
	if refills := 1 + int(time.Since(start)/(100*time.Millisecond)); passed > refills {
		t.Fatalf("%d of 20 forged reports from a refused address reached the function in %s, more than its %d refills", passed, time.Since(start), refills)
	}
	var rows int
	if err := pg.Owner.QueryRow(context.Background(), `SELECT count(*) FROM api_audit_log WHERE action = 'auth_failed'
		AND resource_type = 'secret_scanning_report'`).Scan(&rows); err != nil || rows != failed {
		t.Fatalf("%d auth_failed rows, want one for each of the %d reports the function refused (%v)", rows, failed, err)
	}
}
