package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/zap"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newTestKeySource(url string) (*keySource, *clock) {
	c := &clock{t: time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)}
	k := newKeySource(url, zap.NewNop())
	k.now = c.now
	k.client.RetryWaitMin, k.client.RetryWaitMax = time.Millisecond, 5*time.Millisecond
	return k, c
}

// warmKeySource is a key source on a fake GitHub that has fetched the
// keys once.
func warmKeySource(t *testing.T) (*fakeGitHub, *keySource, *clock) {
	t.Helper()
	gh := newFakeGitHub(t)
	ks, clk := newTestKeySource(gh.KeysURL())
	if _, err := ks.Key(context.Background(), katKeyID); err != nil {
		t.Fatal(err)
	}
	return gh, ks, clk
}

func TestKeysAreCachedAndRefetchedWhenStale(t *testing.T) {
	gh := newFakeGitHub(t)
	ks, clk := newTestKeySource(gh.KeysURL())
	ctx := context.Background()
	for range 5 {
		if _, err := ks.Key(ctx, katKeyID); err != nil {
			t.Fatal(err)
		}
	}
	if gh.hits.Load() != 1 {
		t.Fatalf("%d fetches for five look-ups of one key", gh.hits.Load())
	}
	clk.advance(29 * time.Minute)
	_, _ = ks.Key(ctx, katKeyID)
	if gh.hits.Load() != 1 {
		t.Fatal("refetched within 30 minutes")
	}
	clk.advance(2 * time.Minute)
	_, _ = ks.Key(ctx, katKeyID)
	if gh.hits.Load() != 2 {
		t.Fatalf("not refetched after 30 minutes: %d", gh.hits.Load())
	}

	// GitHub unreachable: the known keys keep working; a retry waits.
	gh.setFail(true)
	clk.advance(31 * time.Minute)
	if _, err := ks.Key(ctx, katKeyID); err != nil {
		t.Fatalf("stale key refused while GitHub is down: %v", err)
	}
	fetches := gh.hits.Load()
	if _, err := ks.Key(ctx, katKeyID); err != nil || gh.hits.Load() != fetches {
		t.Fatalf("a failed fetch was retried at once: %v, %d -> %d hits", err, fetches, gh.hits.Load())
	}
}

// An unknown identifier refetches at most once per two minutes: GitHub's
// rotation is picked up soon, made-up identifiers cost one fetch per two
// minutes at most. Only a list fetched after the request came calls an
// identifier unknown; until the next fetch is allowed the answer is "try
// again".
func TestUnknownKeyRefetchIsRateLimited(t *testing.T) {
	gh, ks, clk := warmKeySource(t)
	ctx := context.Background()
	clk.advance(3 * time.Minute)
	newID := gh.rotate(t)
	if _, err := ks.Key(ctx, newID); err != nil {
		t.Fatalf("a rotated-in key: %v", err)
	}
	if gh.hits.Load() != 2 {
		t.Fatalf("hits %d, want 2", gh.hits.Load())
	}
	clk.advance(time.Second)
	for range 100 {
		if _, err := ks.Key(ctx, "ffff"); !errors.Is(err, errKeysUnconfirmed) {
			t.Fatalf("made-up identifier, no fetch allowed: %v, want errKeysUnconfirmed (charged)", err)
		}
	}
	if gh.hits.Load() != 2 {
		t.Fatalf("made-up identifiers caused %d fetches right after one", gh.hits.Load()-2)
	}
	clk.advance(61 * time.Second)
	_, _ = ks.Key(ctx, "eeee")
	if gh.hits.Load() != 2 {
		t.Fatal("refetched a minute after the last fetch")
	}
	clk.advance(60 * time.Second)
	if _, err := ks.Key(ctx, "eeee"); !errors.Is(err, errUnknownKey) {
		t.Fatalf("made-up identifier, just refetched: %v", err)
	}
	for range 100 {
		_, _ = ks.Key(ctx, "eeee")
	}
	if gh.hits.Load() != 3 {
		t.Fatalf("after two minutes: %d fetches, want exactly one more", gh.hits.Load()-2)
	}
	// Concurrent unknown identifiers share that budget too.
	clk.advance(121 * time.Second)
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() { defer wg.Done(); _, _ = ks.Key(ctx, "dddd") }()
	}
	wg.Wait()
	if gh.hits.Load() != 4 {
		t.Fatalf("50 concurrent unknown identifiers: %d fetches, want 1", gh.hits.Load()-3)
	}
}

