package auth

import (
	"fmt"
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
		if !strings.HasPrefix(path, "/api/v1/keys/[redacted]") {
			t.Errorf("logged path %q", path)
		}
		// No part of either secret in any field: the key's body, the
		// token's claims and its signature (its header is every token's).
		all := fmt.Sprint(e.Message, e.ContextMap())
		parts := strings.Split(w.token, ".")
		for _, part := range []string{w.read[14:34], w.read[34:], parts[1][:20], parts[1][len(parts[1])-20:], parts[2][:20]} {
			if strings.Contains(all, part) {
				t.Errorf("refusal logged %q of a secret: %s", part, all)
			}
		}
	}
}
