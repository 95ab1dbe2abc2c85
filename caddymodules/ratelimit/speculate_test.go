package ratelimit

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/glassmkr/guardian/shared/identity"
)

// read is a request of method from key's holder (customer cust-s).
func read(method, key string) *http.Request {
	r := request("192.0.2.60")
	r.Method = method
	caddyhttp.SetVar(r.Context(), identity.VarKey, &identity.Identity{Kind: identity.KindAccount, CustomerID: "cust-s", KeyID: key, Scope: "read"})
	return r
}

// function stands for the handlers after the limiter: it records whether
// it ran and whether its writer was a gate (the request speculated), then
// answers with a cookie and a body.
type function struct {
	ran, gated int
}

func (f *function) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	f.ran++
	if _, ok := w.(*gate); ok {
		f.gated++
	}
	w.Header().Set("Set-Cookie", "guardian_token=fresh")
	w.Header().Set("X-Function", "yes")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write([]byte("the function's answer"))
	return nil
}

// A read whose credential had tokens to spare runs while its decision is
// made and is answered in full once allowed; once its buckets are empty,
// the answer is dropped for the 429 (no cookie, no body of the
// function's), and the next read waits for its decision again. Writes
// never run before their decision.
//
// Not parallel: it counts speculated_total, which the package's other
// tests also move.
func TestSpeculatedReads(t *testing.T) {
	// 9 tokens: a first decision leaves 8, enough to speculate on.
	eight := 8
	h := newTestHandler(t, Handler{Tier: TierAccount, Key: &Bucket{Capacity: 9, Rate: 0.001}, SpeculateBelow: &eight})
	allowed, refused := testutil.ToFloat64(speculatedAllowed), testutil.ToFloat64(speculatedRefused)

	f := &function{}
	rec := httptest.NewRecorder()
	if err := h.ServeHTTP(rec, read("GET", "k1"), f); err != nil || f.ran != 1 || f.gated != 0 {
		t.Fatalf("first read: %v, ran %d, gated %d (nothing known of the key yet: not speculated)", err, f.ran, f.gated)
	}
	rec = httptest.NewRecorder()
	if err := h.ServeHTTP(rec, read("GET", "k1"), f); err != nil || f.ran != 2 || f.gated != 1 {
		t.Fatalf("second read: %v, ran %d, gated %d (want speculated)", err, f.ran, f.gated)
	}
	// As sent: the headers at WriteHeader, the edge's and the function's.
	if sent := rec.Result().Header; rec.Code != 200 || rec.Body.String() != "the function's answer" || sent.Get("X-Function") != "yes" ||
		sent.Get(headerRemaining) != "7" || sent.Get(headerLimit) != "9" || sent.Get("Set-Cookie") != "guardian_token=fresh" {
		t.Fatalf("speculated answer: %d %q %v", rec.Code, rec.Body, sent)
	}
	// The function's headers are added to the edge's, never replace them.
	rec = httptest.NewRecorder()
	rec.Header().Set("X-Function", "edge")
	plenty(h, "cust-s", "k1")
	if err := h.ServeHTTP(rec, read("GET", "k1"), f); err != nil || f.gated != 2 {
		t.Fatalf("third read: %v, gated %d", err, f.gated)
	}
	if got := rec.Result().Header.Values("X-Function"); len(got) != 2 || got[0] != "edge" || got[1] != "yes" {
		t.Fatalf("X-Function: %q, want the edge's then the function's", got)
	}
	// 6 left is fewer than the 8 reads speculation may have in flight on
	// them: the next read waits for its decision.
	if err := h.ServeHTTP(httptest.NewRecorder(), read("GET", "k1"), f); err != nil || f.gated != 2 {
		t.Fatalf("a read with 6 tokens left: %v, gated %d (want not speculated)", err, f.gated)
	}

	// Another instance spends the key's tokens: this one still takes
	// them for plenty.
	keys := h.accountKeys(&identity.Identity{CustomerID: "cust-s", KeyID: "k2"})
	for range 9 {
		if d := h.take(t.Context(), keys); !d.Allowed {
			t.Fatal("the key's tokens ran out early")
		}
	}
	plenty(h, "cust-s", "k2")
	sw := &sealed{h: http.Header{"Strict-Transport-Security": {"max-age=63072000"}}}
	err := h.ServeHTTP(sw, read("GET", "k2"), f)
	if s, code := status(err); s != 429 || code != "rate_limited" || f.gated != 3 {
		t.Fatalf("a speculated read past the buckets: %d %s, gated %d", s, code, f.gated)
	}
	if sw.written != "" || sw.h.Get("Set-Cookie") != "" || sw.h.Get("X-Function") != "" || sw.h.Get("Retry-After") == "" || sw.h.Get(headerRemaining) != "0" {
		t.Fatalf("the refused answer carries the function's: %s %v", sw.written, sw.h)
	}
	ran := f.ran
	if s, _ := status(h.ServeHTTP(httptest.NewRecorder(), read("GET", "k2"), f)); s != 429 || f.ran != ran {
		t.Fatalf("the read after a refusal: %d, function ran %d more times (want refused before it)", s, f.ran-ran)
	}

	// A write is never speculated, whatever is known of its key.
	for _, method := range []string{"POST", "DELETE", "PUT", "PATCH", "OPTIONS"} {
		plenty(h, "cust-s", "k2")
		if s, _ := status(h.ServeHTTP(httptest.NewRecorder(), read(method, "k2"), f)); s != 429 || f.ran != ran {
			t.Fatalf("%s: %d, function ran %d more times (want refused before it)", method, s, f.ran-ran)
		}
	}
	if got := testutil.ToFloat64(speculatedAllowed) - allowed; got != 2 {
		t.Errorf("speculated_total{decision=allowed} +%v, want +2", got)
	}
	if got := testutil.ToFloat64(speculatedRefused) - refused; got != 1 {
		t.Errorf("speculated_total{decision=refused} +%v, want +1", got)
	}
}

