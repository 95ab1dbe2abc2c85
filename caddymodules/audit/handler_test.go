package audit

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

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
	_ = w.Close() // every Record now fails
	h := &Handler{writer: w, log: zap.NewNop(), Timeout: caddy.Duration(time.Second)}

	req := httptest.NewRequest("POST", "/api/v1/keys", nil)
	ctx := context.WithValue(req.Context(), caddyhttp.VarsCtxKey, map[string]any{})
	caddyhttp.SetVar(ctx, identity.VarKey, &identity.Identity{Kind: identity.KindAccount, CustomerID: "c", KeyID: "k", Scope: "write"})
	req = req.WithContext(ctx)
	rec := httptest.NewRecorder()
	rec.Header().Set("Strict-Transport-Security", "max-age=63072000")
	rec.Header().Set("X-Frame-Options", "DENY")
	fn := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("X-From-Function", "1")
		w.Header().Set("Location", "/api/v1/keys/k2")
		w.WriteHeader(http.StatusCreated)
		_, _ = w.Write([]byte(`{"key":"never sent"}`))
		return nil
	})
	if err := h.ServeHTTP(rec, req, fn); err != nil {
		t.Fatal(err)
	}
	if rec.Code != 503 {
		t.Fatalf("status %d", rec.Code)
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
