package identity

import (
	"net/http/httptest"
	"testing"
)

func TestStripRemovesEveryForgedHeader(t *testing.T) {
	r := httptest.NewRequest("GET", "/", nil)
	r.Header.Set("Guardian-Customer-Id", "evil")
	r.Header["guardian-scope"] = []string{"admin"} // non-canonical key set directly
	r.Header["GUARDIAN-AUTH-KIND"] = []string{"session"}
	r.Header.Set("Guardianx", "kept")
	r.Header.Set("Authorization", "Bearer x")
	Strip(r.Header)
	if len(r.Header) != 2 || r.Header.Get("Guardianx") != "kept" || r.Header.Get("Authorization") == "" {
		t.Fatalf("after strip: %v", r.Header)
	}
	if _, ok := FromRequest(r); ok {
		t.Fatal("anonymous request has an identity")
	}
}

func TestRoundTrip(t *testing.T) {
	id := Identity{Kind: KindCollector, CustomerID: "c", KeyID: "k", ServerID: "s"}
	r := httptest.NewRequest("GET", "/", nil)
	id.SetHeaders(r.Header)
	got, ok := FromRequest(r)
	if !ok || got != id {
		t.Fatalf("got %+v, %v", got, ok)
	}
	if r.Header.Get(HeaderUser) != "" || len(r.Header.Values(HeaderScope)) != 0 {
		t.Fatal("empty fields were written")
	}
}
