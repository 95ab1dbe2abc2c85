package function

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httptrace"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/glassmkr/guardian/shared/testenv"
)

// A reload that changes a function's config makes a second instance of
// the same name beside the first, sockets in the same directory. The old
// process's exit must not take the new process's socket with it.
func TestAChangedFunctionSurvivesTheOldOnesExit(t *testing.T) {
	t.Parallel()
	bin := testenv.Build(t, "./caddymodules/function/testdata/testfn")
	dir, err := os.MkdirTemp("", "fn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	mk := func(idle time.Duration) *Handler {
		d := caddy.Duration(idle)
		h := &Handler{Name: "reloaded", Bin: bin, SocketDir: dir + "/s", IdleTimeout: &d}
		if err := h.Provision(testContext(t)); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = h.Cleanup() })
		return h
	}
	old, changed := mk(time.Minute), mk(2*time.Minute)
	for _, h := range []*Handler{old, changed} {
		if rec, err := call(h, "/ok"); err != nil || rec.Code != 200 {
			t.Fatalf("before: %v %v", rec.Code, err)
		}
	}
	old.inst.mu.Lock()
	p := old.inst.proc
	old.inst.mu.Unlock()
	if err := old.Cleanup(); err != nil { // the old config is unloaded
		t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		t.Fatal("the old process did not stop")
	}
	changed.inst.mu.Lock()
	changed.inst.proc.tr.CloseIdleConnections() // new connections from here
	changed.inst.mu.Unlock()
	if rec, err := call(changed, "/ok"); err != nil || rec.Code != 200 {
		t.Fatalf("the changed function after the old one exited: %v %v", rec.Code, err)
	}
}

// Clients that go away while the function starts do not make the start a
// crash: otherwise cancelling cold starts on purpose would push the
// backoff past the start timeout and shut the function for everyone.
func TestCancelledColdStartsAreNotCrashes(t *testing.T) {
	t.Parallel()
	h := newHandler(t, &Handler{})
	for range 8 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
		r := httptest.NewRequest("GET", "/ok", nil).WithContext(ctx)
		_ = h.ServeHTTP(httptest.NewRecorder(), r, nil)
		cancel()
		h.inst.mu.Lock()
		p := h.inst.proc
		if p != nil { // started after all: stop it for the next round
			h.inst.proc, p.stopping = nil, true
		}
		h.inst.mu.Unlock()
		if p != nil {
			p.stop(time.Second)
			<-p.done
		}
	}
	h.inst.mu.Lock()
	crashes := h.inst.crashes
	h.inst.mu.Unlock()
	if crashes != 0 {
		t.Fatalf("%d crashes counted for starts whose callers went away", crashes)
	}
	if rec, err := call(h, "/ok"); err != nil || rec.Code != 200 {
		t.Fatalf("after cancelled starts: %v %v", rec.Code, err)
	}
}

// failingWriter fails every body write, as a connection the client closed.
type failingWriter struct{ *httptest.ResponseRecorder }

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("connection reset") }

// A response whose copy to the client fails mid-body makes the proxy
// panic with http.ErrAbortHandler; the request must still be released,
// or the function is never stopped for idleness again.
func TestAnAbortedResponseIsReleased(t *testing.T) {
	t.Parallel()
	h := newHandler(t, &Handler{})
	r := httptest.NewRequest("GET", "/ok", nil)
	r = r.WithContext(context.WithValue(r.Context(), http.ServerContextKey, &http.Server{}))
	func() {
		defer func() {
			if v := recover(); v != nil && v != http.ErrAbortHandler {
				panic(v)
			}
		}()
		_ = h.ServeHTTP(failingWriter{httptest.NewRecorder()}, r, nil)
	}()
	h.inst.mu.Lock()
	inflight := h.inst.inflight
	h.inst.mu.Unlock()
	if inflight != 0 {
		t.Fatalf("%d requests in flight after an aborted response", inflight)
	}
}

