package auth

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

var nop = caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error { return nil })

// benchAuth measures ServeHTTP for requests made by mk (the vars map a
// Caddy request carries included), after one warming call.
func benchAuth(b *testing.B, h *Handler, mk func() *http.Request) {
	r := mk()
	r = r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{}))
	w := httptest.NewRecorder()
	_ = h.ServeHTTP(w, r, nop)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		_ = h.ServeHTTP(w, r, nop)
	}
}

// BenchmarkKeyWarmCache: a valid key already cached (parse, HMAC, lookup,
// scope check, identity). Target: under 20 us.
func BenchmarkKeyWarmCache(b *testing.B) {
	w := newWorld(b)
	h := handler(w.authenticator(b), Handler{})
	benchAuth(b, h, func() *http.Request { return bearer("GET", "/", w.read) })
}

// BenchmarkMalformedKey: a key with a bad checksum. Target: under 2 us.
func BenchmarkMalformedKey(b *testing.B) {
	w := newWorld(b)
	h := handler(w.authenticator(b), Handler{})
	benchAuth(b, h, func() *http.Request { return bearer("GET", "/", offByOne(w.read)) })
}

// BenchmarkSessionWarmCache: a valid session cookie already cached (JWT
// verification dominates).
func BenchmarkSessionWarmCache(b *testing.B) {
	w := newWorld(b)
	h := handler(w.authenticator(b), Handler{})
	benchAuth(b, h, func() *http.Request { return withCookie("GET", "/", w.token) })
}