// A made-up identifier spends the refetch allowance; GitHub rotating its
// key just after must not have its reports refused as forged (401, which
// drops them), only delayed (503, which GitHub retries).
func TestMadeUpIdentifierDoesNotGetARotatedKeyRefused(t *testing.T) {
	gh, ks, clk := warmKeySource(t)
	ctx := context.Background()
	clk.advance(3 * time.Minute)
	if _, err := ks.Key(ctx, "made-up"); !errors.Is(err, errUnknownKey) {
		t.Fatalf("made-up identifier: %v", err)
	}
	clk.advance(10 * time.Second)
	newID := gh.rotate(t)
	if _, err := ks.Key(ctx, newID); !errors.Is(err, errKeysUnavailable) {
		t.Fatalf("GitHub's new key before a refetch is allowed: %v, want errKeysUnavailable", err)
	}
	clk.advance(2 * time.Minute)
	if _, err := ks.Key(ctx, newID); err != nil {
		t.Fatalf("GitHub's new key once a refetch is allowed: %v", err)
	}
}

// While GitHub's key list cannot be fetched, made-up identifiers sent
// every few seconds do not make us fetch every few seconds: the pause
// doubles up to the unknown-identifier limit.
func TestFailingFetchesBackOff(t *testing.T) {
	gh, ks, clk := warmKeySource(t)
	ctx := context.Background()
	gh.setFail(true)
	clk.advance(3 * time.Minute)
	start := ks.fetches
	for range 120 { // ten minutes, one made-up identifier every 5 s
		if _, err := ks.Key(ctx, "made-up"); !errors.Is(err, errKeysUnavailable) || errors.Is(err, errKeysUnconfirmed) {
			t.Fatalf("made-up identifier while GitHub is down: %v, want errKeysUnavailable (not charged)", err)
		}
		clk.advance(5 * time.Second)
	}
	// 5, 10, 20, 40 s, then every 2 minutes: about nine in ten minutes.
	if n := ks.fetches - start; n > 10 {
		t.Fatalf("%d fetches in ten minutes of failures", n)
	}
	if _, err := ks.Key(ctx, katKeyID); err != nil {
		t.Fatalf("a known key meanwhile: %v", err)
	}
}

// A key identifier GitHub rotated in while its key list cannot be
// fetched is "try again later" (503, which GitHub retries), not "not
// GitHub's" (401, which would drop the report and its revocations).
func TestUnknownKeyWhileGitHubIsDownIsUnavailable(t *testing.T) {
	gh, ks, clk := warmKeySource(t)
	ctx := context.Background()
	clk.advance(2 * time.Minute)
	newID := gh.rotate(t)
	gh.setFail(true)
	if _, err := ks.Key(ctx, newID); !errors.Is(err, errKeysUnavailable) {
		t.Fatalf("a rotated-in key while the list cannot be fetched: %v, want errKeysUnavailable", err)
	}
	if _, err := ks.Key(ctx, katKeyID); err != nil {
		t.Fatalf("a known key meanwhile: %v", err)
	}
	gh.setFail(false)
	clk.advance(6 * time.Second)
	if _, err := ks.Key(ctx, newID); err != nil {
		t.Fatalf("after GitHub recovered: %v", err)
	}
}

