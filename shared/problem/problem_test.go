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
