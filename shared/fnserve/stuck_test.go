package fnserve

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// A handler still running its stuck age past its request's deadline
// (here blocked before reading its body, deaf to everything) makes the
// probe answer 503 with the count; one running as long within its
// deadline does not, nor one whose request carries no deadline (a
// function run by hand).
func TestTheProbeCountsHandlersRunningPastTheirDeadline(t *testing.T) {
	t.Setenv(EnvStuckAfter, "200ms")
	release := make(chan struct{})
	mux := http.NewServeMux()
	mux.HandleFunc("/stuck", func(w http.ResponseWriter, r *http.Request) { <-release })
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
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel) // before srv.Close, which waits for the requests
	send := func(left string) {
		req, _ := http.NewRequestWithContext(ctx, "POST", srv.URL+"/stuck", strings.NewReader("a body never read"))
		if left != "" {
			req.Header.Set(DeadlineHeader, left)
		}
		go func() {
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		}()
	}
	for _, left := range []string{"", "3600000", "-5", "soon", "100", "100"} {
		send(left)
	}
	time.Sleep(50 * time.Millisecond)
	if status, n := probe(); status != 404 || n != "" {
		t.Fatalf("probe before any deadline passed: %d %q, want 404", status, n)
	}
	// The two with 100 ms left, once 100 ms + 200 ms have passed: counted;
	// the others (no deadline, an hour's, unreadable ones) never.
	deadline := time.Now().Add(20 * time.Second)
	for {
		status, n := probe()
		if status == 503 && n == "2" {
			break
		}
		if !(status == 404 || status == 503 && n == "1") || time.Now().After(deadline) {
			t.Fatalf("probe with two handlers past their deadline: %d %q, want 503 and 2", status, n)
		}
		time.Sleep(20 * time.Millisecond)
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
		time.Sleep(20 * time.Millisecond)
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

// A handler that panics is unlinked all the same (net/http recovers the
// panic after the deferred leave has run).
func TestAPanickingHandlerIsNotLeftRunning(t *testing.T) {
	t.Parallel()
	r := &running{after: time.Millisecond}
	h := r.track(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic(http.ErrAbortHandler) }))
	req := httptest.NewRequest("GET", "/", nil)
	req.Header.Set(DeadlineHeader, "0")
	func() {
		defer func() { _ = recover() }()
		h.ServeHTTP(httptest.NewRecorder(), req)
	}()
	if n := r.stuckHandlers(time.Now()); n != 0 || r.head != nil {
		t.Fatalf("%d stuck after a panic, want none left running", n)
	}
}
