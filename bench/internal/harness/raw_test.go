package harness

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// RawClient sends what net/http's server reads as the request it was
// given, reuses its connection, and reads every framing of an answer.
func TestRawClient(t *testing.T) {
	var conns atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		if r.Method != "POST" || r.URL.Path != "/in" || r.Header.Get("Authorization") != "Bearer k" || string(body) != "snapshot" {
			http.Error(w, "unexpected request", http.StatusBadRequest)
			return
		}
		switch r.URL.Query().Get("answer") {
		case "chunked":
			w.(http.Flusher).Flush() // no Content-Length: chunked
			_, _ = io.WriteString(w, "part one, ")
			_, _ = io.WriteString(w, "part two")
		case "close":
			w.Header().Set("Connection", "close")
			w.WriteHeader(http.StatusAccepted)
		default:
			w.WriteHeader(http.StatusCreated)
			_, _ = io.WriteString(w, `{"success":true}`)
		}
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	c := NewRawClient(strings.TrimPrefix(srv.URL, "http://"), 5*time.Second)
	defer c.Close()
	post := func(path string) int {
		t.Helper()
		st, err := c.Post(context.Background(), path, []string{"Authorization: Bearer k", "Content-Type: text/plain"}, []byte("snapshot"))
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		return st
	}
	for i := range 3 {
		if st := post("/in"); st != http.StatusCreated {
			t.Fatalf("request %d: status %d", i, st)
		}
	}
	if st := post("/in?answer=chunked"); st != http.StatusOK {
		t.Fatalf("chunked: status %d", st)
	}
	if n := conns.Load(); n != 1 {
		t.Fatalf("%d connections for four requests in a row", n)
	}
	if st := post("/in?answer=close"); st != http.StatusAccepted {
		t.Fatalf("close: status %d", st)
	}
	if st := post("/in"); st != http.StatusCreated || conns.Load() != 2 {
		t.Fatalf("after Connection: close: status %d over %d connections", st, conns.Load())
	}
	if st := post("/elsewhere"); st != http.StatusBadRequest {
		t.Fatalf("status %d for a request the server refuses", st)
	}
}
