package notify

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// receiver is a local webhook endpoint that records what it got.
type receiver struct {
	*httptest.Server
	hits  atomic.Int64
	host  atomic.Value // the Host header of the last request
	body  atomic.Value // the last body
	reply int
}

func newReceiver(t *testing.T, status int) *receiver {
	r := &receiver{reply: status}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.hits.Add(1)
		b, _ := io.ReadAll(req.Body)
		r.host.Store(req.Host)
		r.body.Store(string(b))
		if r.reply == http.StatusFound {
			http.Redirect(w, req, "http://169.254.169.254/latest/meta-data/", http.StatusFound)
			return
		}
		w.WriteHeader(r.reply)
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *receiver) port(t *testing.T) string {
	u, _ := url.Parse(r.URL)
	return u.Port()
}

func TestWebhookRefusesLoopbackUnlessAllowed(t *testing.T) {
	rcv := newReceiver(t, http.StatusNoContent)
	g, _ := NewGuard(nil, nil)
	err := NewWebhooks(g).Post(context.Background(), rcv.URL+"/hook", map[string]any{"x": 1})
	var be *BlockedError
	if !errors.As(err, &be) || be.Reason != "loopback" || !IsPermanent(err) || rcv.hits.Load() != 0 {
		t.Fatalf("a loopback target was not refused: %v (hits %d)", err, rcv.hits.Load())
	}

	g, _ = NewGuard([]string{"127.0.0.1/32"}, nil)
	if err := NewWebhooks(g).Post(context.Background(), rcv.URL+"/hook", map[string]any{"x": 1}); err != nil {
		t.Fatalf("an allow-listed target: %v", err)
	}
	if rcv.hits.Load() != 1 || rcv.body.Load() != `{"x":1}` {
		t.Fatalf("receiver got %d calls, body %v", rcv.hits.Load(), rcv.body.Load())
	}
}

// A name is resolved once, by the guard, and the connection goes to the
// address it vetted: the system resolver would not even know the name.
func TestWebhookDialsTheVettedAddress(t *testing.T) {
	rcv := newReceiver(t, http.StatusOK)
	dns := &fakeDNS{table: map[string][]string{"hooks.example.test": {"127.0.0.1"}}}
	g, _ := NewGuard([]string{"127.0.0.0/8"}, dns)
	target := "http://hooks.example.test:" + rcv.port(t) + "/in"
	if err := NewWebhooks(g).Post(context.Background(), target, "hello"); err != nil {
		t.Fatalf("post: %v", err)
	}
	if rcv.hits.Load() != 1 || rcv.host.Load() != "hooks.example.test:"+rcv.port(t) || dns.lookups.Load() != 1 {
		t.Fatalf("hits %d, Host %v, look-ups %d", rcv.hits.Load(), rcv.host.Load(), dns.lookups.Load())
	}

	// Without the allow-list the same name is refused before any byte is sent.
	g, _ = NewGuard(nil, dns)
	if err := NewWebhooks(g).Post(context.Background(), target, "hello"); !IsPermanent(err) || rcv.hits.Load() != 1 {
		t.Fatalf("a name resolving to loopback was called: %v", err)
	}
}

func TestWebhookFollowsNoRedirect(t *testing.T) {
	rcv := newReceiver(t, http.StatusFound)
	g, _ := NewGuard([]string{"127.0.0.1"}, nil)
	err := NewWebhooks(g).Post(context.Background(), rcv.URL, "x")
	if err == nil || !IsPermanent(err) || !strings.Contains(err.Error(), "redirect") || rcv.hits.Load() != 1 {
		t.Fatalf("redirect: %v (hits %d)", err, rcv.hits.Load())
	}
}

func TestWebhookStatusDecidesRetry(t *testing.T) {
	g, _ := NewGuard([]string{"127.0.0.1"}, nil)
	w := NewWebhooks(g)
	for status, permanent := range map[int]bool{400: true, 404: true, 410: true, 408: false, 429: false, 500: false, 503: false} {
		rcv := newReceiver(t, status)
		err := w.Post(context.Background(), rcv.URL, "x")
		if err == nil || IsPermanent(err) != permanent {
			t.Errorf("status %d: %v, want permanent=%v", status, err, permanent)
		}
	}
}