// Past speculate_below requests in flight, and with speculate_below 0,
// reads wait for their decision.
func TestSpeculationBounds(t *testing.T) {
	t.Parallel()
	one := 1
	h := newTestHandler(t, Handler{Tier: TierAccount, SpeculateBelow: &one})
	plenty(h, "cust-s", "k3")
	inner := &function{}
	outerGated := false
	// The outer request is in flight (speculated) while the inner one
	// comes.
	outerNext := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		_, outerGated = w.(*gate)
		return h.ServeHTTP(httptest.NewRecorder(), read("GET", "k3"), inner)
	})
	if err := h.ServeHTTP(httptest.NewRecorder(), read("GET", "k3"), outerNext); err != nil || !outerGated || inner.ran != 1 || inner.gated != 0 {
		t.Fatalf("%v: outer gated %v; inner ran %d, gated %d (want 1 and 0: two in flight, bound 1)", err, outerGated, inner.ran, inner.gated)
	}

	if d := newTestHandler(t, Handler{Tier: TierAccount}); d.spec != nil {
		t.Fatal("speculation is on by default")
	}
	off := 0
	h0 := newTestHandler(t, Handler{Tier: TierAccount, SpeculateBelow: &off})
	if h0.spec != nil {
		t.Fatal("speculate_below 0 keeps speculation state")
	}
	f := &function{}
	for range 3 {
		if err := h0.ServeHTTP(httptest.NewRecorder(), read("GET", "k4"), f); err != nil || f.gated != 0 {
			t.Fatalf("speculate_below 0: %v, gated %d", err, f.gated)
		}
	}
}

