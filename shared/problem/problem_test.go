package problem

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"
)

func TestWriteProducesRFC9457Document(t *testing.T) {
	rec := httptest.NewRecorder()
	p := New(http.StatusServiceUnavailable, "dependency_down", "redis is down")
	p.Extra = map[string]any{"checks": map[string]string{"redis": "down"}, "status": "ignored"}
	Write(rec, p)

	if rec.Code != 503 {
		t.Fatalf("status = %d", rec.Code)
	}
	if ct := rec.Header().Get("Content-Type"); ct != ContentType {
		t.Fatalf("content type = %q", ct)
	}
	var doc map[string]any
	if err := json.Unmarshal(rec.Body.Bytes(), &doc); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"type": TypeBase + "dependency_down", "title": "Service Unavailable",
		"status": float64(503), "code": "dependency_down", "detail": "redis is down",
	}
	for k, v := range want {
		if doc[k] != v {
			t.Errorf("%s = %v, want %v", k, doc[k], v)
		}
	}
	if _, ok := doc["checks"]; !ok {
		t.Error("extension member missing")
	}
}

func TestCodeForStatus(t *testing.T) {
	for status, code := range map[int]string{404: "not_found", 429: "rate_limited", 500: "internal_error", 599: "internal_error", 418: "error"} {
		if got := CodeForStatus(status); got != code {
			t.Errorf("CodeForStatus(%d) = %q, want %q", status, got, code)
		}
	}
}

// RFC 9110: every 401 names a challenge. Write adds the edge's when the
// writer set none, and keeps one it did set.
func TestA401CarriesAChallenge(t *testing.T) {
	rec := httptest.NewRecorder()
	Write(rec, New(http.StatusUnauthorized, "reauth_required", "confirm your password"))
	if got := rec.Header().Values("WWW-Authenticate"); len(got) != 1 || got[0] != Challenge {
		t.Errorf("401 without a challenge of its own: WWW-Authenticate %q", got)
	}
	rec = httptest.NewRecorder()
	rec.Header().Set("WWW-Authenticate", `Bearer realm="guardian", error="invalid_token"`)
	Write(rec, New(http.StatusUnauthorized, "invalid_credentials", "the credential is not valid"))
	if got := rec.Header().Values("WWW-Authenticate"); len(got) != 1 || got[0] != `Bearer realm="guardian", error="invalid_token"` {
		t.Errorf("the writer's own challenge replaced: %q", got)
	}
	for _, status := range []int{http.StatusForbidden, http.StatusBadRequest, http.StatusTooManyRequests} {
		rec = httptest.NewRecorder()
		Write(rec, New(status, CodeForStatus(status), ""))
		if got := rec.Header().Get("WWW-Authenticate"); got != "" {
			t.Errorf("%d with WWW-Authenticate %q", status, got)
		}
	}
}
