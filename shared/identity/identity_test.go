package identity

import (
	"net/http"
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

// SetHeaders takes one allocation for all its values, and the headers do
// not share room: a value added to one leaves the others as they were.
func TestSetHeadersSharesOneAllocation(t *testing.T) {
	id := Identity{Kind: KindAccount, CustomerID: "c", UserID: "u", SessionID: "s", KeyID: "k", ServerID: "v", Scope: "read"}
	h := http.Header{}
	if allocs := testing.AllocsPerRun(100, func() { id.SetHeaders(h) }); allocs > 1 {
		t.Fatalf("%.0f allocations", allocs)
	}
	h.Add(HeaderKind, "forged")
	if got := h.Values(HeaderCustomer); len(got) != 1 || got[0] != "c" {
		t.Fatalf("customer header became %q after adding to the kind header", got)
	}
	if got := h.Values(HeaderKind); len(got) != 2 || got[0] != KindAccount {
		t.Fatalf("kind header %q", got)
	}
}

// SetEdgeHeaders adds the client's address and the request id to the
// same single allocation, and writes only those for an anonymous caller.
func TestSetEdgeHeaders(t *testing.T) {
	id := &Identity{Kind: KindCollector, CustomerID: "c", KeyID: "k", ServerID: "s"}
	h := http.Header{}
	if allocs := testing.AllocsPerRun(100, func() { SetEdgeHeaders(h, id, "203.0.113.9", "r1") }); allocs > 1 {
		t.Fatalf("%.0f allocations", allocs)
	}
	if h.Get(HeaderClientIP) != "203.0.113.9" || h.Get(HeaderRequestID) != "r1" || h.Get(HeaderServer) != "s" || len(h) != 6 {
		t.Fatalf("headers %v", h)
	}
	anon := http.Header{}
	SetEdgeHeaders(anon, nil, "", "r2")
	if len(anon) != 1 || anon.Get(HeaderRequestID) != "r2" {
		t.Fatalf("anonymous request: headers %v", anon)
	}
}
