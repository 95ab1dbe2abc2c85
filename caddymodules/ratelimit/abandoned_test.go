package ratelimit

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/glassmkr/guardian/shared/problem"
)

// TestAFailureIsChargedWhenItsClientGoesAway: in mode failures, a request
// whose client went away while auth looked its credential up (auth's
// store_unavailable, the request's context done by then) is charged to
// its address, in Redis: a client sending made-up keys and closing each
// connection at once must not have them checked for free. A store outage
// with the client still there stays uncharged
// (TestAValidCredentialRefusedIsChargedToItsBuckets).
func TestAFailureIsChargedWhenItsClientGoesAway(t *testing.T) {
	t.Parallel()
	h := newTestHandler(t, Handler{Tier: TierIP, Mode: ModeFailures, IP: &Bucket{Capacity: 3, Rate: 0.01}})
	const ip = "192.0.2.70"
	for i := range 2 {
		r := request(ip)
		ctx, cancel := context.WithCancel(r.Context())
		r = r.WithContext(ctx)
		gone := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			cancel() // the client leaves during the lookup
			caddyhttp.SetVar(r.Context(), varFailure, "store_unavailable")
			return caddyhttp.Error(503, problem.New(503, "auth_unavailable", ""))
		})
		if s, _ := status(h.ServeHTTP(httptest.NewRecorder(), r, gone)); s != 503 && s != 429 {
			t.Fatalf("abandoned request %d: %d", i, s)
		}
	}
	// Both were charged in Redis (not in this instance's fallback
	// buckets, and without marking Redis down): one token is left.
	rec := httptest.NewRecorder()
	if s, _ := status(h.ServeHTTP(rec, request(ip), failAuth("unknown_key"))); s != 401 || rec.Header().Get("RateLimit-Remaining") != "0" {
		t.Fatalf("a failure after two abandoned requests: %d, %v; want 401 with 0 remaining", s, rec.Header())
	}
	if s, _ := status(h.ServeHTTP(httptest.NewRecorder(), request(ip), failAuth("unknown_key"))); s != 429 {
		t.Fatalf("the next failure: %d, want 429", s)
	}
	if h.limiter.downUntil.Load() != 0 {
		t.Fatal("abandoned requests marked Redis down")
	}
}
