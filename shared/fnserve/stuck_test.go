package fnserve

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// A handler that keeps running once its request has ended (here blocked
// on a channel, deaf to its context), past its stuck age, makes the probe
// answer 503 with the count; one that returns when its request ends does
// not, and neither does a slow one whose request is still on.
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
	run := &running{after: 200 * time.Millisecond}
	srv := httptest.NewServer(run.probes(canonicalPaths(problemErrors(run.track(mux)))))
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
	time.Sleep(2 * run.after) // both older than the stuck age
	if status, n := probe(); status != 404 || n != "" {
		t.Fatalf("probe with handlers that heed their request: %d %q, want 404", status, n)
	}

	givenUp("/stuck")
	givenUp("/stuck")
	// Each counts once it is older than the stuck age (200 ms here).
	deadline := time.Now().Add(20 * time.Second)
	for {
		status, n := probe()
		if status == 503 && n == "2" {
			break
		}
		if !(status == 404 || status == 503 && n == "1") || time.Now().After(deadline) {
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

// The stuck age comes from the function's settings; anything but a
// positive duration leaves the default.
func TestStuckAfterIsAPositiveDurationOrTheDefault(t *testing.T) {
	for value, want := range map[string]time.Duration{
		"": DefaultStuckAfter, "soon": DefaultStuckAfter, "0s": DefaultStuckAfter, "-1m": DefaultStuckAfter,
		"90s": 90 * time.Second,
	} {
		t.Setenv(EnvStuckAfter, value)
		if got := stuckAfter(); got != want {
			t.Errorf("%s=%q: %s, want %s", EnvStuckAfter, value, got, want)
		}
	}
}