func TestWebhookURLShape(t *testing.T) {
	for _, bad := range []string{"ftp://example.com/x", "file:///etc/passwd", "http://", "https://user:pw@example.com/", "example.com/hook", "gopher://127.0.0.1:6379/_"} {
		if _, err := CheckURL(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	urls, err := WebhookURLs("GUARDIAN_SECURITY_WEBHOOKS", " https://a.example.com/x , http://b.example.com:8080/y,,")
	if err != nil || len(urls) != 2 {
		t.Fatalf("%v %v", urls, err)
	}
	if _, err := WebhookURLs("GUARDIAN_SECURITY_WEBHOOKS", "https://a.example.com,https://u:secretpw@b.example.com"); err == nil ||
		!strings.Contains(err.Error(), "GUARDIAN_SECURITY_WEBHOOKS: item 2") || strings.Contains(err.Error(), "secretpw") {
		t.Fatalf("bad list: %v", err)
	}
}

func TestWebhookBodyIsJSON(t *testing.T) {
	rcv := newReceiver(t, http.StatusOK)
	n, err := New(Config{Allow: []string{"127.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	n.Send(Notice{Event: "api_key.revoked", Webhooks: []string{rcv.URL}, Data: map[string]any{"last4": "Ab12"}})
	n.Close(context.Background())
	var doc map[string]any
	if err := json.Unmarshal([]byte(rcv.body.Load().(string)), &doc); err != nil {
		t.Fatal(err)
	}
	if doc["event"] != "api_key.revoked" || doc["id"] == "" || doc["occurred_at"] == nil || doc["data"].(map[string]any)["last4"] != "Ab12" {
		t.Fatalf("webhook body: %v", doc)
	}
	if s := n.Stats(); s.Delivered != 1 || s.Failed != 0 {
		t.Fatalf("stats: %+v", s)
	}
}

// flaky answers each request with the next status of its script (the last
// one repeating), with Retry-After when given.
type flaky struct {
	*httptest.Server
	hits atomic.Int64
}

func newFlaky(t *testing.T, retryAfter string, statuses ...int) *flaky {
	f := &flaky{}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		n := int(f.hits.Add(1))
		_, _ = io.Copy(io.Discard, req.Body)
		if retryAfter != "" {
			w.Header().Set("Retry-After", retryAfter)
		}
		w.WriteHeader(statuses[min(n, len(statuses))-1])
	}))
	t.Cleanup(f.Close)
	return f
}

type retryCall struct {
	failed int
	err    error
	wait   time.Duration
}

func TestPostRetrying(t *testing.T) {
	g, _ := NewGuard([]string{"127.0.0.1"}, nil)
	w := NewWebhooks(g)
	fast := RetryPolicy{Attempts: 4, Wait: time.Millisecond, MaxWait: 5 * time.Millisecond}
	for _, tc := range []struct {
		name       string
		retryAfter string
		statuses   []int
		policy     RetryPolicy
		hits       int
		ok         bool
		permanent  bool
		waits      []time.Duration // exact waits expected; nil: any within policy
	}{
		{name: "transient then delivered", statuses: []int{503, 500, 204}, policy: fast, hits: 3, ok: true},
		{name: "permanent at once", statuses: []int{404}, policy: fast, hits: 1, permanent: true},
		{name: "redirect not followed nor retried", statuses: []int{302}, policy: fast, hits: 1, permanent: true},
		{name: "lasting failure ends after Attempts", statuses: []int{500}, policy: fast, hits: 4},
		{name: "408 is retried", statuses: []int{408, 200}, policy: fast, hits: 2, ok: true},
		{name: "one attempt", statuses: []int{500}, policy: RetryPolicy{Attempts: 1, Wait: time.Millisecond, MaxWait: time.Millisecond}, hits: 1},
		// A receiver's Retry-After is honoured, up to MaxWait, without jitter.
		{name: "Retry-After within bound", retryAfter: "1", statuses: []int{429, 200},
			policy: RetryPolicy{Attempts: 2, Wait: time.Millisecond, MaxWait: 2 * time.Second}, hits: 2, ok: true, waits: []time.Duration{time.Second}},
		{name: "Retry-After of 0", retryAfter: "0", statuses: []int{429, 429, 200},
			policy: RetryPolicy{Attempts: 3, Wait: 2 * time.Millisecond, MaxWait: time.Second}, hits: 3, ok: true,
			waits: []time.Duration{2 * time.Millisecond, 2 * time.Millisecond}},
		{name: "Retry-After over bound", retryAfter: "86400", statuses: []int{503, 503, 200},
			policy: RetryPolicy{Attempts: 3, Wait: time.Millisecond, MaxWait: 3 * time.Millisecond}, hits: 3, ok: true,
			waits: []time.Duration{3 * time.Millisecond, 3 * time.Millisecond}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFlaky(t, tc.retryAfter, tc.statuses...)
			var calls []retryCall
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			err := w.PostRetrying(ctx, f.URL+"/hook", "x", tc.policy, func(failed int, err error, wait time.Duration) {
				calls = append(calls, retryCall{failed, err, wait})
			})
			if got := int(f.hits.Load()); got != tc.hits {
				t.Errorf("%d attempts, want %d", got, tc.hits)
			}
			if (err == nil) != tc.ok || (err != nil && IsPermanent(err) != tc.permanent) {
				t.Errorf("err = %v, want ok=%v permanent=%v", err, tc.ok, tc.permanent)
			}
			if len(calls) != tc.hits-1 {
				t.Fatalf("onRetry called %d times, want %d", len(calls), tc.hits-1)
			}
			for i, c := range calls {
				if c.failed != i+1 || c.err == nil || !strings.Contains(c.err.Error(), "answered") {
					t.Errorf("retry %d: %+v", i, c)
				}
				if tc.waits != nil && c.wait != tc.waits[i] {
					t.Errorf("retry %d waits %v, want %v", i, c.wait, tc.waits[i])
				}
				if tc.waits == nil && (c.wait <= 0 || c.wait > tc.policy.MaxWait*6/5) {
					t.Errorf("retry %d waits %v, outside (0, %v]", i, c.wait, tc.policy.MaxWait*6/5)
				}
			}
		})
	}
}

// A post waiting to retry gives up when its context ends, without
// another attempt.
func TestPostRetryingStopsWithItsContext(t *testing.T) {
	g, _ := NewGuard([]string{"127.0.0.1"}, nil)
	f := newFlaky(t, "3600", 503)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- NewWebhooks(g).PostRetrying(ctx, f.URL, "x", RetryPolicy{Attempts: 5, Wait: time.Millisecond, MaxWait: time.Hour},
			func(int, error, time.Duration) { cancel() })
	}()
	select {
	case err := <-done:
		if err == nil || !errors.Is(err, context.Canceled) || f.hits.Load() != 1 {
			t.Fatalf("err %v after %d attempts, want context.Canceled after 1", err, f.hits.Load())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("PostRetrying kept waiting after its context ended")
	}
}

// Errors from PostRetrying keep the webhook's secret path out, as Post's do.
func TestPostRetryingErrorNamesOnlyTheHost(t *testing.T) {
	g, _ := NewGuard([]string{"127.0.0.1"}, nil)
	f := newFlaky(t, "", 500)
	err := NewWebhooks(g).PostRetrying(context.Background(), f.URL+"/services/T0/B0/secretsecret", "x",
		RetryPolicy{Attempts: 2, Wait: time.Millisecond, MaxWait: time.Millisecond}, nil)
	if err == nil || strings.Contains(err.Error(), "secretsecret") {
		t.Fatalf("err %v", err)
	}
}