func TestKeyFetchRetriesAndFailures(t *testing.T) {
	var calls atomic.Int64
	gh := newFakeGitHub(t)
	flaky := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		http.Redirect(w, r, gh.KeysURL(), http.StatusTemporaryRedirect)
	}))
	defer flaky.Close()
	ks, _ := newTestKeySource(flaky.URL)
	if _, err := ks.Key(context.Background(), katKeyID); err != nil || calls.Load() != 2 || ks.fetches != 1 {
		t.Fatalf("a 502 then success: %v, %d calls, %d fetches", err, calls.Load(), ks.fetches)
	}

	down := newFakeGitHub(t)
	down.setFail(true)
	ks, clk := newTestKeySource(down.KeysURL())
	if _, err := ks.Key(context.Background(), katKeyID); !errors.Is(err, errKeysUnavailable) || errors.Is(err, errKeysUnconfirmed) {
		t.Fatalf("no keys at all: %v, want errKeysUnavailable (not charged)", err)
	}
	hits := down.hits.Load()
	if hits != 3 {
		t.Fatalf("%d attempts, want 3 (retryablehttp, RetryMax 2)", hits)
	}
	_, _ = ks.Key(context.Background(), katKeyID)
	if down.hits.Load() != hits {
		t.Fatal("retried before the pause")
	}
	down.setFail(false)
	clk.advance(6 * time.Second)
	if _, err := ks.Key(context.Background(), katKeyID); err != nil {
		t.Fatalf("after GitHub recovered: %v", err)
	}
}

func TestKeyDocumentParsing(t *testing.T) {
	log := zap.NewNop()
	pemOf := func(pub any) string {
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			t.Fatal(err)
		}
		return string(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	}
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)
	p384Key, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	edKey, p384 := pemOf(edPub), pemOf(&p384Key.PublicKey)
	keys, err := parseKeyDocument([]byte(`{"public_keys":[
		{"key_identifier":"a","key":`+quote(katPublicKey)+`,"is_current":false},
		{"key_identifier":"ed25519","key":`+quote(edKey)+`,"is_current":true},
		{"key_identifier":"p384","key":`+quote(p384)+`,"is_current":true},
		{"key_identifier":"junk","key":"not pem","is_current":true},
		{"key_identifier":"","key":`+quote(katPublicKey)+`}]}`), log)
	if err != nil || len(keys) != 1 || keys["a"] == nil {
		t.Fatalf("only the P-256 key with an identifier is usable (current or not): %v %v", keys, err)
	}
	for _, doc := range []string{`{}`, `{"public_keys":[]}`, `[]`, `{"public_keys":[{"key_identifier":"x","key":"junk"}]}`} {
		if _, err := parseKeyDocument([]byte(doc), log); err == nil {
			t.Errorf("%s accepted", doc)
		}
	}
}

func quote(s string) string {
	b := []byte{'"'}
	for _, r := range s {
		if r == '\n' {
			b = append(b, '\\', 'n')
			continue
		}
		b = append(b, string(r)...)
	}
	return string(append(b, '"'))
}

// A fetch that began before a request came cannot call that request's
// identifier unknown, even if it ends after: GitHub may have rotated its
// key in between. The request then gets "try again".
func TestAFetchBegunBeforeTheRequestDoesNotConfirmIt(t *testing.T) {
	gh, ks, clk := warmKeySource(t)
	ctx := context.Background()
	clk.advance(3 * time.Minute)
	hold := gh.holdNext() // the next key document waits until released
	first := make(chan error, 1)
	go func() { _, err := ks.Key(ctx, "made-up"); first <- err }()
	for gh.hits.Load() != 2 { // the made-up identifier's document is read
		time.Sleep(time.Millisecond)
	}
	clk.advance(time.Second)
	newID := gh.rotate(t) // after the held document was read
	second := make(chan error, 1)
	go func() { _, err := ks.Key(ctx, newID); second <- err }()
	time.Sleep(20 * time.Millisecond) // the second request waits for the fetch
	hold()
	<-first
	if err := <-second; !errors.Is(err, errKeysUnavailable) {
		t.Fatalf("GitHub's new key, answered by a fetch begun before it came: %v, want errKeysUnavailable", err)
	}
}
