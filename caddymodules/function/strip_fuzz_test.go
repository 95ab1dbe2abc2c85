package function

import (
	"net/http"
	"testing"

	"github.com/glassmkr/guardian/shared/identity"
	"github.com/glassmkr/guardian/shared/session"
)

// Whatever a client sends, a function gets no credential of the caller's
// and no identity header the client wrote: no Authorization, no cookie
// that Go's own parser (what the functions use) reads as the session
// cookie, no header of the identity prefix. Every other cookie that
// parser reads reaches the function with its value.
func FuzzStripCredentials(f *testing.F) {
	for _, s := range []struct{ cookie, auth, header string }{
		{"guardian_token=abc", "Bearer gmk_x", identity.HeaderPrefix + "Customer"},
		{"a=1; guardian_token=abc; b=2", "", "x-guardian-id-kind"},
		{" guardian_token = abc ;a=1", "", ""},
		{"guardian_token=\"abc\"; guardian_token=def", "", ""},
		{"guardian_tokenx=1; xguardian_token=2", "", ""},
		{"guardian_token", "", ""},
		{"a=guardian_token; b=\"c;d\"", "Basic x", ""},
		{"guardian_token\t=1", "", ""},
	} {
		f.Add(s.cookie, s.auth, s.header)
	}
	f.Fuzz(func(t *testing.T, cookie, auth, header string) {
		h := http.Header{}
		if cookie != "" {
			h["Cookie"] = []string{cookie}
		}
		if auth != "" {
			h["Authorization"] = []string{auth}
		}
		if header != "" {
			h[header] = []string{"forged"}
		}
		before := (&http.Request{Header: http.Header{"Cookie": h["Cookie"]}}).Cookies()
		stripCredentials(h)
		identity.Strip(h)
		if _, ok := h["Authorization"]; ok {
			t.Fatalf("Authorization reached the function: %q", h["Authorization"])
		}
		for k := range h {
			if identity.IsIdentityHeader(k) {
				t.Fatalf("identity header %q written by the client reached the function", k)
			}
		}
		after := (&http.Request{Header: h}).Cookies()
		for _, c := range after {
			if c.Name == session.CookieName {
				t.Fatalf("Cookie %q reached the function as %q, which holds the session cookie", cookie, h.Get("Cookie"))
			}
		}
		for _, c := range before {
			if c.Name == session.CookieName {
				continue
			}
			found := false
			for _, a := range after {
				found = found || a.Name == c.Name && a.Value == c.Value
			}
			if !found {
				t.Fatalf("Cookie %q: %s=%q was lost (the function got %q)", cookie, c.Name, c.Value, h.Get("Cookie"))
			}
		}
	})
}
