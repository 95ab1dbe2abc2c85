package ratelimit

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/glassmkr/guardian/shared/testenv"
)

// edgeWithCustomer runs the real Caddyfile on a database of the test's own
// and returns it with a read key; overrides change the stack's settings.
func edgeWithCustomer(t *testing.T, overrides map[string]string) (*testenv.Stack, string) {
	t.Helper()
	env, c, _ := testenv.EdgeEnv(t)
	for k, v := range overrides {
		env[k] = v
	}
	return testenv.StartStack(t, env), c.AccountKey(t, "read")
}

func get(t *testing.T, url string, header map[string]string) *http.Response {
	t.Helper()
	resp, err := tryGet(url, header)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

// tryGet is get for goroutines other than the test's, which must not call
// t.Fatal.
func tryGet(url string, header map[string]string) (*http.Response, error) {
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		return nil, err
	}
	for k, v := range header {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	resp.Body.Close()
	return resp, nil
}

func TestAuthenticatedResponsesCarryRateLimitHeaders(t *testing.T) {
	t.Parallel()
	stack, key := edgeWithCustomer(t, nil)
	resp := get(t, stack.URL+"/api/v1/whoami", map[string]string{"Authorization": "Bearer " + key})
	if resp.StatusCode != 200 || resp.Header.Get("RateLimit-Limit") != "1000" || resp.Header.Get("RateLimit-Remaining") != "999" || resp.Header.Get("RateLimit-Reset") == "" {
		t.Fatalf("%d %v", resp.StatusCode, resp.Header)
	}
}

// failuresUntil429 sends garbage keys, each with the X-Forwarded-For that
// xff gives, and returns how many were answered before the first 429.
func failuresUntil429(t *testing.T, stack *testenv.Stack, n int, xff func(i int) string) int {
	t.Helper()
	for i := range n {
		resp := get(t, stack.URL+"/api/v1/whoami", map[string]string{"Authorization": "Bearer gmk_acct_live_garbage", "X-Forwarded-For": xff(i)})
		if resp.StatusCode == 429 {
			if resp.Header.Get("Retry-After") == "" {
				t.Fatal("429 without Retry-After")
			}
			return i
		}
		if resp.StatusCode != 401 {
			t.Fatalf("garbage key: %d", resp.StatusCode)
		}
	}
	return n
}

// TestXForwardedForIsTrustedOnlyFromConfiguredProxies runs the edge as
// behind a proxy other than Cloudflare (GUARDIAN_CLIENT_IP_HEADERS;
// clientip_edge_test.go has Cloudflare's header).
func TestXForwardedForIsTrustedOnlyFromConfiguredProxies(t *testing.T) {
	t.Parallel()
	spoof := func(i int) string { return "198.51.100." + string(rune('0'+i%10)) + "1" }
	// No trusted proxies: the header is ignored and one bucket fills.
	stack, _ := edgeWithCustomer(t, map[string]string{"GUARDIAN_TRUSTED_PROXIES": "", "GUARDIAN_CLIENT_IP_HEADERS": "X-Forwarded-For"})
	// 100 tokens, plus the few that refill (10/s) while the requests run.
	if n := failuresUntil429(t, stack, 150, spoof); n < 100 || n >= 150 {
		t.Fatalf("untrusted X-Forwarded-For: first 429 after %d failures, want just past 100", n)
	}
	// Loopback trusted (as a proxy would be): each forwarded address has
	// its own bucket.
	trusted, _ := edgeWithCustomer(t, map[string]string{"GUARDIAN_TRUSTED_PROXIES": "127.0.0.1/32", "GUARDIAN_CLIENT_IP_HEADERS": "X-Forwarded-For"})
	unique := func(i int) string { return "203.0.113." + itoa(i%250+1) }
	if n := failuresUntil429(t, trusted, 150, unique); n != 150 {
		t.Fatalf("trusted proxy: refused after %d failures from 150 different clients", n)
	}
	// A proxy appends the address it saw to the header the
	// client sent: the client's own entries on the left are not the
	// client. One client writing a new address there each time still
	// fills one bucket.
	spoofed := func(i int) string { return "203.0.113." + itoa(i%250+1) + ", 198.51.100.77" }
	if n := failuresUntil429(t, trusted, 150, spoofed); n < 100 || n >= 150 {
		t.Fatalf("client-written X-Forwarded-For entries before the proxy's: first 429 after %d failures, want just past 100", n)
	}
}

func itoa(i int) string {
	if i < 10 {
		return string(rune('0' + i))
	}
	return itoa(i/10) + string(rune('0'+i%10))
}

func TestRedisStoppedAndRestartedUnderLoad(t *testing.T) {
	t.Parallel()
	redisEnv, dir := testenv.Private(t, "redis")
	overrides := map[string]string{}
	testenv.UseRedis(overrides, redisEnv)
	stack, key := edgeWithCustomer(t, overrides)
	auth := map[string]string{"Authorization": "Bearer " + key}
	var sent, ok, limitedHeaders atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 20000; i++ { // bounded; stopped long before
				select {
				case <-stop:
					return
				default:
				}
				resp, err := tryGet(stack.URL+"/api/v1/whoami", auth)
				sent.Add(1)
				if err != nil {
					t.Errorf("whoami under load: %v", err) // and sent != ok below
					return
				}
				if resp.StatusCode == 200 {
					ok.Add(1)
				}
				if resp.Header.Get("RateLimit-Limit") != "" {
					limitedHeaders.Add(1)
				}
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}
	time.Sleep(300 * time.Millisecond)
	if err := testenv.Stop(dir, "redis"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	withRedisDown := limitedHeaders.Load()
	time.Sleep(500 * time.Millisecond)
	if limitedHeaders.Load() != withRedisDown {
		t.Error("RateLimit headers while Redis is down: the limiter did not fail open")
	}
	if _, err := testenv.Start(dir, "redis"); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for limitedHeaders.Load() == withRedisDown {
		if time.Now().After(deadline) {
			t.Fatal("limiting did not resume after Redis came back")
		}
		time.Sleep(20 * time.Millisecond)
	}
	close(stop)
	wg.Wait()
	if sent.Load() != ok.Load() {
		t.Fatalf("%d of %d requests failed while Redis went away and came back", sent.Load()-ok.Load(), sent.Load())
	}
	if n := strings.Count(stack.Log(), "failing open"); n != 1 {
		t.Errorf("%d degradation warnings in Caddy's log, want exactly 1", n)
	}
	t.Logf("%d requests, all answered 200; Redis down then back", sent.Load())
}

// A valid key the edge has not cached, from an address out of tokens, is
// not looked up; its answer must say "slow down" (429), not "invalid key"
// (401), which a legitimate client sharing the address would misread.
func TestUncheckedKeyFromABlockedAddressIs429NotInvalid(t *testing.T) {
	t.Parallel()
	env, c, _ := testenv.EdgeEnv(t)
	stack := testenv.StartStack(t, env)
	// The block lasts until 16 tokens are back (1.6 s at 10/s): on a
	// loaded machine the request may come after it, and then its key is
	// rightly checked (and cached); the address is emptied again, and
	// another fresh key tried.
	var keys []string
	for range 5 {
		keys = append(keys, c.AccountKey(t, "read"))
	}
	var resp *http.Response
	for _, key := range keys {
		if n := failuresUntil429(t, stack, 200, func(int) string { return "" }); n >= 200 {
			t.Fatalf("the address was never blocked")
		}
		if resp = get(t, stack.URL+"/api/v1/whoami", map[string]string{"Authorization": "Bearer " + key}); resp.StatusCode != http.StatusOK {
			break
		}
	}
	if resp.StatusCode != http.StatusTooManyRequests || resp.Header.Get("Retry-After") == "" {
		t.Fatalf("valid uncached key from a blocked address: %d (Retry-After %q), want 429 with Retry-After", resp.StatusCode, resp.Header.Get("Retry-After"))
	}
	if c := resp.Header.Get("WWW-Authenticate"); strings.Contains(c, "invalid_token") {
		t.Fatalf("the 429 says the key is invalid: WWW-Authenticate %q", c)
	}
}

// With GUARDIAN_REDIS_SOCKET the edge decides through Redis's unix socket,
// not GUARDIAN_REDIS_ADDR: here the address has no listener, so a decision
// made over TCP would fail open and send no RateLimit headers.
func TestEdgeDecidesThroughRedisSocket(t *testing.T) {
	t.Parallel()
	redisEnv, _ := testenv.Private(t, "redis")
	socket := redisEnv["GUARDIAN_REDIS_SOCKET"]
	if socket == "" {
		t.Skip("servers.sh made no Redis socket: the temporary directory's path is too long for one")
	}
	stack, key := edgeWithCustomer(t, map[string]string{
		"GUARDIAN_REDIS_ADDR":     "127.0.0.1:1",
		"GUARDIAN_REDIS_PASSWORD": redisEnv["GUARDIAN_REDIS_PASSWORD"],
		"GUARDIAN_REDIS_SOCKET":   socket,
	})
	for i := range 3 {
		// Failing open, the per-key and per-account tiers send no headers.
		resp := get(t, stack.URL+"/api/v1/whoami", map[string]string{"Authorization": "Bearer " + key})
		if resp.StatusCode != 200 || resp.Header.Get("RateLimit-Remaining") == "" {
			t.Fatalf("request %d: %d, RateLimit-Remaining %q", i, resp.StatusCode, resp.Header.Get("RateLimit-Remaining"))
		}
	}
	rdb := redis.NewClient(&redis.Options{Addr: socket, Password: redisEnv["GUARDIAN_REDIS_PASSWORD"]})
	defer rdb.Close()
	stats, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(stats, "cmdstat_evalsha:calls=") && !strings.Contains(stats, "cmdstat_eval:calls=") {
		t.Fatalf("the socket's Redis ran no bucket script:\n%s", stats)
	}
	if m := stack.Metrics(t); !strings.Contains(m, `guardian_ratelimit_degraded_decisions_total{source="open"} 0`) ||
		!strings.Contains(m, `guardian_ratelimit_degraded_decisions_total{source="local"} 0`) || !strings.Contains(m, "guardian_ratelimit_redis_errors_total 0") {
		t.Fatalf("the limiter failed to reach Redis:\n%s", m)
	}
}
