package audit

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"

	"github.com/glassmkr/guardian/shared/audit"
	"github.com/glassmkr/guardian/shared/identity"
	"github.com/glassmkr/guardian/shared/testenv"
)

// TestAnAnswerWhoseRowIsLostKeepsTheEdgeHeaders: when the row cannot be
// recorded after the function answered, the client gets 503 with the
// edge's own headers (security headers, Request-Id) and a Retry-After,
// and none of the function's.
func TestAnAnswerWhoseRowIsLostKeepsTheEdgeHeaders(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	w, err := NewWriter(WriterConfig{DSN: pg.AppDSN, SpoolDir: filepath.Join(t.TempDir(), "spool")})
	if err != nil {
		t.Fatal(err)
	}
	h := &Handler{writer: w, log: zap.NewNop(), Timeout: caddy.Duration(time.Second)}

	req := httptest.NewRequest("POST", "/api/v1/keys", nil)
	ctx := context.WithValue(req.Context(), caddyhttp.VarsCtxKey, map[string]any{})
	caddyhttp.SetVar(ctx, identity.VarKey, &identity.Identity{Kind: identity.KindAccount, CustomerID: "c", KeyID: "k", Scope: "write"})
	req = req.WithContext(ctx)
	rec := httptest.NewRecorder()
	rec.Header().Set("Strict-Transport-Security", "max-age=63072000")
	rec.Header().Set("X-Frame-Options", "DENY")
	fn := caddyhttp.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) error {
		_ = w.Close() // the function has acted; its row can no longer be recorded
		w := rw
		w.Header().Set("X-From-Function", "1")
		w.Header().Set("Location", "/api/v1/keys/k2")
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write([]byte(`{"key":"never sent"}`))
		return nil
	})
	before := testutil.ToFloat64(metrics.unrecorded)
	if err := h.ServeHTTP(rec, req, fn); err != nil {
		t.Fatal(err)
	}
	if rec.Code != 503 {
		t.Fatalf("status %d", rec.Code)
	}
	if testutil.ToFloat64(metrics.unrecorded) <= before {
		t.Error("the answer whose row was lost was not counted")
	}
	var doc map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &doc); err != nil || doc["code"] != "audit_unavailable" {
		t.Fatalf("body %q: %v", rec.Body, err)
	}
	got := rec.Result().Header
	for _, k := range []string{"Strict-Transport-Security", "X-Frame-Options", "Request-Id", "Retry-After"} {
		if got.Get(k) == "" {
			t.Errorf("%s missing from the 503", k)
		}
	}
	for _, k := range []string{"X-From-Function", "Location"} {
		if got.Get(k) != "" {
			t.Errorf("the function's %s went out with the 503", k)
		}
	}
}

// A request that reaches a writer being unloaded (a reload replaced it)
// before announcing its row is refused with nothing done: its row could
// find the writer closed once its function had acted.
func TestARequestReachingAnUnloadedWriterIsRefusedBeforeItActs(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	w := newWriter(t, pg.AppDSN, 0)
	w.announce() // an earlier request under way keeps the writer draining
	if err := w.Destruct(); err != nil {
		t.Fatal(err)
	}
	h := &Handler{writer: w, log: zap.NewNop(), Timeout: caddy.Duration(time.Second)}
	req := httptest.NewRequest("POST", "/api/v1/keys", nil)
	ctx := context.WithValue(req.Context(), caddyhttp.VarsCtxKey, map[string]any{})
	caddyhttp.SetVar(ctx, identity.VarKey, &identity.Identity{Kind: identity.KindAccount, CustomerID: "c", KeyID: "k", Scope: "write"})
	called := false
	err := h.ServeHTTP(httptest.NewRecorder(), req.WithContext(ctx), caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
		called = true
		return nil
	}))
	var he caddyhttp.HandlerError
	if !errors.As(err, &he) || he.Err != refusedUnaudited || called {
		t.Fatalf("request at an unloaded writer: %v, function called %v; want refused before it", err, called)
	}
	w.withdraw()
}

// TestARowBelongsToTheAccountItActedOn: a function's annotation names the
// account a sign-in acted on; the row is that account's even when the
// browser also presented another account's session, and carries nothing
// of that session. An API key's call stays its own customer's.
func TestARowBelongsToTheAccountItActedOn(t *testing.T) {
	t.Parallel()
	const (
		custA, userA, keyA = "0a000000-0000-4000-8000-00000000000a", "1a000000-0000-4000-8000-00000000000a", "2a000000-0000-4000-8000-00000000000a"
		custB, userB       = "0b000000-0000-4000-8000-00000000000b", "1b000000-0000-4000-8000-00000000000b"
	)
	sessionA := &identity.Identity{Kind: identity.KindSession, CustomerID: custA, UserID: userA, SessionID: "s", Scope: "write"}
	keyOfA := &identity.Identity{Kind: identity.KindAccount, CustomerID: custA, KeyID: keyA, Scope: "admin"}
	signIn := func(cust, user string) string {
		return audit.Annotation{CustomerID: cust, UserID: user, ResourceType: "session", Action: "auth_failed"}.Encode()
	}
	for _, tc := range []struct {
		name            string
		id              *identity.Identity
		ann             string
		cust, user, key string
	}{
		{"anonymous sign-in", nil, signIn(custB, userB), custB, userB, ""},
		{"sign-in to another account over a session", sessionA, signIn(custB, userB), custB, userB, ""},
		{"another account, no user named", sessionA, signIn(custB, ""), custB, "", ""},
		{"re-auth of the session's own account", sessionA, signIn(custA, userA), custA, userA, ""},
		{"a session's call, not attributed", sessionA, audit.Annotation{ResourceType: "key", Action: "create"}.Encode(), custA, userA, ""},
		{"not a customer id", sessionA, signIn("not-a-uuid", userB), custA, userA, ""},
		{"an API key's call stays its customer's", keyOfA, signIn(custB, userB), custA, "", keyA},
		{"anonymous, nothing named", nil, audit.Annotation{ResourceType: "session"}.Encode(), "", "", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := &Handler{log: zap.NewNop()}
			req := httptest.NewRequest("POST", "/auth/login", nil)
			req = req.WithContext(context.WithValue(req.Context(), caddyhttp.VarsCtxKey, map[string]any{}))
			row := h.row(req, tc.id, "", 401, tc.ann, time.Now(), "req-1")
			if row.CustomerID != tc.cust || row.UserID != tc.user || row.KeyID != tc.key {
				t.Fatalf("customer %q user %q key %q, want %q %q %q", row.CustomerID, row.UserID, row.KeyID, tc.cust, tc.user, tc.key)
			}
		})
	}
}

