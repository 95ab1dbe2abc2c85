package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/redis/go-redis/v9"

	"github.com/glassmkr/guardian/caddymodules/guardian"
	"github.com/glassmkr/guardian/shared/identity"
	"github.com/glassmkr/guardian/shared/problem"
	"github.com/glassmkr/guardian/shared/testenv"
)

func newTestHandler(t *testing.T, h Handler) *Handler {
	t.Helper()
	l, _ := newTestLimiter(t)
	h.init(l)
	return &h
}

func request(ip string) *http.Request {
	r := httptest.NewRequest("POST", "/auth/login", nil)
	r.RemoteAddr = ip + ":40000"
	return r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{}))
}

func status(err error) (int, string) {
	if err == nil {
		return 200, ""
	}
	var he caddyhttp.HandlerError
	var p *problem.Problem
	errors.As(err, &he)
	errors.As(err, &p)
	code := ""
	if p != nil {
		code = p.Code
	}
	return he.StatusCode, code
}

var ok = caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error { return nil })

// failAuth behaves like guardian_auth refusing a credential.
func failAuth(reason string) caddyhttp.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) error {
		caddyhttp.SetVar(r.Context(), varFailure, reason)
		return caddyhttp.Error(401, problem.New(401, "invalid_credentials", ""))
	}
}

func TestIPTierAlwaysChargesEveryRequest(t *testing.T) {
	t.Parallel()
	h := newTestHandler(t, Handler{Tier: TierIP, IP: &Bucket{Capacity: 2, Rate: 0.01}})
	for i := range 2 {
		rec := httptest.NewRecorder()
		if s, _ := status(h.ServeHTTP(rec, request("192.0.2.10"), ok)); s != 200 {
			t.Fatalf("request %d: %d", i, s)
		}
		if rec.Header().Get("RateLimit-Limit") != "2" || rec.Header().Get("RateLimit-Remaining") == "" || rec.Header().Get("RateLimit-Reset") == "" {
			t.Fatalf("headers %v", rec.Header())
		}
	}
	rec := httptest.NewRecorder()
	s, code := status(h.ServeHTTP(rec, request("192.0.2.10"), ok))
	if s != 429 || code != "rate_limited" || rec.Header().Get("Retry-After") == "" {
		t.Fatalf("third request: %d %s %v", s, code, rec.Header())
	}
	// Another address has its own bucket.
	if s, _ := status(h.ServeHTTP(httptest.NewRecorder(), request("192.0.2.11"), ok)); s != 200 {
		t.Fatalf("other address: %d", s)
	}
}

// One IPv6 subscriber holds a /64 at least: its addresses share one
// bucket, or each of 2^64 would bring a fresh brute-force budget.
func TestIPv6AddressesAreCountedByTheirSlash64(t *testing.T) {
	t.Parallel()
	h := newTestHandler(t, Handler{Tier: TierIP, IP: &Bucket{Capacity: 2, Rate: 0.01}})
	from := func(ip string) int {
		r := request("192.0.2.1")
		r.RemoteAddr = net.JoinHostPort(ip, "40000")
		s, _ := status(h.ServeHTTP(httptest.NewRecorder(), r, ok))
		return s
	}
	for i, ip := range []string{"2001:db8:0:1::1", "2001:db8:0:1:ffff::2"} {
		if s := from(ip); s != 200 {
			t.Fatalf("request %d: %d", i, s)
		}
	}
	if s := from("2001:db8:0:1:abcd::9"); s != 429 {
		t.Fatalf("a third address of the same /64: %d, want 429", s)
	}
	if s := from("2001:db8:0:2::1"); s != 200 {
		t.Fatalf("another /64: %d, want its own bucket", s)
	}
}

