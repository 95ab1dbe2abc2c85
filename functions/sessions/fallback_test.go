package main

import (
	"net/http/httptest"
	"testing"

	"github.com/glassmkr/guardian/shared/problem"
)

// A method no route takes is 405 naming every method the path does take
// (GET routes serve HEAD too); a path no route takes is 404.
func TestMethodsNoRouteTakes(t *testing.T) {
	h := (&handler{}).routes()
	for _, tc := range []struct {
		method, path string
		status       int
		allow        string
	}{
		{"OPTIONS", "/api/v1/sessions", 405, "GET, HEAD"},
		{"POST", "/api/v1/sessions", 405, "GET, HEAD"},
		{"POST", "/settings/sessions", 405, "GET, HEAD"},
		{"DELETE", "/settings/sessions", 405, "GET, HEAD"},
		{"GET", "/api/v1/sessions/revoke-others", 405, "POST"},
		{"DELETE", "/api/v1/sessions/revoke-others", 405, "POST"},
		{"GET", "/api/v1/account", 405, "DELETE"},
		{"GET", "/api/v1/sessions/x", 405, "DELETE"},
		{"DELETE", "/api/v1/sessions/", 404, ""},
		{"GET", "/settings/other", 404, ""},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(tc.method, tc.path, nil))
		if rec.Code != tc.status || rec.Header().Get("Allow") != tc.allow || rec.Header().Get("Content-Type") != problem.ContentType {
			t.Errorf("%s %s: %d Allow %q %q, want %d Allow %q", tc.method, tc.path, rec.Code, rec.Header().Get("Allow"), rec.Header().Get("Content-Type"), tc.status, tc.allow)
		}
	}
}
