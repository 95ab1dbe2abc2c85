package problem

import (
	"context"
	"errors"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/glassmkr/guardian/shared/apikey"
)

// A key a client pasted into a path (revoking a key by the key itself,
// not its id) does not reach Caddy's log with an edge-side 5xx.
func TestALoggedPathHasNoKey(t *testing.T) {
	key, err := apikey.Generate(apikey.Account)
	if err != nil {
		t.Fatal(err)
	}
	core, logs := observer.New(zap.InfoLevel)
	h := &Handler{log: zap.New(core)}
	req := httptest.NewRequest("DELETE", "/api/v1/keys/"+key, nil)
	ctx := context.WithValue(req.Context(), caddyhttp.VarsCtxKey, map[string]any{})
	req = req.WithContext(context.WithValue(ctx, caddyhttp.ErrorCtxKey, caddyhttp.Error(502, errors.New("dial unix @fn: connection refused"))))
	if err := h.ServeHTTP(httptest.NewRecorder(), req, nil); err != nil {
		t.Fatal(err)
	}
	entries := logs.All()
	if len(entries) != 1 {
		t.Fatalf("%d log entries for a 502, want 1", len(entries))
	}
	path, _ := entries[0].ContextMap()["path"].(string)
	if !strings.HasPrefix(path, "/api/v1/keys/[redacted]") {
		t.Errorf("logged path %q", path)
	}
	for _, e := range entries {
		for k, v := range e.ContextMap() {
			if s, _ := v.(string); strings.Contains(s, key[14:40]) {
				t.Errorf("the key reached the log in %s: %q", k, s)
			}
		}
	}
}