// A /48 holds 65,536 /64s: they share a network bucket as well, so that
// hopping from one to the next does not bring a fresh budget each time,
// and once the network is out of tokens, an address of it this instance
// has not seen yet is refused its lookups too.
func TestIPv6SlashSixtyFoursOfOneNetworkShareItsBucket(t *testing.T) {
	t.Parallel()
	h := newTestHandler(t, Handler{Tier: TierIP, Mode: ModeFailures, IP: &Bucket{Capacity: 2, Rate: 0.01}, Network: &Bucket{Capacity: 5, Rate: 0.01}})
	from := func(ip string, next caddyhttp.Handler) (int, bool) {
		r := request("192.0.2.1")
		r.RemoteAddr = net.JoinHostPort(ip, "40000")
		var flagged bool
		s, _ := status(h.ServeHTTP(httptest.NewRecorder(), r, caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			flagged = caddyhttp.GetVar(r.Context(), VarIPBlocked) == true
			return next.ServeHTTP(w, r)
		})))
		return s, flagged
	}
	// Two failures from each of three /64s: the third /64's second is
	// the network's sixth.
	want := []int{401, 401, 401, 401, 401, 429}
	for i, w := range want {
		ip := fmt.Sprintf("2001:db8:7:%d::1", i/2)
		if s, _ := from(ip, failAuth("unknown_key")); s != w {
			t.Fatalf("failure %d from %s: %d, want %d", i, ip, s, w)
		}
	}
	if s, flagged := from("2001:db8:7:ff::1", ok); s != 200 || !flagged {
		t.Fatalf("a new /64 of the network: %d, flagged for auth %v; want it passed on flagged", s, flagged)
	}
	if s, _ := from("2001:db8:7:fe::1", failAuth("unknown_key")); s != 429 {
		t.Fatalf("a failure from a new /64 of the network: %d, want 429", s)
	}
	if s, flagged := from("2001:db8:8::1", failAuth("unknown_key")); s != 401 || flagged {
		t.Fatalf("another /48: %d, flagged %v; want its own buckets", s, flagged)
	}
	// IPv4 has no network bucket: each address is on its own.
	for i := range 3 {
		if s, _ := from(fmt.Sprintf("192.0.2.%d", 100+i), failAuth("unknown_key")); s != 401 {
			t.Fatalf("IPv4 address %d: %d", i, s)
		}
	}
}

// Unless set, the network bucket is sixteen times the address's.
func TestNetworkBucketDefaultsToSixteenAddresses(t *testing.T) {
	h := newTestHandler(t, Handler{Tier: TierIP, IP: &Bucket{Capacity: 1000, Rate: 100}})
	if *h.Network != (Bucket{Capacity: 16000, Rate: 1600}) || h.netShape != "" {
		t.Fatalf("network %+v, shape %q", *h.Network, h.netShape)
	}
	if a := newTestHandler(t, Handler{Tier: TierAccount}); a.Network != nil {
		t.Fatalf("account tier with a network bucket: %+v", *a.Network)
	}
}

func TestGarbageCredentialsCannotDodgeTheIPTier(t *testing.T) {
	t.Parallel()
	h := newTestHandler(t, Handler{Tier: TierIP, Mode: ModeFailures, IP: &Bucket{Capacity: 3, Rate: 0.01}})
	for i := range 3 {
		if s, code := status(h.ServeHTTP(httptest.NewRecorder(), request("192.0.2.20"), failAuth("malformed"))); s != 401 || code != "invalid_credentials" {
			t.Fatalf("failure %d: %d %s", i, s, code)
		}
	}
	rec := httptest.NewRecorder()
	if s, code := status(h.ServeHTTP(rec, request("192.0.2.20"), failAuth("unknown_key"))); s != 429 || code != "rate_limited" {
		t.Fatalf("fourth failure: %d %s", s, code)
	}
	// Now this instance tells auth not to look credentials up for the address.
	var blocked any
	_ = h.ServeHTTP(httptest.NewRecorder(), request("192.0.2.20"), caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		blocked = caddyhttp.GetVar(r.Context(), VarIPBlocked)
		return nil
	}))
	if blocked != true {
		t.Fatal("blocked address not flagged for auth")
	}
	// Valid credentials and refusals for scope are not charged.
	for range 10 {
		if s, _ := status(h.ServeHTTP(httptest.NewRecorder(), request("192.0.2.21"), failAuth("insufficient_scope"))); s != 401 {
			t.Fatalf("scope refusal was charged: %d", s)
		}
		if s, _ := status(h.ServeHTTP(httptest.NewRecorder(), request("192.0.2.21"), ok)); s != 200 {
			t.Fatal("valid request charged")
		}
	}
}

// An address refused for a failed credential stays blocked until the tier
// has refilled as many tokens as auth looks up at once for one address:
// a block of one token's time let it keep that many lookups going every
// tenth of a second, some fifteen times the tier's rate.
func TestAFailureBlockLastsUntilABurstOfLookupsIsBack(t *testing.T) {
	t.Parallel()
	h := newTestHandler(t, Handler{Tier: TierIP, Mode: ModeFailures, IP: &Bucket{Capacity: 3, Rate: 10}})
	const ip = "192.0.2.50"
	for i := 0; ; i++ {
		s, _ := status(h.ServeHTTP(httptest.NewRecorder(), request(ip), failAuth("unknown_key")))
		if s == 429 {
			break
		}
		if i > 10 {
			t.Fatal("never refused")
		}
	}
	want := time.Duration(float64(guardian.LookupsPerClient) / 10 * float64(time.Second))
	if left := h.limiter.blocked.left(h.ipShape + ip); left < want-200*time.Millisecond {
		t.Fatalf("blocked for %s, want about %s (%d lookups at 10 a second)", left, want, guardian.LookupsPerClient)
	}
	// A refusal on a route of the same bucket that charges every request
	// (sign-in, blocking for one token's time) does not cut it short.
	signIn := &Handler{Tier: TierIP, IP: &Bucket{Capacity: 3, Rate: 10}}
	signIn.init(h.limiter)
	if s, _ := status(signIn.ServeHTTP(httptest.NewRecorder(), request(ip), ok)); s != 429 {
		t.Fatalf("a sign-in from the refused address: %d, want 429", s)
	}
	if left := h.limiter.blocked.left(h.ipShape + ip); left < want-400*time.Millisecond {
		t.Fatalf("after a refused sign-in, blocked for %s, want about %s still", left, want)
	}
}

