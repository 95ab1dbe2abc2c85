package fnserve

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
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