// While Redis does not answer, a speculated read's answer waits for the
// decision (failed open at the deadline) and then goes out whole; a
// decision made without Redis says nothing of the buckets, so the next
// read is not speculated.
func TestASpeculatedReadWaitsForASilentRedis(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() { // accepts and never answers
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
		}
	}()
	l := NewLimiter(redis.NewClient(&redis.Options{Addr: ln.Addr().String(), MaxRetries: -1}), "t:", 300*time.Millisecond, nil)
	t.Cleanup(func() { _ = l.Close() })
	eight := 8
	h := Handler{Tier: TierAccount, SpeculateBelow: &eight}
	h.init(l)
	keys := plenty(&h, "cust-s", "k5")
	decidedAtWrite := true
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		g, ok := w.(*gate)
		if !ok {
			return errors.New("not speculated")
		}
		decidedAtWrite = g.decided || len(g.decision) > 0 // Redis cannot have answered
		w.Header().Set("X-Function", "yes")
		_, err := w.Write([]byte("answer"))
		return err
	})
	rec := httptest.NewRecorder()
	if err := h.ServeHTTP(rec, read("GET", "k5"), next); err != nil || decidedAtWrite {
		t.Fatalf("%v; decided before the function ran: %v", err, decidedAtWrite)
	}
	if rec.Body.String() != "answer" || rec.Header().Get("X-Function") != "yes" || rec.Header().Get(headerLimit) != "" {
		t.Fatalf("failed open: %q %v (want the answer, without RateLimit headers)", rec.Body, rec.Header())
	}
	if h.spec.plenty(keys[0]) {
		t.Fatal("a decision without Redis left the key marked plenty")
	}
}

// sealed is a writer that keeps the headers it was handed and records
// anything written, which a refused answer must not be.
type sealed struct {
	h       http.Header
	written string
}

func (w *sealed) Header() http.Header { return w.h }
func (w *sealed) WriteHeader(code int) {
	w.written += fmt.Sprintf("status %d; ", code)
}
func (w *sealed) Write(b []byte) (int, error) {
	w.written += fmt.Sprintf("%q; ", b)
	return len(b), nil
}
func (w *sealed) Flush() { w.written += "flush; " }

// A function whose answer fails mid-copy (http.ErrAbortHandler from the
// proxy) after its read was refused ends as the 429, and the decision is
// remembered; one that aborts an allowed answer still aborts.
func TestASpeculatedAbortEndsAsTheRefusal(t *testing.T) {
	t.Parallel()
	h, keys := spentButPlenty(t, "k6")
	aborting := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.WriteHeader(http.StatusOK)
		panic(http.ErrAbortHandler)
	})
	sw := &sealed{h: http.Header{}}
	if s, _ := status(h.ServeHTTP(sw, read("GET", "k6"), aborting)); s != 429 || sw.written != "" {
		t.Fatalf("refused and aborted: %d, wrote %s", s, sw.written)
	}
	if h.spec.plenty(keys[0]) {
		t.Fatal("the refusal was not remembered")
	}
	plenty(h, "cust-t", "k7")
	r := read("GET", "k7")
	caddyhttp.SetVar(r.Context(), identity.VarKey, &identity.Identity{Kind: identity.KindAccount, CustomerID: "cust-t", KeyID: "k7", Scope: "read"})
	defer func() {
		if p := recover(); p != http.ErrAbortHandler {
			t.Fatalf("an allowed answer's abort: recovered %v", p)
		}
	}()
	_ = h.ServeHTTP(httptest.NewRecorder(), r, aborting)
	t.Fatal("an allowed answer's abort was swallowed")
}

// The gate passes an allowed answer as the proxy writes it: no 1xx (its
// headers stay out of the final answer), the status, the body around a
// flush, and headers set after the status (trailers) on the real writer.
// The route's count of requests in flight is back to 0 afterwards.
func TestTheGatePassesWhatTheProxyWrites(t *testing.T) {
	t.Parallel()
	eight := 8
	h := newTestHandler(t, Handler{Tier: TierAccount, SpeculateBelow: &eight})
	plenty(h, "cust-s", "k8")
	proxy := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		if _, ok := w.(*gate); !ok {
			return errors.New("not speculated")
		}
		w.Header().Set("Link", "</style.css>; rel=preload")
		w.WriteHeader(http.StatusEarlyHints)
		clear(w.Header()) // as the proxy does after a 1xx
		w.Header().Set("X-A", "1")
		w.WriteHeader(http.StatusOK)
		_, _ = w.Write([]byte("a"))
		w.(http.Flusher).Flush()
		w.Header().Set("X-Trailer", "t")
		_, _ = w.Write([]byte("b"))
		return nil
	})
	sw := &sealed{h: http.Header{"X-Edge": {"e"}}}
	if err := h.ServeHTTP(sw, read("GET", "k8"), proxy); err != nil {
		t.Fatal(err)
	}
	if sw.written != `status 200; "a"; flush; "b"; ` {
		t.Fatalf("written: %s", sw.written)
	}
	if sw.h.Get("X-A") != "1" || sw.h.Get("X-Trailer") != "t" || sw.h.Get("X-Edge") != "e" || sw.h.Get("Link") != "" || sw.h.Get(headerLimit) == "" {
		t.Fatalf("headers: %v", sw.h)
	}
	if n := h.spec.inFlight.Load(); n != 0 {
		t.Fatalf("%d requests still counted in flight", n)
	}
}