// With refuse_blocked, an address out of tokens is refused before the
// handlers after the tier run (a function checking a signature itself,
// which writes its own refusal), and nothing else is.
func TestRefuseBlockedStopsAnAddressBeforeItsNextGuess(t *testing.T) {
	t.Parallel()
	h := newTestHandler(t, Handler{Tier: TierIP, Mode: ModeFailures, RefuseBlocked: true, IP: &Bucket{Capacity: 2, Rate: 0.01}})
	ran := 0
	guess := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		ran++
		caddyhttp.SetVar(r.Context(), varFailure, "invalid_signature")
		w.WriteHeader(http.StatusUnauthorized)
		return nil
	})
	send := func(ip string, next caddyhttp.Handler) (int, string, *httptest.ResponseRecorder) {
		rec := httptest.NewRecorder()
		err := h.ServeHTTP(rec, request(ip), next)
		if err == nil {
			return rec.Code, "", rec
		}
		s, code := status(err)
		return s, code, rec
	}
	var got []int
	for range 5 {
		s, _, _ := send("192.0.2.40", guess)
		got = append(got, s)
	}
	// Two tokens; the third guess ran and was charged in vain (its
	// answer had gone out), so it marked the address.
	if want := []int{401, 401, 401, 429, 429}; !slices.Equal(got, want) || ran != 3 {
		t.Fatalf("statuses %v and %d guesses run, want %v and 3", got, ran, want)
	}
	if s, code, rec := send("192.0.2.40", ok); s != 429 || code != "rate_limited" || rec.Header().Get("Retry-After") == "" {
		t.Fatalf("a blocked address: %d %s, Retry-After %q", s, code, rec.Header().Get("Retry-After"))
	}
	if s, _, _ := send("192.0.2.41", ok); s != 200 {
		t.Fatalf("another address: %d, want 200", s)
	}
}

func TestAccountTierChargesKeyAndAccount(t *testing.T) {
	t.Parallel()
	h := newTestHandler(t, Handler{Tier: TierAccount, Key: &Bucket{Capacity: 2, Rate: 0.01}, Account: &Bucket{Capacity: 3, Rate: 0.01}})
	with := func(key string) *http.Request {
		r := request("192.0.2.30")
		caddyhttp.SetVar(r.Context(), identity.VarKey, &identity.Identity{Kind: identity.KindAccount, CustomerID: "cust-1", KeyID: key, Scope: "read"})
		return r
	}
	results := []int{}
	for _, key := range []string{"k1", "k1", "k1", "k2", "k3"} {
		s, _ := status(h.ServeHTTP(httptest.NewRecorder(), with(key), ok))
		results = append(results, s)
	}
	want := []int{200, 200, 429, 200, 429} // key k1 runs out at 2; the account at 3
	for i := range want {
		if results[i] != want[i] {
			t.Fatalf("statuses %v, want %v", results, want)
		}
	}
	// Anonymous requests on optional routes have no account to charge.
	if s, _ := status(h.ServeHTTP(httptest.NewRecorder(), request("192.0.2.31"), ok)); s != 200 {
		t.Fatal("anonymous request refused")
	}
}

// A credential bucket of its own shape (re-auth's, a brute-force surface)
// falls back to a per-instance bucket while Redis is away; the usual one
// fails open.
func TestAShapedCredentialBucketHoldsWithoutRedis(t *testing.T) {
	t.Parallel()
	dead := NewLimiter(redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1}), "t:", 20*time.Millisecond, nil)
	t.Cleanup(func() { _ = dead.Close() })
	session := func() *http.Request {
		r := request("192.0.2.40")
		caddyhttp.SetVar(r.Context(), identity.VarKey, &identity.Identity{Kind: identity.KindSession, CustomerID: "cust-1", SessionID: "s1", UserID: "u1"})
		return r
	}
	shaped := Handler{Tier: TierAccount, Key: &Bucket{Capacity: 3, Rate: 0.01}}
	shaped.init(dead)
	usual := Handler{Tier: TierAccount}
	usual.init(dead)
	var got []int
	for range 4 {
		s, _ := status(shaped.ServeHTTP(httptest.NewRecorder(), session(), ok))
		got = append(got, s)
	}
	if want := []int{200, 200, 200, 429}; !slices.Equal(got, want) {
		t.Fatalf("the shaped bucket without Redis: %v, want %v", got, want)
	}
	for range 5 {
		if s, _ := status(usual.ServeHTTP(httptest.NewRecorder(), session(), ok)); s != 200 {
			t.Fatalf("the usual bucket without Redis: %d, want it to fail open", s)
		}
	}
}

