package fnserve

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// A handler that keeps running once its request has ended (here blocked
// on a channel, deaf to its context) makes the probe answer 503 with the
// count; one that returns when its request ends does not, and neither
// does a slow one whose request is still on.
func TestTheProbeCountsHandlersStuckAfterTheirRequestEnded(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("/stuck", func(w http.ResponseWriter, r *http.Request) { <-release })
	mux.HandleFunc("/heeds", func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() })
	entered := make(chan struct{}, 1)
	mux.HandleFunc("/on", func(w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-r.Context().Done()
	})
	srv := httptest.NewServer(handler(mux))
	t.Cleanup(srv.Close)
	t.Cleanup(func() {
		select {
		case <-release:
		default:
			close(release)
		}
	})

	probe := func() (int, string) {
		t.Helper()
		resp, err := http.Get(srv.URL + ProbePath)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode, resp.Header.Get(StuckHeader)
	}
	// given up on: the client's deadline ends the request, which closes
	// the connection, which ends the handler's context.
	givenUp := func(path string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+path, nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
			t.Fatalf("%s answered %d", path, resp.StatusCode)
		}
	}

	// A request still on, however long, is not stuck.
	on, end := context.WithCancel(context.Background())
	t.Cleanup(end) // before srv.Close, which waits for it
	go func() {
		req, _ := http.NewRequestWithContext(on, "GET", srv.URL+"/on", nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	<-entered
	givenUp("/heeds")
	if status, n := probe(); status != 404 || n != "" {
		t.Fatalf("probe with handlers that heed their request: %d %q, want 404", status, n)
	}

	givenUp("/stuck")
	givenUp("/stuck")
	deadline := time.Now().Add(20 * time.Second)
	for {
		status, n := probe()
		if status == 503 && n == "2" {
			break
		}
		if status != 404 || time.Now().After(deadline) {
			t.Fatalf("probe with two stuck handlers: %d %q, want 503 and 2", status, n)
		}
	}
	close(release)
	for {
		status, n := probe()
		if status == 404 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("probe once the handlers returned: %d %q, want 404", status, n)
		}
	}
}

// A call's place is reused once it ends: a probe that saw its request
// end does not take the next use of it for the same call.
func TestAReusedCallIsNotTakenForTheOneThatEnded(t *testing.T) {
	t.Parallel()
	var r running
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	c := r.enter(ctx)
	ended := r.ended()
	if len(ended) != 1 {
		t.Fatalf("%d ended calls, want 1", len(ended))
	}
	r.leave(c)
	again := r.enter(ctx)
	defer r.leave(again)
	n := 0
	r.mu.Lock()
	for c, gen := range ended {
		if c.gen == gen {
			n++
		}
	}
	r.mu.Unlock()
	if n != 0 {
		t.Fatal("a call ended and begun again was counted as the one still running")
	}
}
