package ratelimit

import (
	"context"
	"fmt"
	"net/http"
	"testing"

	"github.com/glassmkr/guardian/shared/testenv"
)

// failedFrom sends a made-up key to the edge with headers and returns the
// status and the source address of the request's audit row.
func failedFrom(t *testing.T, stack *testenv.Stack, pg *testenv.PG, headers map[string]string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", stack.URL+"/api/v1/whoami", nil)
	req.Header.Set("Authorization", "Bearer gmk_acct_live_garbage")
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	var ip string
	if err := pg.Owner.QueryRow(context.Background(), "SELECT host(source_ip) FROM api_audit_log WHERE request_id = $1",
		resp.Header.Get("Request-Id")).Scan(&ip); err != nil {
		t.Fatalf("no audit row for a %d: %v", resp.StatusCode, err)
	}
	return resp.StatusCode, ip
}

// TestAWorkerCannotChooseItsAddress: a Cloudflare Worker, of any account,
// reaches the origin through Cloudflare with a Cloudflare address in
// Cf-Connecting-Ip and whatever it likes in X-Forwarded-For. It counts as
// the Cloudflare peer that connected: all its made-up addresses share one
// per-IP bucket, and the audit log names the peer, not an address the
// Worker wrote. (Loopback stands for Cloudflare's edge here, trusted with
// the range the Worker's address is in.)
func TestAWorkerCannotChooseItsAddress(t *testing.T) {
	t.Parallel()
	env, _, pg := testenv.EdgeEnv(t)
	env["GUARDIAN_TRUSTED_PROXIES"] = "127.0.0.1/32 2a06:98c0::/29"
	stack := testenv.StartStack(t, env)

	// A visitor: Cloudflare's header names it, whatever else was sent.
	if s, ip := failedFrom(t, stack, pg, map[string]string{"Cf-Connecting-Ip": "198.51.100.23", "X-Forwarded-For": "203.0.113.250"}); s != 401 || ip != "198.51.100.23" {
		t.Fatalf("a visitor behind Cloudflare: %d from %q, want 401 from 198.51.100.23", s, ip)
	}
	// A Worker: a new address of its choosing on every request.
	for i := range 150 {
		headers := map[string]string{"Cf-Connecting-Ip": "2a06:98c0:3600::103", "X-Forwarded-For": fmt.Sprintf("203.0.113.%d", i%250+1)}
		s, ip := failedFrom(t, stack, pg, headers)
		if ip != "127.0.0.1" {
			t.Fatalf("a Worker's request %d is audited from %q, want the peer's 127.0.0.1", i, ip)
		}
		if s == 429 {
			// 100 tokens, plus the few that refill (10/s) meanwhile.
			if i < 100 {
				t.Fatalf("the Worker's bucket refused after %d failures, want just past 100", i)
			}
			return
		}
		if s != 401 {
			t.Fatalf("a Worker's made-up key: %d", s)
		}
	}
	t.Fatal("150 made-up keys from one Worker, each with an address of its own, and no 429: it chose its buckets")
}

// TestAnotherProxysHeaderIsASetting: behind a proxy other than Cloudflare,
// GUARDIAN_CLIENT_IP_HEADERS=X-Forwarded-For reads that header instead
// (its rightmost address that is not a trusted proxy), and Cf-Connecting-Ip,
// which such a proxy passes through from the client, is ignored.
func TestAnotherProxysHeaderIsASetting(t *testing.T) {
	t.Parallel()
	env, _, pg := testenv.EdgeEnv(t)
	env["GUARDIAN_TRUSTED_PROXIES"] = "127.0.0.1/32"
	env["GUARDIAN_CLIENT_IP_HEADERS"] = "X-Forwarded-For"
	stack := testenv.StartStack(t, env)
	if s, ip := failedFrom(t, stack, pg, map[string]string{"Cf-Connecting-Ip": "198.51.100.23", "X-Forwarded-For": "192.0.2.1, 203.0.113.9"}); s != 401 || ip != "203.0.113.9" {
		t.Fatalf("behind another proxy: %d from %q, want 401 from 203.0.113.9", s, ip)
	}
}