// TestAValidCredentialRefusedIsChargedToItsBuckets: a key refused for
// scope or kind never reaches the account tier; the ip tier charges it to
// the key's and account's buckets, as its permitted calls are, and leaves
// its address's brute-force budget alone. Out of tokens, 429 replaces the
// 403. A session's refusals (which another origin's page can cause in the
// holder's browser) are not charged.
func TestAValidCredentialRefusedIsChargedToItsBuckets(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{ModeFailures, ModeAlways} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			h := newTestHandler(t, Handler{Tier: TierIP, Mode: mode, IP: &Bucket{Capacity: 10, Rate: 0.01},
				Key: &Bucket{Capacity: 2, Rate: 0.01}, Account: &Bucket{Capacity: 3, Rate: 0.01}})
			key := &identity.Identity{Kind: identity.KindAccount, CustomerID: "cust-" + mode, KeyID: "k1", Scope: "read"}
			session := &identity.Identity{Kind: identity.KindSession, CustomerID: "cust-" + mode, SessionID: "s1", Scope: "write"}
			refuse := func(id *identity.Identity, why string) caddyhttp.HandlerFunc {
				return func(w http.ResponseWriter, r *http.Request) error {
					caddyhttp.SetVar(r.Context(), identity.VarKey, id)
					caddyhttp.SetVar(r.Context(), varFailure, why)
					return caddyhttp.Error(403, problem.New(403, why, ""))
				}
			}
			// A session's refusals first: none is charged, so the key
			// still finds the account bucket full.
			for _, why := range []string{"insufficient_scope", "kind_not_allowed", "cross_site", "insufficient_scope", "cross_site"} {
				if s, _ := status(h.ServeHTTP(httptest.NewRecorder(), request("192.0.2.40"), refuse(session, why))); s != 403 {
					t.Fatalf("a session refused (%s): %d, want 403 (not charged)", why, s)
				}
			}
			var got []int
			for _, why := range []string{"insufficient_scope", "kind_not_allowed", "insufficient_scope"} {
				rec := httptest.NewRecorder()
				s, _ := status(h.ServeHTTP(rec, request("192.0.2.40"), refuse(key, why)))
				if s == 403 && rec.Header().Get("RateLimit-Limit") != "2" {
					t.Fatalf("a charged refusal does not report the key's bucket: %v", rec.Header())
				}
				got = append(got, s)
			}
			if want := []int{403, 403, 429}; !slices.Equal(got, want) {
				t.Fatalf("statuses %v, want %v (the key's 2 tokens, then 429)", got, want)
			}
			// Another refusal (no identity: a store outage) charges nothing.
			outage := func(w http.ResponseWriter, r *http.Request) error {
				caddyhttp.SetVar(r.Context(), varFailure, "store_unavailable")
				return caddyhttp.Error(503, problem.New(503, "unavailable", ""))
			}
			if s, _ := status(h.ServeHTTP(httptest.NewRecorder(), request("192.0.2.40"), caddyhttp.HandlerFunc(outage))); s != 503 {
				t.Fatalf("store outage: %d, want 503", s)
			}
			if mode == ModeFailures {
				// The address's budget is untouched: a failed credential
				// from it still passes.
				if s, _ := status(h.ServeHTTP(httptest.NewRecorder(), request("192.0.2.40"), failAuth("unknown_key"))); s != 401 {
					t.Fatalf("a failed credential after the refusals: %d, want 401", s)
				}
			}
		})
	}
}

