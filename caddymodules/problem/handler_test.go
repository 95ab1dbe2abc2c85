package problem

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/glassmkr/guardian/shared/identity"
	"github.com/glassmkr/guardian/shared/problem"
)

func TestFromError(t *testing.T) {
	cases := []struct {
		name       string
		err        error
		wantStatus int
		wantCode   string
		wantDetail string
	}{
		{"a problem keeps its code and detail", caddyhttp.Error(401, problem.New(401, "reauth_required", "confirm your password")), 401, "reauth_required", "confirm your password"},
		{"a wrapped problem is found", caddyhttp.Error(403, fmt.Errorf("auth: %w", problem.New(403, "wrong_server", "key bound to another server"))), 403, "wrong_server", "key bound to another server"},
		{"internal error text is not sent", caddyhttp.Error(502, errors.New("dial unix /run/guardian/fn.sock: connection refused")), 502, "bad_gateway", problem.DetailForStatus(502)},
		{"a bare 404 gets the not_found code", caddyhttp.Error(404, nil), 404, "not_found", "no such resource"},
		{"a plain error is a 500", errors.New("boom"), 500, "internal_error", problem.DetailForStatus(500)},
		{"no error at all is a 500", nil, 500, "internal_error", problem.DetailForStatus(500)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := FromError(tc.err)
			if p.Status != tc.wantStatus || p.Code != tc.wantCode || p.Detail != tc.wantDetail {
				t.Errorf("got status=%d code=%q detail=%q", p.Status, p.Code, p.Detail)
			}
		})
	}
}

func TestServeHTTPWritesProblemWithRequestID(t *testing.T) {
	herr := caddyhttp.Error(404, nil)
	req := httptest.NewRequest("GET", "/nope", nil)
	req = req.WithContext(context.WithValue(req.Context(), caddyhttp.ErrorCtxKey, error(herr)))
	rec := httptest.NewRecorder()
	if err := (&Handler{}).ServeHTTP(rec, req, nil); err != nil {
		t.Fatal(err)
	}
	if rec.Code != 404 || rec.Header().Get("Content-Type") != problem.ContentType {
		t.Fatalf("status %d, content type %q", rec.Code, rec.Header().Get("Content-Type"))
	}
	var doc map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	// Not the Caddy error's id, which nothing logs: a new one, also sent
	// as Request-Id.
	if id := rec.Header().Get("Request-Id"); id == "" || doc["request_id"] != id || doc["code"] != "not_found" {
		t.Errorf("doc = %v, Request-Id %q", doc, id)
	}
}

// TestTheRequestIDIsOneSupportCanFind: on an audited route the problem
// names the audit row's request id (the Request-Id the audit module sent),
// not a module's error id ("rl" on every 429); elsewhere a new id, and a
// server error is logged with it.
func TestTheRequestIDIsOneSupportCanFind(t *testing.T) {
	for _, tc := range []struct {
		name    string
		err     error
		auditID string
		logged  bool
	}{
		{"audited 429", caddyhttp.HandlerError{Err: problem.New(429, "rate_limited", "slow down"), StatusCode: 429, ID: "rl"}, "req-audit-1", false},
		{"audited 502", caddyhttp.Error(502, errors.New("dial unix @fn: connection refused")), "req-audit-2", true},
		{"unaudited 401", caddyhttp.HandlerError{Err: problem.New(401, "invalid_credentials", "no"), StatusCode: 401, ID: "x"}, "", false},
		{"unaudited 500", errors.New("boom"), "", true},
		{"a 503 the edge chose is not logged here", caddyhttp.Error(503, problem.New(503, "function_busy", "busy")), "", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			core, logs := observer.New(zap.InfoLevel)
			h := &Handler{log: zap.New(core)}
			req := httptest.NewRequest("GET", "/api/v1/x", nil)
			vars := map[string]any{}
			if tc.auditID != "" {
				vars[identity.RequestIDVarKey] = tc.auditID
			}
			ctx := context.WithValue(req.Context(), caddyhttp.VarsCtxKey, vars)
			req = req.WithContext(context.WithValue(ctx, caddyhttp.ErrorCtxKey, tc.err))
			rec := httptest.NewRecorder()
			if tc.auditID != "" {
				rec.Header().Set("Request-Id", tc.auditID) // as the audit module sent it
			}
			if err := h.ServeHTTP(rec, req, nil); err != nil {
				t.Fatal(err)
			}
			var doc map[string]any
			if err := json.Unmarshal(rec.Body.Bytes(), &doc); err != nil {
				t.Fatal(err)
			}
			id, _ := doc["request_id"].(string)
			if id == "" || id != rec.Header().Get("Request-Id") || (tc.auditID != "" && id != tc.auditID) {
				t.Fatalf("request_id %q, Request-Id %q, audit row's %q", id, rec.Header().Get("Request-Id"), tc.auditID)
			}
			entries := logs.FilterField(zap.String("request_id", id)).Len()
			if tc.logged != (entries == 1) {
				t.Errorf("%d log entries with the request id, want logged=%v", entries, tc.logged)
			}
		})
	}
}

