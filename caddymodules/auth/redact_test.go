package auth

import (
	"net/http"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// A key or session token a client pasted into a path does not reach the
// log with a refusal (debug level), even when the credential it sent is
// refused.
func TestARefusalLogsNoKeyFromThePath(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	a := w.authenticator(t)
	core, logs := observer.New(zap.DebugLevel)
	h := handler(a, Handler{})
	h.log = zap.New(core)
	for _, secret := range []string{w.read, w.token} {
		if got := do(t, h, bearer("DELETE", "/api/v1/keys/"+secret, offByOne(w.read))); got.status != http.StatusUnauthorized {
			t.Fatalf("a corrupted key: %+v", got)
		}
	}
	refusals := logs.FilterMessage("request refused").All()
	if len(refusals) != 2 {
		t.Fatalf("%d refusals logged, want 2", len(refusals))
	}
	for _, e := range refusals {
		path, _ := e.ContextMap()["path"].(string)
		if !strings.HasPrefix(path, "/api/v1/keys/[redacted]") || strings.Contains(path, w.read[14:40]) || strings.Contains(path, w.token[10:40]) {
			t.Errorf("logged path %q", path)
		}
	}
}
