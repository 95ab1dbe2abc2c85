package fnserve

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"

	"github.com/glassmkr/guardian/shared/problem"
)

// Caddy routes (and picks scopes) on the cleaned path and passes the path
// on as sent: a function must refuse what it does not serve as written,
// never redirect to it having done nothing (a 3xx is audited as success).
func TestANonCanonicalPathIs404BeforeTheHandler(t *testing.T) {
	ran := 0
	mux := http.NewServeMux()
	act := func(w http.ResponseWriter, r *http.Request) { ran++; w.WriteHeader(http.StatusNoContent) }
	mux.HandleFunc("DELETE /api/v1/keys/{id}", act)
	mux.HandleFunc("POST /api/v1/keys", act)
	mux.HandleFunc("POST /api/v1/servers", act)
	h := handler(mux)
	for _, c := range []struct{ method, target string }{
		{"DELETE", "//api/v1/keys/k1"},
		{"DELETE", "/api/v1//keys/k1"},
		{"POST", "/api/v1/./keys"},
		{"POST", "/api/v1/x/../keys"},
		{"POST", "//api/v1/servers"},
		{"POST", "/api/v1/keys/."},
		{"DELETE", "/api/v1/keys/k1/"},
		{"POST", "/api/v1/keys/"},
		// Escaped dots and slashes the mux would not clean.
		{"DELETE", "/api/v1/keys/%2E%2E"},
		{"DELETE", "/api/v1/keys/a%2F..%2Fb"},
		{"DELETE", "/api/v1/keys/a%2F%2Fb"},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(c.method, c.target, nil))
		var doc map[string]any
		_ = json.Unmarshal(rec.Body.Bytes(), &doc)
		if rec.Code != http.StatusNotFound || rec.Header().Get("Content-Type") != problem.ContentType || doc["code"] != "not_found" {
			t.Errorf("%s %s: %d %q %v", c.method, c.target, rec.Code, rec.Header().Get("Content-Type"), doc)
		}
		if loc := rec.Header().Get("Location"); loc != "" {
			t.Errorf("%s %s: redirected to %s", c.method, c.target, loc)
		}
	}
	if ran != 0 {
		t.Fatalf("the handler ran %d times for non-canonical paths", ran)
	}
	for _, c := range []struct{ method, target string }{
		{"DELETE", "/api/v1/keys/k1"},
		{"POST", "/api/v1/keys"},
		{"POST", "/api/v1/servers?x=/../y"}, // the query is not the path
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(c.method, c.target, nil))
		if rec.Code != http.StatusNoContent {
			t.Errorf("%s %s: %d %s", c.method, c.target, rec.Code, rec.Body)
		}
	}
	if ran != 3 {
		t.Fatalf("canonical paths: the handler ran %d times, want 3", ran)
	}
}

func TestCanonical(t *testing.T) {
	for p, want := range map[string]bool{
		"/": true, "/a": true, "/a/b.c": true, "/a/..b": true, "/a/.b/c": true,
		"": false, "a": false, "//": false, "/a/": false, "/a//b": false, "/./a": false, "/a/..": false, "/a/.": false,
	} {
		if got := canonical(p); got != want {
			t.Errorf("canonical(%q) = %t, want %t", p, got, want)
		}
	}
}

// Wrapped around a ServeMux with routes as the functions register them,
// canonicalPaths leaves no path a redirect: whatever the path, the mux
// either serves it or the answer is a 4xx, never a 3xx that would record
// a success for a request that did nothing.
func FuzzCanonicalPathsNeverRedirect(f *testing.F) {
	for _, p := range []string{"/api/v1/keys/x", "//api/v1/keys/x", "/api/v1/keys/", "/api/./v1", "/api/%2e%2e/x", "/a%2F..%2Fb", "/api/v1/keys/x/"} {
		f.Add(p)
	}
	mux := http.NewServeMux()
	for _, pattern := range []string{"GET /api/v1/keys", "DELETE /api/v1/keys/{id}", "POST /api/v1/keys/{id}/rotate", "GET /settings/keys", "GET /healthz"} {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {})
	}
	h := canonicalPaths(mux)
	f.Fuzz(func(t *testing.T, p string) {
		u, err := url.ParseRequestURI(p)
		if err != nil || u.Path == "" {
			return
		}
		for _, method := range []string{"GET", "DELETE", "POST"} {
			r := httptest.NewRequest(method, "http://edge.test/", nil)
			r.URL = u
			r.RequestURI = p
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, r)
			if rec.Code >= 300 && rec.Code < 400 {
				t.Fatalf("%s %q: %d to %q", method, p, rec.Code, rec.Header().Get("Location"))
			}
		}
	})
}