// A request with Expect: 100-continue keeps the headers the edge set
// before the proxy (security headers, the request id).
func TestExpectContinueKeepsTheEdgesHeaders(t *testing.T) {
	t.Parallel()
	h := newHandler(t, &Handler{})
	for _, expect := range []bool{false, true} {
		r := httptest.NewRequest("POST", "/sum", strings.NewReader(strings.Repeat("x", 64<<10)))
		if expect {
			r.Header.Set("Expect", "100-continue")
		}
		rec := httptest.NewRecorder()
		rec.Header().Set("X-Frame-Options", "DENY") // as guardian_headers does
		if err := h.ServeHTTP(rec, r, nil); err != nil || rec.Code != 200 {
			t.Fatalf("expect %v: %d %v", expect, rec.Code, err)
		}
		if rec.Header().Get("X-Frame-Options") != "DENY" {
			t.Errorf("expect %v: the edge's headers were cleared: %v", expect, rec.Header())
		}
	}
}

// A function cannot connect to a unix socket, though it runs as the user
// that owns Caddy's admin socket (which asks for no credentials): its
// process refuses to make one. TCP, which functions use to reach their
// databases, still works.
func TestAFunctionCannotReachAUnixSocket(t *testing.T) {
	t.Parallel()
	h := newHandler(t, &Handler{})
	dir, err := os.MkdirTemp("", "adm")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	admin, err := net.Listen("unix", dir+"/admin.sock") // stands in for Caddy's admin socket
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	for _, tc := range []struct{ network, addr, want string }{
		{"unix", dir + "/admin.sock", "operation not permitted"},
		{"tcp", tcp.Addr().String(), "ok"},
	} {
		rec, err := call(h, "/dial?network="+tc.network+"&addr="+url.QueryEscape(tc.addr))
		if err != nil || !strings.Contains(rec.Body.String(), tc.want) {
			t.Errorf("%s %s: %q %v, want %q", tc.network, tc.addr, rec.Body.String(), err, tc.want)
		}
	}
	// Nor through io_uring, whose socket operation makes one without the
	// socket system call.
	if rec, err := call(h, "/uring"); err != nil || rec.Body.String() != "operation not permitted" {
		t.Errorf("io_uring: %q %v, want operation not permitted", rec.Body.String(), err)
	}
}

// Request trailers, headers the client sends after the body, never reach
// a function: a forged Guardian-* trailer would sit beside the edge's
// identity headers, out of identity.Strip's sight.
func TestRequestTrailersDoNotReachTheFunction(t *testing.T) {
	t.Parallel()
	h := newHandler(t, &Handler{})
	r := httptest.NewRequest("POST", "/trailers", io.NopCloser(strings.NewReader("body")))
	r.ContentLength = -1
	r.Trailer = http.Header{"Guardian-Identity": {"forged"}, "X-Other": {"1"}}
	rec := httptest.NewRecorder()
	if err := h.ServeHTTP(rec, r, nil); err != nil || rec.Code != 200 {
		t.Fatalf("%d %v", rec.Code, err)
	}
	var seen http.Header
	if err := json.Unmarshal(rec.Body.Bytes(), &seen); err != nil {
		t.Fatalf("%v: %s", err, rec.Body)
	}
	if len(seen) != 0 {
		t.Fatalf("the function saw trailers %v", seen)
	}
}

// A request the function received is never sent to a second process, even
// when the transport, on its own, tries it again on a new connection (as
// it does for a bodyless request carrying Idempotency-Key, a header the
// client chooses): the function may have acted on it before it died.
func TestARequestThatReachedADyingFunctionIsNotSentAgain(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		method string
		header string
	}{{"POST", "Idempotency-Key"}, {"POST", "X-Idempotency-Key"}, {"GET", ""}} {
		h := newHandler(t, &Handler{})
		pidOf(t, h) // warm: the next request reuses the pooled connection
		req := httptest.NewRequest(tc.method, "/crash", nil)
		if tc.header != "" {
			req.Header.Set(tc.header, "k1")
		}
		err := h.ServeHTTP(httptest.NewRecorder(), req, nil)
		if status, code := problemOf(t, err); status != 502 || code != "function_failed" {
			t.Fatalf("%s %s: %d %s, want 502 function_failed", tc.method, tc.header, status, code)
		}
		h.inst.mu.Lock()
		starts, crashes := h.inst.starts, h.inst.crashes
		h.inst.mu.Unlock()
		if starts != 1 {
			t.Fatalf("%s %s: the request reached %d processes (%d crashes), want 1", tc.method, tc.header, starts, crashes)
		}
	}
}