func TestABrowserNavigationGetsAPage(t *testing.T) {
	herr := caddyhttp.Error(403, problem.New(403, "insufficient_scope", "only administrators may read the <audit> log"))
	browser := "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
	for _, c := range []struct {
		method, accept, contentType string
		html                        bool
	}{
		{"GET", browser, "", true},
		{"HEAD", "text/html", "", true},
		{"GET", "*/*", "", false},
		{"GET", "", "", false},
		{"GET", "application/json", "", false},
		{"GET", "text/html, application/problem+json", "", false},
		{"POST", "text/html", "", false},
		{"POST", browser, "application/json", false},
		// A form a browser submits (sign-in without script, say) refused
		// at the edge (429, 403): a page, not JSON shown raw.
		{"POST", browser, "application/x-www-form-urlencoded", true},
		{"POST", browser, "multipart/form-data; boundary=x", true},
		{"POST", "application/json", "application/x-www-form-urlencoded", false},
		{"DELETE", browser, "application/x-www-form-urlencoded", false},
	} {
		req := httptest.NewRequest(c.method, "/settings/audit", nil)
		req.Header.Set("Accept", c.accept)
		if c.contentType != "" {
			req.Header.Set("Content-Type", c.contentType)
		}
		req = req.WithContext(context.WithValue(req.Context(), caddyhttp.ErrorCtxKey, error(herr)))
		rec := httptest.NewRecorder()
		if err := (&Handler{}).ServeHTTP(rec, req, nil); err != nil {
			t.Fatal(err)
		}
		ct := rec.Header().Get("Content-Type")
		if rec.Code != 403 {
			t.Errorf("%s %q: status %d", c.method, c.accept, rec.Code)
		}
		if !c.html {
			if ct != problem.ContentType {
				t.Errorf("%s %q: %q, want problem+json", c.method, c.accept, ct)
			}
			continue
		}
		body := rec.Body.String()
		if !strings.HasPrefix(ct, "text/html") || !strings.Contains(rec.Header().Get("Content-Security-Policy"), "default-src 'none'") {
			t.Errorf("%s %q: %q", c.method, c.accept, ct)
		}
		if c.method == "GET" && (!strings.Contains(body, "only administrators may read the &lt;audit&gt; log") || !strings.Contains(body, rec.Header().Get("Request-Id"))) {
			t.Errorf("page body: %s", body)
		}
	}
}

// The API's errors are problem+json by contract (docs/api.md), also for a
// browser that navigates to one; only the pages' paths get pages.
func TestTheAPIAnswersProblemJSONToABrowserToo(t *testing.T) {
	herr := caddyhttp.Error(401, problem.New(401, "unauthenticated", "sign in"))
	browser := "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"
	for _, c := range []struct {
		method, path string
		html         bool
	}{
		{"GET", "/api/v1/whoami", false},
		{"GET", "/API/V1/keys", false}, // Caddy's matchers ignore case
		{"POST", "/github/secret-scanning", false},
		{"GET", "/apiary", true},
		{"GET", "/settings/audit", true},
	} {
		req := httptest.NewRequest(c.method, c.path, nil)
		req.Header.Set("Accept", browser)
		if c.method == "POST" {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
		req = req.WithContext(context.WithValue(req.Context(), caddyhttp.ErrorCtxKey, error(herr)))
		rec := httptest.NewRecorder()
		if err := (&Handler{}).ServeHTTP(rec, req, nil); err != nil {
			t.Fatal(err)
		}
		if html := strings.HasPrefix(rec.Header().Get("Content-Type"), "text/html"); html != c.html {
			t.Errorf("%s %s: Content-Type %q, want a page: %v", c.method, c.path, rec.Header().Get("Content-Type"), c.html)
		}
	}
}

// discard is a ResponseWriter that keeps nothing, so that the benchmark
// counts the handler's allocations, not a recorder's.
type discard struct{ h http.Header }

func (d *discard) Header() http.Header         { return d.h }
func (d *discard) Write(b []byte) (int, error) { return len(b), nil }
func (d *discard) WriteHeader(int)             {}

// BenchmarkServeHTTP renders the edge's commonest problems: the limiter's
// 429 (a problem of its own, with the handler error's id) and a bare 404.
func BenchmarkServeHTTP(b *testing.B) {
	for _, tc := range []struct {
		name string
		err  error
	}{
		{"rate_limited", caddyhttp.HandlerError{Err: problem.New(http.StatusTooManyRequests, "rate_limited", "too many requests"), StatusCode: http.StatusTooManyRequests, ID: "rl"}},
		{"not_found", caddyhttp.Error(http.StatusNotFound, nil)},
	} {
		b.Run(tc.name, func(b *testing.B) {
			req := httptest.NewRequest("GET", "/api/v1/servers", nil)
			req = req.WithContext(context.WithValue(req.Context(), caddyhttp.ErrorCtxKey, tc.err))
			w := &discard{h: http.Header{}}
			b.ReportAllocs()
			for b.Loop() {
				clear(w.h)
				if err := (&Handler{}).ServeHTTP(w, req, nil); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