// A panic of the function's own on a refused read is not taken for an
// aborted copy: it goes on up, as it would have without speculation.
func TestASpeculatedPanicIsNotSwallowed(t *testing.T) {
	t.Parallel()
	h, _ := spentButPlenty(t, "k9")
	defer func() {
		if p := recover(); p != "boom" {
			t.Fatalf("recovered %v, want the function's panic", p)
		}
		if n := h.spec.inFlight.Load(); n != 0 {
			t.Fatalf("%d requests still counted in flight after a panic", n)
		}
	}()
	_ = h.ServeHTTP(&sealed{h: http.Header{}}, read("GET", "k9"), caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
		panic("boom")
	}))
	t.Fatal("the panic was swallowed")
}

// spentButPlenty is a handler speculating on key's reads, whose key has
// spent its one token while this instance still takes it for plenty
// (another instance spent the rest).
func spentButPlenty(t *testing.T, key string) (*Handler, []string) {
	t.Helper()
	eight := 8
	h := newTestHandler(t, Handler{Tier: TierAccount, Key: &Bucket{Capacity: 1, Rate: 0.001}, SpeculateBelow: &eight})
	keys := h.accountKeys(&identity.Identity{CustomerID: "cust-s", KeyID: key})
	if d := h.take(t.Context(), keys); !d.Allowed {
		t.Fatal("no first token")
	}
	plenty(h, "cust-s", key)
	return h, keys
}

// A decision whose goroutine panics, even with http.ErrAbortHandler (which
// serve treats as an aborted copy and asks the decision again), or ends by
// runtime.Goexit, raises a panic on the request's goroutine instead of
// leaving it waiting.
func TestAFailedDecisionNeverLeavesTheRequestWaiting(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		send func(chan<- decided)
		want any
	}{
		{"abort panic", func(c chan<- decided) { c <- decided{panicked: http.ErrAbortHandler} }, http.ErrAbortHandler},
		{"goexit", func(c chan<- decided) {
			done := make(chan struct{})
			go func() {
				defer close(done)
				newSpeculation(8).decideWith("k10", c, func() Decision { runtime.Goexit(); return Decision{} })
			}()
			<-done
		}, errDecisionAbandoned},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := make(chan decided, 1)
			tc.send(c)
			g := &gate{w: &sealed{h: http.Header{}}, hdr: http.Header{}, decision: c}
			result := make(chan any, 1)
			go func() {
				defer func() { result <- recover() }()
				_ = g.serve(caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
					_, err := w.Write([]byte("x"))
					return err
				}), read("GET", "k10"))
			}()
			select {
			case p := <-result:
				if p != tc.want {
					t.Fatalf("raised %v, want %v", p, tc.want)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the request is still waiting for its decision")
			}
		})
	}
}

// plenty marks the credential key of customer's key as having tokens to
// spare at its last decision on h, as another instance's draining would
// leave it here, and returns its bucket keys.
func plenty(h *Handler, customer, key string) []string {
	keys := h.accountKeys(&identity.Identity{CustomerID: customer, KeyID: key})
	h.spec.remember(keys[0], Decision{Allowed: true, Limit: 1000, Remaining: 1000, Source: SourceRedis})
	return keys
}
