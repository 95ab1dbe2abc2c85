package function

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/glassmkr/guardian/shared/identity"
	"github.com/glassmkr/guardian/shared/testenv"
)

// headersSeen sends req through h to the test function's /headers and
// returns the headers the function received.
func headersSeen(t *testing.T, h *Handler, req *http.Request) map[string][]string {
	t.Helper()
	rec := httptest.NewRecorder()
	if err := h.ServeHTTP(rec, req, nil); err != nil {
		t.Fatal(err)
	}
	var got map[string][]string
	if err := json.Unmarshal(rec.Body.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	return got
}

func TestForgedIdentityHeadersNeverReachTheFunction(t *testing.T) {
	t.Parallel()
	h := newHandler(t, &Handler{})
	r := httptest.NewRequest("GET", "/headers", nil)
	r.Header.Set("Guardian-Customer-Id", "victim-customer")
	r.Header.Set("Guardian-Scope", "admin")
	r.Header.Set("Guardian-Auth-Kind", "session")
	r.Header["guardian-key-id"] = []string{"forged"}
	r.Header.Set("Guardian-Request-Id", "forged-request-id")
	r.Header.Set("X-Forwarded-For", "10.0.0.1")
	r.Header.Set("Accept", "application/json")
	got := headersSeen(t, h, r)

	for k, v := range got {
		for _, forged := range []string{"victim-customer", "admin", "session", "forged", "10.0.0.1"} {
			if strings.Contains(strings.Join(v, ","), forged) {
				t.Errorf("function received forged %s: %v", k, v)
			}
		}
	}
	if got["Accept"] == nil {
		t.Error("ordinary headers were dropped")
	}
	if id := got[identity.HeaderRequestID]; len(id) != 1 || len(id[0]) != 32 {
		t.Errorf("request id = %v, want one fresh id", id)
	}
	if ip := got[identity.HeaderClientIP]; len(ip) != 1 || ip[0] != "192.0.2.1" {
		t.Errorf("client ip = %v", ip)
	}
}

func TestEdgeIdentityReachesTheFunction(t *testing.T) {
	t.Parallel()
	h := newHandler(t, &Handler{})
	r := httptest.NewRequest("GET", "/headers", nil)
	r.Header.Set("Guardian-Customer-Id", "forged")
	ctx := context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{})
	r = r.WithContext(ctx)
	caddyhttp.SetVar(ctx, identity.VarKey, &identity.Identity{Kind: identity.KindAccount, CustomerID: "cust-1", KeyID: "key-1", Scope: "write"})
	caddyhttp.SetVar(ctx, identity.RequestIDVarKey, "req-123")
	got := headersSeen(t, h, r)
	want := map[string]string{
		identity.HeaderKind: identity.KindAccount, identity.HeaderCustomer: "cust-1",
		identity.HeaderKey: "key-1", identity.HeaderScope: "write", identity.HeaderRequestID: "req-123",
	}
	for k, v := range want {
		if g := got[k]; len(g) != 1 || g[0] != v {
			t.Errorf("%s = %v, want %q", k, g, v)
		}
	}
	if got[identity.HeaderUser] != nil || got[identity.HeaderServer] != nil {
		t.Errorf("unexpected identity headers: %v", got)
	}
}

func TestMetricsCountStartsCrashesAndRequests(t *testing.T) {
	t.Parallel()
	ctx := testContext(t)
	h := provisionIn(t, ctx, &Handler{})
	name := h.Name
	// Series are per function name and package-wide: compare with a
	// baseline, so repeated runs (-count) agree.
	starts0 := testutil.ToFloat64(metrics.starts.WithLabelValues(name))
	crashes0 := testutil.ToFloat64(metrics.crashes.WithLabelValues(name))
	pid := pidOf(t, h)
	pidOf(t, h)
	_, _ = callMethod(h, "POST", "/crash")
	waitFor(t, "crash to be noticed", func() bool {
		return !testenv.Alive(pid) && testutil.ToFloat64(metrics.crashes.WithLabelValues(name)) == crashes0+1
	})
	pidOf(t, h)

	if got := testutil.ToFloat64(metrics.starts.WithLabelValues(name)) - starts0; got != 2 {
		t.Errorf("starts = %v, want 2", got)
	}
	if got := testutil.ToFloat64(metrics.crashes.WithLabelValues(name)) - crashes0; got != 1 {
		t.Errorf("crashes = %v, want 1", got)
	}
	if got := testutil.ToFloat64(metrics.inFlight.WithLabelValues(name)); got != 0 {
		t.Errorf("in flight = %v, want 0", got)
	}
	if n := testutil.CollectAndCount(metrics.coldStart); n == 0 {
		t.Error("no cold start observations")
	}
	// The metrics are registered in the config's registry, where Caddy's
	// metrics endpoint reads them.
	families, err := ctx.GetMetricsRegistry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]bool{}
	for _, f := range families {
		found[f.GetName()] = true
	}
	for _, name := range []string{"guardian_function_starts_total", "guardian_function_crashes_total", "guardian_function_cold_start_seconds", "guardian_function_in_flight_requests", "guardian_function_request_duration_seconds"} {
		if !found[name] {
			t.Errorf("%s not in the config's metrics registry", name)
		}
	}
}

