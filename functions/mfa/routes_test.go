package main

import (
	"net/http/httptest"
	"testing"
)

// A method no route takes on a path is 405 naming what the path takes;
// webauthn/options is the options route's (POST), not a security key
// called options that DELETE would remove. (The mux's own 405s become
// problem+json in shared/fnserve.)
func TestMethodsNoRouteTakes(t *testing.T) {
	h := (&handler{}).routes()
	for _, tc := range []struct {
		method, path string
		allow        string
	}{
		{"DELETE", "/api/v1/mfa/webauthn/options", "POST"},
		{"GET", "/api/v1/mfa/webauthn/options", "POST"},
		{"PUT", "/api/v1/mfa/webauthn/options", "POST"},
		{"GET", "/api/v1/mfa/webauthn/x", "DELETE"},
		{"PUT", "/api/v1/mfa/totp/confirm", "POST"},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(tc.method, tc.path, nil))
		if rec.Code != 405 || rec.Header().Get("Allow") != tc.allow {
			t.Errorf("%s %s: %d Allow %q %q, want 405 Allow %q", tc.method, tc.path, rec.Code, rec.Header().Get("Allow"), rec.Header().Get("Content-Type"), tc.allow)
		}
	}
}
