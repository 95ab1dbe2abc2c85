package main

import (
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
)

// The provider's client follows a redirect within the host it asked, and
// not one to another: the token request's body holds the client secret,
// which Go would post on to any host a 307 names.
func TestTheProviderClientKeepsTheSecretOnItsHost(t *testing.T) {
	var elsewhere atomic.Int64
	other := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { elsewhere.Add(1) }))
	defer other.Close()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/token":
			http.Redirect(w, r, other.URL+"/token", http.StatusTemporaryRedirect)
		case "/moved":
			http.Redirect(w, r, "/here", http.StatusTemporaryRedirect)
		case "/here":
			w.WriteHeader(http.StatusNoContent)
		}
	}))
	defer srv.Close()
	c := newIDP(srv.URL, "id", "S3cret", srv.URL+"/cb").client
	form := url.Values{"client_secret": {"S3cret"}}.Encode()
	resp, err := c.Post(srv.URL+"/token", "application/x-www-form-urlencoded", strings.NewReader(form))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusTemporaryRedirect || elsewhere.Load() != 0 {
		t.Fatalf("a redirect to another host: %d, followed %d times", resp.StatusCode, elsewhere.Load())
	}
	resp, err = c.Get(srv.URL + "/moved")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("a redirect within the host: %d", resp.StatusCode)
	}
}