func TestUnmarshalCaddyfile(t *testing.T) {
	cases := []struct {
		name, in string
		wantErr  bool
		check    func(Handler) bool
	}{
		{"ip tier with defaults", "guardian_ratelimit ip", false, func(h Handler) bool { return h.Tier == TierIP && h.IP == nil }},
		{"account tier with shapes", "guardian_ratelimit account {\n key 10 1\n account 50 5\n timeout 20ms\n}", false, func(h Handler) bool {
			return h.Key.Capacity == 10 && h.Account.Rate == 5 && h.Timeout > 0
		}},
		{"failures mode", "guardian_ratelimit ip {\n mode failures\n ip 5 0.5\n}", false, func(h Handler) bool { return h.Mode == ModeFailures && h.IP.Rate == 0.5 }},
		{"refuse_blocked", "guardian_ratelimit ip {\n mode failures\n refuse_blocked\n}", false, func(h Handler) bool { return h.RefuseBlocked }},
		{"refuse_blocked without mode failures", "guardian_ratelimit ip {\n refuse_blocked\n}", true, nil},
		{"refuse_blocked on the account tier", "guardian_ratelimit account {\n refuse_blocked\n}", true, nil},
		{"refuse_blocked with an argument", "guardian_ratelimit ip {\n mode failures\n refuse_blocked yes\n}", true, nil},
		{"no tier", "guardian_ratelimit", true, nil},
		{"unknown tier", "guardian_ratelimit global", true, nil},
		{"unknown mode", "guardian_ratelimit ip {\n mode sometimes\n}", true, nil},
		{"zero capacity", "guardian_ratelimit ip {\n ip 0 1\n}", true, nil},
		{"negative rate", "guardian_ratelimit ip {\n ip 10 -1\n}", true, nil},
		{"missing rate", "guardian_ratelimit ip {\n ip 10\n}", true, nil},
		{"NaN capacity", "guardian_ratelimit ip {\n ip NaN 10\n}", true, nil},
		{"NaN rate", "guardian_ratelimit ip {\n ip 100 NaN\n}", true, nil},
		{"infinite capacity", "guardian_ratelimit account {\n account +Inf 10\n}", true, nil},
		{"capacity past the bound", "guardian_ratelimit account {\n key 1e15 10\n}", true, nil},
		{"rate below the bound", "guardian_ratelimit ip {\n ip 100 1e-300\n}", true, nil},
		{"largest shapes", "guardian_ratelimit account {\n key 1e9 1e9\n account 1e9 0.001\n}", false, nil},
		{"bad timeout", "guardian_ratelimit ip {\n timeout never\n}", true, nil},
		{"unknown setting", "guardian_ratelimit ip {\n burst 5\n}", true, nil},
		{"mode on the account tier", "guardian_ratelimit account {\n mode failures\n}", true, nil},
		{"an ip bucket on the account tier", "guardian_ratelimit account {\n ip 5 1\n}", true, nil},
		{"a key bucket on the ip tier", "guardian_ratelimit ip {\n key 5 1\n}", true, nil},
		{"a network bucket", "guardian_ratelimit ip {\n mode failures\n network 800 80\n}", false, func(h Handler) bool { return h.Network.Capacity == 800 && h.Network.Rate == 80 }},
		{"a network bucket on the account tier", "guardian_ratelimit account {\n network 800 80\n}", true, nil},
		{"a network bucket of no capacity", "guardian_ratelimit ip {\n network 0 80\n}", true, nil},
		{"an account bucket on the ip tier", "guardian_ratelimit ip {\n account 5 1\n}", true, nil},
		{"speculate_below", "guardian_ratelimit account {\n speculate_below 0\n}", false, func(h Handler) bool { return *h.SpeculateBelow == 0 }},
		{"speculate_below on the ip tier", "guardian_ratelimit ip {\n speculate_below 4\n}", true, nil},
		{"negative speculate_below", "guardian_ratelimit account {\n speculate_below -1\n}", true, nil},
		{"speculate_below not a number", "guardian_ratelimit account {\n speculate_below many\n}", true, nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var h Handler
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.in))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v", err)
			}
			if tc.check != nil && !tc.check(h) {
				t.Errorf("parsed %+v", h)
			}
		})
	}
}

// answer writes the three RateLimit headers, readable under any spelling
// of their names, with two allocations.
func TestAnswerHeaders(t *testing.T) {
	for _, name := range []string{headerLimit, headerRemaining, headerReset} {
		if http.CanonicalHeaderKey(name) != name {
			t.Fatalf("%q is not canonical", name)
		}
	}
	h := &Handler{Tier: TierAccount}
	w := &headerWriter{h: http.Header{}}
	d := Decision{Allowed: true, Limit: 5000, Remaining: 4999, Reset: 1500 * time.Millisecond, Source: SourceRedis}
	if err := h.answer(w, d); err != nil {
		t.Fatal(err)
	}
	got := []string{w.h.Get("RateLimit-Limit"), w.h.Get("ratelimit-remaining"), w.h.Get("RATELIMIT-RESET")}
	if !slices.Equal(got, []string{"5000", "4999", "2"}) {
		t.Fatalf("headers %v, want [5000 4999 2]", got)
	}
	if allocs := testing.AllocsPerRun(100, func() {
		// As on a fresh response: with the headers there already, answer
		// would keep them and write nothing.
		delete(w.h, headerLimit)
		delete(w.h, headerRemaining)
		delete(w.h, headerReset)
		_ = h.answer(w, d)
	}); allocs > 2 {
		t.Errorf("%.0f allocations, want at most 2", allocs)
	}
}