// A key a client sent where an id belongs reaches no column of its row,
// whatever its letter case: a function names the resource by the path
// segment it read (lower-cased), and a user agent is the client's text.
func TestARowKeepsNoKeyInResourceOrUserAgent(t *testing.T) {
	t.Parallel()
	key := "gmk_cru_live_" + strings.Repeat("Ab3", 15)[:43] + "_q1w2"
	h := &Handler{log: zap.NewNop()}
	req := httptest.NewRequest("DELETE", "/api/v1/servers/"+strings.ToUpper(key), nil)
	req.Header.Set("User-Agent", "collector/1.0 key="+key)
	req = req.WithContext(context.WithValue(req.Context(), caddyhttp.VarsCtxKey, map[string]any{}))
	ann := audit.Annotation{ResourceType: "server", ResourceID: strings.ToLower(key), Action: "delete"}.Encode()
	row := h.row(req, nil, "", 404, ann, time.Now(), "req-1")
	body := strings.ToLower(key[len("gmk_cru_live_"):][:43])
	for name, v := range map[string]string{"resource_id": row.ResourceID, "user_agent": row.UserAgent, "path": row.Path} {
		if strings.Contains(strings.ToLower(v), body) {
			t.Errorf("%s keeps the key: %q", name, v)
		}
		if !strings.Contains(v, audit.Redacted) {
			t.Errorf("%s = %q, want it redacted", name, v)
		}
	}
}

// A function's auth_failed is a refusal whatever its status but a 5xx: a
// form sign-in with a wrong password answers 303, back to its form.
func TestAFailedSignInIsDeniedWhateverItsStatus(t *testing.T) {
	t.Parallel()
	h := &Handler{log: zap.NewNop()}
	req := httptest.NewRequest("POST", "/auth/login", nil)
	req = req.WithContext(context.WithValue(req.Context(), caddyhttp.VarsCtxKey, map[string]any{}))
	for _, status := range []int{303, 401, 429} {
		row := h.row(req, nil, "", status, audit.Annotation{Action: "auth_failed"}.Encode(), time.Now(), "req-1")
		if row.Action != "auth_failed" || row.Result != audit.ResultDenied {
			t.Errorf("%d: action %q result %q, want auth_failed denied", status, row.Action, row.Result)
		}
	}
	if row := h.row(req, nil, "", 303, audit.Annotation{Action: "create"}.Encode(), time.Now(), "req-1"); row.Result != audit.ResultSuccess {
		t.Errorf("a sign-in's 303: result %q, want success", row.Result)
	}
	if row := h.row(req, nil, "", 503, audit.Annotation{Action: "auth_failed"}.Encode(), time.Now(), "req-1"); row.Result != audit.ResultError {
		t.Errorf("a check that could not be made (503): result %q, want error", row.Result)
	}
}

// A request that comes while the audit queues are saturated is refused
// before its function runs: "nothing was done", not "outcome unknown".
func TestASaturatedWriterRefusesBeforeTheFunctionRuns(t *testing.T) {
	t.Parallel()
	c := &chain{in: make(chan *pending, 2)}
	w := &Writer{chains: []*chain{c}, maxBatch: 1, coming: newComing()}
	c.in <- &pending{}
	c.in <- &pending{}
	h := &Handler{writer: w, log: zap.NewNop()}
	ran := false
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { ran = true; return nil })
	rec := httptest.NewRecorder()
	req := httptest.NewRequest("DELETE", "/api/v1/servers/x", nil)
	req = req.WithContext(context.WithValue(req.Context(), caddyhttp.VarsCtxKey, map[string]any{}))
	err := h.ServeHTTP(rec, req, next)
	var he caddyhttp.HandlerError
	if !errors.As(err, &he) || he.StatusCode != http.StatusServiceUnavailable || !errors.Is(err, refusedUnaudited) || rec.Header().Get("Retry-After") == "" {
		t.Fatalf("saturated: %v, Retry-After %q", err, rec.Header().Get("Retry-After"))
	}
	if ran {
		t.Fatal("the function ran although its row could find no room")
	}
}