// A function that logs a line longer than Caddy keeps goes on logging and
// answering: its output is still read (the line cut, and said so), so the
// pipe never fills and blocks it.
func TestALongLogLineDoesNotBlockTheFunction(t *testing.T) {
	t.Parallel()
	h := newHandler(t, &Handler{Timeout: caddy.Duration(5 * time.Second)})
	for i := range 4 { // 4 x 300 KiB: past the line bound, and far past a pipe's 64 KiB
		rec, err := call(h, "/log?n=307200")
		if err != nil || rec.Code != 200 || rec.Body.String() != "logged" {
			t.Fatalf("request %d after long log lines: %d %q %v", i, rec.Code, rec.Body.String(), err)
		}
	}
}

// forwardLog keeps maxLogLine bytes of a longer line, says it cut it, and
// reads the next lines whole.
func TestForwardLogCutsALongLine(t *testing.T) {
	core, logs := observer.New(zap.InfoLevel)
	var wg sync.WaitGroup
	wg.Add(1)
	forwardLog(&wg, zap.New(core), strings.NewReader(strings.Repeat("x", maxLogLine+5000)+"\n{\"msg\":\"next\"}\r\nplain\n"+
		strings.Repeat("y", maxLogLine)+"\n"))
	got := logs.All()
	if len(got) != 4 {
		t.Fatalf("%d entries, want 4", len(got))
	}
	if f := got[3].ContextMap(); len(f["line"].(string)) != maxLogLine || f["truncated"] != nil {
		t.Fatalf("a line of exactly the bound: %d bytes, truncated %v", len(f["line"].(string)), f["truncated"])
	}
	f := got[0].ContextMap()
	if line, _ := f["line"].(string); len(line) != maxLogLine || f["truncated"] != true {
		t.Fatalf("the long line: %d bytes, fields %v", len(line), keysOf(f))
	}
	if _, ok := got[1].ContextMap()["entry"]; !ok {
		t.Fatalf("the JSON line after it: %v", got[1].ContextMap())
	}
	if got[2].ContextMap()["line"] != "plain" {
		t.Fatalf("the last line: %v", got[2].ContextMap())
	}
}

// A function's line is logged at its own level, so a Caddy logging at
// WARN still shows the functions' warnings and errors; output that is not
// the function logger's (a panic's trace) counts as a warning.
func TestForwardLogKeepsTheFunctionsLevel(t *testing.T) {
	core, logs := observer.New(zap.WarnLevel)
	var wg sync.WaitGroup
	wg.Add(1)
	forwardLog(&wg, zap.New(core), strings.NewReader(`{"level":"info","msg":"started"}
{"level":"warn","msg":"no Landlock"}
{"level":"error","msg":"revocation failed"}
{"level":"fatal","msg":"cannot start"}
{"level":"debug","msg":"detail"}
panic: runtime error
`))
	var got []string
	for _, e := range logs.All() {
		m, _ := json.Marshal(e.ContextMap())
		got = append(got, e.Level.String()+" "+string(m))
	}
	want := []string{"warn", "error", "error", "warn"}
	if len(got) != len(want) {
		t.Fatalf("%d entries at WARN or above, want %d: %q", len(got), len(want), got)
	}
	for i, w := range want {
		if !strings.HasPrefix(got[i], w+" ") {
			t.Fatalf("entry %d: %s, want level %s", i, got[i], w)
		}
	}
	if !strings.Contains(got[0], "no Landlock") || !strings.Contains(got[3], "panic: runtime error") {
		t.Fatalf("entries: %q", got)
	}
}