// On a route with two tiers the headers name the bucket closest to empty,
// whichever tier decided last; a refusal names the bucket that refused.
func TestAnswerReportsTheTierClosestToEmpty(t *testing.T) {
	ip := Decision{Allowed: true, Limit: 100, Remaining: 42, Reset: 6 * time.Second, Source: SourceRedis}
	account := Decision{Allowed: true, Limit: 1000, Remaining: 999, Reset: time.Second, Source: SourceRedis}
	refused := Decision{Allowed: false, Limit: 1000, Remaining: 0, Reset: 10 * time.Second, RetryAfter: time.Second, Source: SourceRedis}
	cases := []struct {
		name  string
		first Decision
		then  Decision
		want  []string
	}{
		{"ip lower, account after", ip, account, []string{"100", "42", "6"}},
		{"account first, ip lower after", account, ip, []string{"100", "42", "6"}},
		{"the refusing bucket wins", ip, refused, []string{"1000", "0", "10"}},
		{"failing open reports nothing new", ip, Decision{Allowed: true, Source: SourceOpen}, []string{"100", "42", "6"}},
	}
	for _, tc := range cases {
		h := &Handler{Tier: TierAccount}
		w := &headerWriter{h: http.Header{}}
		_ = h.answer(w, tc.first)
		_ = h.answer(w, tc.then)
		got := []string{w.h.Get("RateLimit-Limit"), w.h.Get("RateLimit-Remaining"), w.h.Get("RateLimit-Reset")}
		if !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// headerWriter is a ResponseWriter whose header map already exists, so
// only answer's own allocations are counted.
type headerWriter struct{ h http.Header }

func (w *headerWriter) Header() http.Header         { return w.h }
func (w *headerWriter) Write(b []byte) (int, error) { return len(b), nil }
func (w *headerWriter) WriteHeader(int)             {}

// A route with a larger per-IP bucket (GitHub's webhook) must not refill
// the sign-in routes' bucket of the same address: each shape of bucket
// is its own, routes of one shape share theirs.
func TestALargerIPBucketDoesNotPayForSignIns(t *testing.T) {
	t.Parallel()
	l, _ := newTestLimiter(t)
	signIn, signIn2, webhook := &Handler{Tier: TierIP, Mode: ModeFailures}, &Handler{Tier: TierIP, Mode: ModeFailures}, &Handler{Tier: TierIP, IP: &Bucket{Capacity: 1000, Rate: 100}}
	signIn.init(l)
	signIn2.init(l)
	webhook.init(l)
	const ip = "192.0.2.80"
	refused := 0
	for range 150 {
		if s, _ := status(signIn.ServeHTTP(httptest.NewRecorder(), request(ip), failAuth("unknown_key"))); s == 429 {
			refused++
		}
		// Between two guesses, one webhook call from the same address.
		if s, _ := status(webhook.ServeHTTP(httptest.NewRecorder(), request(ip), ok)); s != 200 {
			t.Fatalf("webhook: %d", s)
		}
	}
	if refused < 40 {
		t.Fatalf("%d of 150 failed sign-ins refused from a bucket of 100: the webhook's bucket paid for them", refused)
	}
	// Another route of the sign-in shape shares its bucket.
	if s, _ := status(signIn2.ServeHTTP(httptest.NewRecorder(), request(ip), failAuth("unknown_key"))); s != 429 {
		t.Fatalf("the other sign-in route: %d, want 429 from the shared bucket", s)
	}
}

// A route with a tighter account bucket gets its own: one of its
// requests must not cut the customer's budget on the usual routes to its
// size, nor those routes' refill pay for it.
func TestATighterAccountBucketIsItsOwn(t *testing.T) {
	t.Parallel()
	l, _ := newTestLimiter(t)
	usual, tight := &Handler{Tier: TierAccount}, &Handler{Tier: TierAccount, Account: &Bucket{Capacity: 2, Rate: 0.01}}
	usual.init(l)
	tight.init(l)
	customer := testenv.Name("cust")
	with := func(key string) *http.Request {
		r := request("192.0.2.95")
		caddyhttp.SetVar(r.Context(), identity.VarKey, &identity.Identity{Kind: identity.KindAccount, CustomerID: customer, KeyID: key, Scope: "read"})
		return r
	}
	var got []int
	for i := range 3 {
		s, _ := status(tight.ServeHTTP(httptest.NewRecorder(), with(fmt.Sprintf("k%d", i)), ok))
		got = append(got, s)
	}
	if want := []int{200, 200, 429}; !slices.Equal(got, want) {
		t.Fatalf("the tight route: %v, want %v", got, want)
	}
	rec := httptest.NewRecorder()
	if s, _ := status(usual.ServeHTTP(rec, with("k9"), ok)); s != 200 || rec.Header().Get("RateLimit-Remaining") != "999" {
		t.Fatalf("the usual route after the tight one's: %d, RateLimit-Remaining %q; want the key's 999 of a full account",
			s, rec.Header().Get("RateLimit-Remaining"))
	}
	for i := range 2 {
		if s, _ := status(tight.ServeHTTP(httptest.NewRecorder(), with(fmt.Sprintf("k%d", 10+i)), ok)); s != 429 {
			t.Fatalf("the tight route after the usual one's (request %d): %d, want 429: the usual route refilled it", i, s)
		}
	}
}

// On a route that charges every request (always), a credential auth
// refused to look up (too many lookups from the address at once) is
// answered 429 too, without auth's invalid_token challenge.
func TestUncheckedCredentialOnAnAlwaysRouteIs429(t *testing.T) {
	t.Parallel()
	h := newTestHandler(t, Handler{Tier: TierIP})
	rec := httptest.NewRecorder()
	refuseUnchecked := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		caddyhttp.SetVar(r.Context(), varFailure, reasonIPBlocked)
		w.Header().Set("WWW-Authenticate", `Bearer realm="guardian", error="invalid_token"`)
		return caddyhttp.Error(401, problem.New(401, "invalid_credentials", ""))
	})
	s, code := status(h.ServeHTTP(rec, request("192.0.2.90"), refuseUnchecked))
	if s != 429 || code != "rate_limited" || rec.Header().Get("Retry-After") == "" || rec.Header().Get("WWW-Authenticate") != "" {
		t.Fatalf("%d %s %v", s, code, rec.Header())
	}
	// Not blocked, only refused a lookup: the headers still agree that
	// nothing is left for the second Retry-After names.
	h429 := rec.Header()
	if h429.Get("RateLimit-Remaining") != "0" || h429.Get("RateLimit-Reset") != h429.Get("Retry-After") || h429.Get("Retry-After") != "1" {
		t.Fatalf("Remaining %q, Reset %q, Retry-After %q; want 0, 1, 1", h429.Get("RateLimit-Remaining"), h429.Get("RateLimit-Reset"), h429.Get("Retry-After"))
	}
}

