package function

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/caddyserver/caddy/v2"
)

// quietContext is testContext logging errors only: the function's start
// and output lines would break the benchmark's result lines.
func quietContext(b *testing.B) caddy.Context {
	b.Helper()
	ctx, err := caddy.ProvisionContext(&caddy.Config{Logging: &caddy.Logging{
		Logs: map[string]*caddy.CustomLog{"default": {BaseLog: caddy.BaseLog{Level: "ERROR"}}},
	}})
	if err != nil {
		b.Fatal(err)
	}
	return ctx
}

// discard is a ResponseWriter that keeps nothing, so that a benchmark
// counts the handler's work, not a recorder's.
type discard struct{ h http.Header }

func (d *discard) Header() http.Header         { return d.h }
func (d *discard) Write(b []byte) (int, error) { return len(b), nil }
func (d *discard) WriteHeader(int)             {}

// BenchmarkProxyWarm is guardian_function's proxy path: ServeHTTP of a GET
// to a warm function over its unix socket, the function's answer read and
// passed on. It includes the function's own work and the socket's round
// trip, as the edge pays them; Caddy's part alone is the edge benchmark's
// a/fn comparison (bench/edge).
func BenchmarkProxyWarm(b *testing.B) {
	h := provisionIn(b, quietContext(b), &Handler{})
	req := httptest.NewRequest("GET", "/ok", nil)
	w := &discard{h: http.Header{}}
	if err := h.ServeHTTP(w, req, nil); err != nil { // start it: warm from here on
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		clear(w.h)
		if err := h.ServeHTTP(w, req, nil); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkProxyWarmParallel is the same path with concurrent requests,
// as under load: connections to the function are pooled and reused.
func BenchmarkProxyWarmParallel(b *testing.B) {
	h := provisionIn(b, quietContext(b), &Handler{})
	if err := h.ServeHTTP(&discard{h: http.Header{}}, httptest.NewRequest("GET", "/ok", nil), nil); err != nil {
		b.Fatal(err)
	}
	b.SetParallelism(8)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		req := httptest.NewRequest("GET", "/ok", nil)
		w := &discard{h: http.Header{}}
		for pb.Next() {
			clear(w.h)
			if err := h.ServeHTTP(w, req, nil); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