func keysOf(m map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// sendWatch counts a request as sent once a byte of it reached a
// function's socket, on whichever connection; a request the socket
// refused (its process dead) did not reach it.
func TestSendWatchCountsBytesThatReachedTheSocket(t *testing.T) {
	a, b := net.Pipe()
	defer b.Close()
	go func() { _, _ = io.Copy(io.Discard, b) }()
	reused := &pooledConn{Conn: a}
	_, _ = reused.Write([]byte("an earlier request"))

	var w sendWatch
	w.gotConn(httptrace.GotConnInfo{Conn: reused, Reused: true})
	if w.reached() {
		t.Fatal("an earlier request's bytes counted for this one")
	}
	a.Close() // the function died: the write is refused
	if _, err := reused.Write([]byte("GET /x HTTP/1.1\r\n\r\n")); err == nil {
		t.Fatal("a write to a closed pipe succeeded")
	}
	fresh, peer := net.Pipe()
	defer fresh.Close()
	go func() { _, _ = io.Copy(io.Discard, peer) }()
	next := &pooledConn{Conn: fresh}
	w.gotConn(httptrace.GotConnInfo{Conn: next}) // the transport's second try
	if w.reached() {
		t.Fatal("a request no socket took counted as sent")
	}
	if _, err := next.Write([]byte("GET /x HTTP/1.1\r\n\r\n")); err != nil {
		t.Fatal(err)
	}
	if !w.reached() {
		t.Fatal("a request the socket took counted as not sent")
	}
}

// Once half a function's slots are taken, each holder may have an eighth
// of them (here one) in flight or waiting: one customer's slow requests
// cannot take every slot, while before that point a holder's burst is
// never refused.
func TestAHolderGetsAShareOfABusyFunctionsSlots(t *testing.T) {
	t.Parallel()
	h := newHandler(t, &Handler{MaxConcurrent: 8})
	pidOf(t, h) // started
	from := func(addr, path string) *http.Request {
		r := httptest.NewRequest("GET", path, nil)
		r.RemoteAddr = addr + ":4321"
		return r
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 8)
	hold := func(addr string, n int) {
		t.Helper()
		for range n {
			want := len(h.sem) + 1
			go func() { done <- h.ServeHTTP(httptest.NewRecorder(), from(addr, "/sleep?d=30s").WithContext(ctx), nil) }()
			waitFor(t, "the request to take its slot", func() bool { return len(h.sem) == want })
		}
	}
	hold("198.51.100.7", 5) // four before half the slots are taken, one counted after
	busy, own := outcomes(t, h.Name, outcomeBusy), outcomes(t, h.Name, outcomeBusyClient)
	err := h.ServeHTTP(httptest.NewRecorder(), from("198.51.100.7", "/ok"), nil)
	if code, name := problemOf(t, err); code != http.StatusServiceUnavailable || name != "function_busy" {
		t.Fatalf("the holder's sixth request, past its share: %d %s", code, name)
	}
	// Counted as the client's own doing, not as the function being full.
	if b, o := outcomes(t, h.Name, outcomeBusy)-busy, outcomes(t, h.Name, outcomeBusyClient)-own; b != 0 || o != 1 {
		t.Errorf("counted busy %d, busy_client %d; want 0 and 1", b, o)
	}
	rec := httptest.NewRecorder()
	if err := h.ServeHTTP(rec, from("203.0.113.9", "/ok"), nil); err != nil || rec.Code != 200 {
		t.Fatalf("another holder's request meanwhile: %d %v", rec.Code, err)
	}
	cancel()
	for range 5 {
		<-done
	}
	h.inst.contended.mu.Lock()
	left := h.inst.contended.used
	h.inst.contended.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d contended requests still counted after all ended", left)
	}
	// Once the function is quiet again, the holder is not held back.
	hold2 := httptest.NewRecorder()
	if err := h.ServeHTTP(hold2, from("198.51.100.7", "/ok"), nil); err != nil || hold2.Code != 200 {
		t.Fatalf("the holder's request once the others ended: %d %v", hold2.Code, err)
	}
}