// TestDefaultsAreThePosturesTable: the security posture's rate-limiting
// table, written out here (not read from the defaults it checks).
func TestDefaultsAreThePosturesTable(t *testing.T) {
	var h Handler
	h.defaults()
	for _, tc := range []struct {
		tier           string
		got            *Bucket
		capacity, rate float64
	}{
		{"per IP", h.IP, 100, 10},
		{"per key", h.Key, 1000, 100},
		{"per account", h.Account, 5000, 500},
	} {
		if tc.got.Capacity != tc.capacity || tc.got.Rate != tc.rate {
			t.Errorf("%s: %g tokens, %g per second; the posture says %g, %g", tc.tier, tc.got.Capacity, tc.got.Rate, tc.capacity, tc.rate)
		}
	}
}

// The failure that blocks an address keeps its audit row; the refusals
// without a credential that follow while the block lasts are folded
// (counted by guardian_audit), and so is a credential refused unchecked.
// A request that authenticated is never folded.
func TestRefusalsOfABlockedAddressAreFoldedInTheAudit(t *testing.T) {
	t.Parallel()
	h := newTestHandler(t, Handler{Tier: TierIP, Mode: ModeFailures, IP: &Bucket{Capacity: 2, Rate: 0.01}})
	fold := func(next caddyhttp.Handler) (int, bool) {
		r := request("192.0.2.70")
		s, _ := status(h.ServeHTTP(httptest.NewRecorder(), r, next))
		return s, caddyhttp.GetVar(r.Context(), VarAuditFold) == true
	}
	known := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		caddyhttp.SetVar(r.Context(), identity.VarKey, &identity.Identity{CustomerID: "c", KeyID: "k", Kind: identity.KindAccount})
		return nil
	})
	for i, tc := range []struct {
		next   caddyhttp.Handler
		status int
		folded bool
		what   string
	}{
		{failAuth("malformed"), 401, false, "first failure"},
		{failAuth("missing"), 401, false, "second failure"},
		{failAuth("unknown_key"), 429, false, "the failure that blocks the address"},
		{failAuth("missing"), 429, true, "no credential, blocked"},
		{failAuth("malformed"), 429, true, "a malformed key, blocked"},
		{failAuth(reasonIPBlocked), 429, true, "a key not looked up"},
		{known, 200, false, "a cached valid key"},
		{failAuth("insufficient_scope"), 401, false, "a valid key refused for scope"},
	} {
		if s, folded := fold(tc.next); s != tc.status || folded != tc.folded {
			t.Errorf("%d %s: %d folded=%v, want %d folded=%v", i, tc.what, s, folded, tc.status, tc.folded)
		}
	}
}

