package headers

import (
	"errors"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func provisioned(t *testing.T, h *Handler) *Handler {
	t.Helper()
	if err := h.Provision(caddy.Context{}); err != nil {
		t.Fatal(err)
	}
	return h
}

func TestHeadersOnEveryResponse(t *testing.T) {
	want := map[string]string{
		"Strict-Transport-Security": "max-age=15552000; includeSubDomains",
		"X-Content-Type-Options":    "nosniff",
		"X-Frame-Options":           "DENY",
		"Referrer-Policy":           "strict-origin-when-cross-origin",
		"Permissions-Policy":        DefaultPermissionsPolicy,
	}
	cases := []struct {
		name string
		next caddyhttp.HandlerFunc
	}{
		{"success response carries them", func(w http.ResponseWriter, r *http.Request) error {
			w.WriteHeader(200)
			return nil
		}},
		{"error returned to Caddy leaves them on the writer", func(w http.ResponseWriter, r *http.Request) error {
			return caddyhttp.Error(http.StatusBadGateway, errors.New("upstream down"))
		}},
		{"a 404 written by the next handler carries them", func(w http.ResponseWriter, r *http.Request) error {
			w.WriteHeader(404)
			return nil
		}},
	}
	h := provisioned(t, &Handler{})
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			rec.Header().Set("Server", "Caddy")
			_ = h.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil), tc.next)
			for k, v := range want {
				if got := rec.Header().Get(k); got != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
			if rec.Header().Get("Server") != "" {
				t.Error("Server header kept")
			}
		})
	}
}

func TestSharedValuesAreNotCorruptedByAdd(t *testing.T) {
	h := provisioned(t, &Handler{})
	rec := httptest.NewRecorder()
	_ = h.ServeHTTP(rec, httptest.NewRequest("GET", "/", nil), caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Add("X-Frame-Options", "SAMEORIGIN")
		return nil
	}))
	rec2 := httptest.NewRecorder()
	_ = h.ServeHTTP(rec2, httptest.NewRequest("GET", "/", nil), caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil }))
	if got := rec2.Header().Values("X-Frame-Options"); len(got) != 1 || got[0] != "DENY" {
		t.Fatalf("second response X-Frame-Options = %v", got)
	}
}

func TestUnmarshalCaddyfile(t *testing.T) {
	cases := []struct {
		name, input string
		wantErr     bool
		want        Handler
	}{
		{"no block keeps defaults", "guardian_headers", false, Handler{}},
		{"settings override defaults", "guardian_headers {\n hsts \"max-age=60\"\n frame_options SAMEORIGIN\n referrer_policy no-referrer\n permissions_policy \"camera=()\"\n}", false,
			Handler{HSTS: "max-age=60", FrameOptions: "SAMEORIGIN", ReferrerPolicy: "no-referrer", PermissionsPolicy: "camera=()"}},
		{"unknown setting is refused", "guardian_headers {\n csp foo\n}", true, Handler{}},
		{"setting without value is refused", "guardian_headers {\n hsts\n}", true, Handler{}},
		{"inline argument is refused", "guardian_headers on", true, Handler{}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var h Handler
			err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if !tc.wantErr && (h.HSTS != tc.want.HSTS || h.FrameOptions != tc.want.FrameOptions || h.ReferrerPolicy != tc.want.ReferrerPolicy || h.PermissionsPolicy != tc.want.PermissionsPolicy) {
				t.Errorf("got %+v", h)
			}
		})
	}
}

func BenchmarkServeHTTP(b *testing.B) {
	h := &Handler{}
	_ = h.Provision(caddy.Context{})
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })
	req := httptest.NewRequest("GET", "/", nil)
	w := httptest.NewRecorder()
	b.ReportAllocs()
	for b.Loop() {
		_ = h.ServeHTTP(w, req, next)
	}
}