func TestWarmFunctionStartsWithTheConfigAndOutlivesIdleness(t *testing.T) {
	t.Parallel()
	idle := caddy.Duration(50 * time.Millisecond)
	ctx := testContext(t)
	h := provisionIn(t, ctx, &Handler{MinWarm: 1, IdleTimeout: &idle})
	app, err := ctx.App("guardian_functions")
	if err != nil {
		t.Fatal(err)
	}
	if err := app.(*App).Start(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "warm start", func() bool {
		h.inst.mu.Lock()
		defer h.inst.mu.Unlock()
		return h.inst.proc != nil
	})
	pid := pidOf(t, h)
	time.Sleep(300 * time.Millisecond) // several idle timeouts
	if !testenv.Alive(pid) || pidOf(t, h) != pid {
		t.Fatal("warm function was stopped for idleness")
	}
	_, _ = callMethod(h, "POST", "/crash")
	waitFor(t, "warm restart after a crash", func() bool {
		h.inst.mu.Lock()
		defer h.inst.mu.Unlock()
		return h.inst.proc != nil && h.inst.proc.cmd.Process.Pid != pid
	})
}

// The caller's key and session cookie stay at the edge: a function learns
// who called from the identity headers, and gets no secret to replay.
func TestCallerCredentialsDoNotReachTheFunction(t *testing.T) {
	t.Parallel()
	h := newHandler(t, &Handler{})
	r := httptest.NewRequest("GET", "/headers", nil)
	r.Header.Set("Authorization", "Bearer gmk_acct_live_secret")
	r.Header.Add("Cookie", "theme=dark; guardian_token=session-secret")
	r.Header.Add("Cookie", "guardian_mfa=challenge")
	got := headersSeen(t, h, r)
	if v := got["Authorization"]; v != nil {
		t.Errorf("Authorization reached the function: %v", v)
	}
	if v := got["Cookie"]; len(v) != 1 || v[0] != "theme=dark; guardian_mfa=challenge" {
		t.Errorf("Cookie = %q, want the other cookies only", v)
	}
}

func TestStripCredentials(t *testing.T) {
	cases := []struct {
		name   string
		cookie []string
		want   []string
	}{
		{"none", nil, nil},
		{"only the session", []string{"guardian_token=x"}, nil},
		{"session among others", []string{"a=1;guardian_token=x ;  b=2"}, []string{"a=1; b=2"}},
		{"a name that only starts alike stays", []string{"guardian_token_x=1; guardian_token=y"}, []string{"guardian_token_x=1"}},
		{"several headers become one", []string{"a=1", "guardian_token=x", "b=2"}, []string{"a=1; b=2"}},
		{"a value mentioning the name stays", []string{"c=guardian_token=x"}, []string{"c=guardian_token=x"}},
		{"empty pieces go", []string{";;guardian_token=x;;"}, nil},
		{"a bare name is a cookie too", []string{"guardian_token; a=1"}, []string{"a=1"}},
	}
	for _, tc := range cases {
		h := http.Header{"Authorization": {"Bearer k"}}
		for _, c := range tc.cookie {
			h.Add("Cookie", c)
		}
		stripCredentials(h)
		if h.Get("Authorization") != "" || !slices.Equal(h.Values("Cookie"), tc.want) {
			t.Errorf("%s: Authorization %q, Cookie %q, want %q", tc.name, h.Get("Authorization"), h.Values("Cookie"), tc.want)
		}
	}
}

// A warm function that cannot start is retried by one chain of warm-ups,
// however many configs' Starts (reloads) and failed starts ask for one.
func TestAFailingWarmFunctionHasOneRetryChain(t *testing.T) {
	t.Setenv("TESTFN_FAIL_START", "1")
	h := newHandler(t, &Handler{MinWarm: 1, Env: []string{"TESTFN_FAIL_START"}, StartTimeout: caddy.Duration(100 * time.Millisecond)})
	var wg sync.WaitGroup
	for range 6 {
		wg.Go(func() { h.inst.rewarm(time.Hour) })
	}
	wg.Wait()
	// A warm-up failing meanwhile (a reload's Start) adds none either.
	h.inst.warmUp(context.Background())
	h.inst.mu.Lock()
	n, pending, starts := h.inst.rewarms, h.inst.warmPending, h.inst.starts
	h.inst.mu.Unlock()
	if starts == 0 {
		t.Fatal("the warm-up did not try to start the function")
	}
	if n != 1 || !pending {
		t.Fatalf("%d warm-up retries scheduled (one pending: %v), want 1", n, pending)
	}
}