// A network refused for a failed credential stays blocked until its
// bucket has refilled as many tokens as auth looks up at once for a /48
// (LookupsPerNetwork): blocked for one address's burst (a tenth of a
// second at the default sixteen times an address's rate), each of its
// /64s started a burst of its own whenever the block lapsed.
func TestANetworkFailureBlockLastsUntilTheNetworksLookupsAreBack(t *testing.T) {
	t.Parallel()
	h := newTestHandler(t, Handler{Tier: TierIP, Mode: ModeFailures, IP: &Bucket{Capacity: 100, Rate: 10}, Network: &Bucket{Capacity: 3, Rate: 160}})
	var c client
	for i := 0; ; i++ {
		r := request("192.0.2.1")
		r.RemoteAddr = fmt.Sprintf("[2001:db8:5:%x::1]:40000", i)
		c = h.client(r)
		if s, _ := status(h.ServeHTTP(httptest.NewRecorder(), r, failAuth("unknown_key"))); s == 429 {
			break
		}
		if i > 10 {
			t.Fatal("never refused")
		}
	}
	want := time.Duration(float64(guardian.LookupsPerNetwork) / 160 * float64(time.Second))
	if left := h.limiter.blocked.left(c.net); left < want/2 || left > want {
		t.Fatalf("the network blocked for %s, want about %s (%d lookups at 160 a second)", left, want, guardian.LookupsPerNetwork)
	}
	r := request("192.0.2.1")
	r.RemoteAddr = "[2001:db8:5:ffff::1]:40000"
	if s, _ := status(h.ServeHTTP(httptest.NewRecorder(), r, failAuth("unknown_key"))); s != 429 {
		t.Fatalf("another /64 of the blocked network: %d, want 429", s)
	}
}

// A refusal blocks the /48 only when its network bucket was short. Redis's
// reply cannot say so through what it left (an upper bound: 1 for an
// address bucket a millisecond's refill short of a token), so a /64
// flooding at its own rate would otherwise block its whole network again
// and again, though it could never empty the network's bucket alone.
func TestOnlyAShortNetworkBlocksTheNetwork(t *testing.T) {
	t.Parallel()
	h := newTestHandler(t, Handler{Tier: TierIP, Mode: ModeFailures})
	r := request("192.0.2.1")
	r.RemoteAddr = "[2001:db8:9:1::1]:40000"
	c := h.client(r)
	if c.net == "" {
		t.Fatal("an IPv6 client without a network")
	}
	addressShort, err := decode([]int64{0, 0, 9901, 1, 1500, 6500, 0}, h.v6Limits) // 0.9937 tokens; 1,500 in the network
	if err != nil {
		t.Fatal(err)
	}
	if addressShort.each[0] != 1 || addressShort.short != [2]bool{true, false} {
		t.Fatalf("decoded %+v", addressShort)
	}
	h.block(c, addressShort, func(Bucket, int) time.Duration { return time.Minute })
	if !h.limiter.blocked.has(c.ip) || h.limiter.blocked.has(c.net) {
		t.Fatal("the address's refusal did not block the address alone")
	}
	networkShort, _ := decode([]int64{0, 50, 5000, 0, 0, 100000, 7}, h.v6Limits)
	h.block(c, networkShort, func(Bucket, int) time.Duration { return time.Minute })
	if !h.limiter.blocked.has(c.net) {
		t.Fatal("the network's refusal did not block the network")
	}

	// An in-memory bucket emptied while Redis was away refuses what
	// Redis allowed: it is the one short, not the other.
	lb := newLocalBuckets()
	now := time.Now()
	keys := h.keys(c)
	lb.take(now, keys[:1], h.v6Limits[:1])
	for range 99 {
		lb.take(now, keys[:1], h.v6Limits[:1])
	}
	redisAllowed := Decision{Allowed: true, Source: SourceRedis, each: [2]float64{50, 1500}}
	if d := lb.reconcile(now, keys, h.v6Limits, redisAllowed); d.Allowed || d.short != [2]bool{true, false} {
		t.Fatalf("reconciled %+v, want refused by the address's bucket alone", d)
	}
}

// Two routes of one IP shape share an address's bucket whatever their
// network buckets, and an ip shape past the bounds' sixteenth still
// gives a valid default network.
func TestNetworkShapesLeaveTheAddressBucketShared(t *testing.T) {
	a := newTestHandler(t, Handler{Tier: TierIP})
	b := newTestHandler(t, Handler{Tier: TierIP, Network: &Bucket{Capacity: 50, Rate: 5}})
	r := request("192.0.2.1")
	r.RemoteAddr = "[2001:db8:9:1::1]:40000"
	ka, kb := a.keys(a.client(r)), b.keys(b.client(r))
	for i := range 2 { // each test limiter has a prefix of its own
		ka[i], kb[i] = strings.TrimPrefix(ka[i], a.limiter.prefix), strings.TrimPrefix(kb[i], b.limiter.prefix)
	}
	if ka[0] != kb[0] || ka[1] == kb[1] || hashTag(kb[0]) != hashTag(kb[1]) {
		t.Fatalf("keys %q and %q", ka, kb)
	}
	big := Handler{Tier: TierIP, IP: &Bucket{Capacity: 1e9, Rate: 1e9}}
	big.defaults()
	if err := big.Validate(); err != nil {
		t.Fatalf("the largest ip bucket: %v", err)
	}
}
