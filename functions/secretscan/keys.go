package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/hashicorp/go-retryablehttp"
	"go.uber.org/zap"
)

// DefaultKeysURL is GitHub's document of secret-scanning signing keys.
const DefaultKeysURL = "https://api.github.com/meta/public_keys/secret_scanning"

// Key source errors.
var (
	// errUnknownKey: the identifier is not in a key list fetched after
	// the request came.
	errUnknownKey = errors.New("github keys: unknown key identifier")
	// errKeysUnavailable: the identifier is not known, and no list fetched
	// since the request came says whether it is GitHub's: none could be
	// fetched, or a fetch was not allowed yet.
	errKeysUnavailable = errors.New("github keys: key list unavailable")
	// errKeysUnconfirmed is errKeysUnavailable when GitHub's list was
	// fetched, only before the request came, and a refetch is not
	// allowed yet: a forger naming a new identifier per report lands here,
	// so the sender is charged. When no list could be fetched at all
	// (GitHub's key server away), the sender is most likely GitHub itself
	// and is not.
	errKeysUnconfirmed = fmt.Errorf("%w: fetched only before the request came", errKeysUnavailable)
)

// keySource fetches GitHub's public keys and caches them for TTL. An
// identifier it does not know triggers a refetch, at most once per
// minRefetch, so that GitHub's key rotation is picked up within minutes
// while a caller sending made-up identifiers cannot make us fetch per
// request. Only a list fetched after the request came can call an
// identifier unknown (401); otherwise the answer is "try again" (503),
// which GitHub retries: a made-up identifier sent a moment before a
// rotation must not get GitHub's new key refused. When a refresh fails,
// the keys already known keep being used, and fetches back off from
// retryPause to minRefetch.
//
// GitHub allows 60 unauthenticated requests an hour to the key document:
// two refreshes an hour and one refetch per minRefetch (2 minutes) keep
// under it.
type keySource struct {
	url        string
	client     *retryablehttp.Client
	log        *zap.Logger
	ttl        time.Duration
	minRefetch time.Duration // between fetches caused by unknown identifiers; the longest back-off
	retryPause time.Duration // between fetches after one failure, doubling per failure
	now        func() time.Time

	fetchMu  sync.Mutex // one fetch at a time
	mu       sync.RWMutex
	keys     map[string]*ecdsa.PublicKey
	fetched  time.Time // of the current keys
	tried    time.Time // when the last fetch attempt began
	failed   bool      // the last attempt failed
	failures int       // failed attempts in a row
	fetches  int       // attempts made, for tests and logs
}

func newKeySource(url string, log *zap.Logger) *keySource {
	c := retryablehttp.NewClient()
	c.HTTPClient = &http.Client{Timeout: 5 * time.Second}
	c.RetryMax = 2
	c.RetryWaitMin = 200 * time.Millisecond
	c.RetryWaitMax = 2 * time.Second
	c.Logger = nil // outcomes are logged below, once per fetch
	return &keySource{
		url: url, client: c, log: log, now: time.Now,
		ttl: 30 * time.Minute, minRefetch: 2 * time.Minute, retryPause: 5 * time.Second,
	}
}

// Key returns the public key named id.
func (k *keySource) Key(ctx context.Context, id string) (*ecdsa.PublicKey, error) {
	if pub, fresh, ok := k.lookup(id); ok && fresh {
		return pub, nil
	}
	asked := k.now()
	k.fetchMu.Lock()
	defer k.fetchMu.Unlock()
	// Another request may have fetched while this one waited.
	pub, fresh, ok := k.lookup(id)
	if ok && fresh {
		return pub, nil
	}
	if k.mayFetch(ok) {
		k.fetch(ctx)
		pub, _, ok = k.lookup(id)
	}
	if ok {
		return pub, nil // fresh, or stale because GitHub is unreachable
	}
	k.mu.RLock()
	listed, failed, late := k.keys != nil, k.failed, k.tried.Before(asked)
	k.mu.RUnlock()
	// An identifier no list fetched since the request came could confirm
	// may be GitHub's newest key: "try again" (a 503 GitHub retries), not
	// "forged" (a 401 that would drop the report and its revocations).
	switch {
	case !listed || failed:
		return nil, errKeysUnavailable
	case late:
		return nil, errKeysUnconfirmed
	}
	return nil, errUnknownKey
}

// lookup reports the key named id, whether the cache is fresh, and
// whether the key was found.
func (k *keySource) lookup(id string) (*ecdsa.PublicKey, bool, bool) {
	k.mu.RLock()
	defer k.mu.RUnlock()
	pub, ok := k.keys[id]
	return pub, k.keys != nil && k.now().Sub(k.fetched) < k.ttl, ok
}

// mayFetch decides whether to fetch now; known says whether the wanted
// key is already cached (then only staleness can justify a fetch).
func (k *keySource) mayFetch(known bool) bool {
	k.mu.RLock()
	defer k.mu.RUnlock()
	now := k.now()
	sinceTry := now.Sub(k.tried)
	if k.tried.IsZero() {
		return true
	}
	if k.failed {
		// Whatever asks: 5 s, 10 s, 20 s... up to minRefetch.
		pause := k.minRefetch
		if k.failures < 8 {
			pause = min(k.retryPause<<(k.failures-1), k.minRefetch)
		}
		return sinceTry >= pause
	}
	stale := k.keys == nil || now.Sub(k.fetched) >= k.ttl
	if stale {
		return true
	}
	return !known && sinceTry >= k.minRefetch
}

func (k *keySource) fetch(ctx context.Context) {
	// Requests queue behind this fetch: one caller going away must not
	// cancel it for the others.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
	defer cancel()
	start := k.now()
	keys, err := k.download(ctx)
	k.mu.Lock()
	defer k.mu.Unlock()
	// tried is when the fetch began: a list downloaded for a request that
	// came before this one's may predate a key rotated in meanwhile.
	k.tried, k.fetches = start, k.fetches+1
	if err != nil {
		k.failed = true
		k.failures++
		k.log.Error("github keys: fetch failed; keeping the keys already known", zap.Int("known", len(k.keys)), zap.Error(err))
		return
	}
	k.failed, k.failures = false, 0
	k.keys, k.fetched = keys, start
	k.log.Info("github keys: fetched", zap.Int("keys", len(keys)))
}

type keyDocument struct {
	PublicKeys []struct {
		KeyIdentifier string `json:"key_identifier"`
		Key           string `json:"key"`
		IsCurrent     bool   `json:"is_current"`
	} `json:"public_keys"`
}

func (k *keySource) download(ctx context.Context) (map[string]*ecdsa.PublicKey, error) {
	req, err := retryablehttp.NewRequestWithContext(ctx, http.MethodGet, k.url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/json")
	req.Header.Set("User-Agent", "Guardian-SecretScanning/1")
	resp, err := k.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("github keys: status %d", resp.StatusCode)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("github keys: %w", err)
	}
	return parseKeyDocument(body, k.log)
}

// parseKeyDocument reads GitHub's key document. Keys that are not PEM
// PKIX ECDSA P-256 are skipped (and logged); a document without one
// usable key is an error.
func parseKeyDocument(body []byte, log *zap.Logger) (map[string]*ecdsa.PublicKey, error) {
	var doc keyDocument
	if err := json.Unmarshal(body, &doc); err != nil {
		return nil, fmt.Errorf("github keys: document: %w", err)
	}
	keys := map[string]*ecdsa.PublicKey{}
	for _, pk := range doc.PublicKeys {
		pub, err := parsePublicKey(pk.Key)
		if err != nil || pk.KeyIdentifier == "" {
			log.Warn("github keys: skipping a key", zap.String("key_identifier", pk.KeyIdentifier), zap.Error(err))
			continue
		}
		keys[pk.KeyIdentifier] = pub
	}
	if len(keys) == 0 {
		return nil, errors.New("github keys: no usable key in the document")
	}
	return keys, nil
}

func parsePublicKey(p string) (*ecdsa.PublicKey, error) {
	block, _ := pem.Decode([]byte(p))
	if block == nil || block.Type != "PUBLIC KEY" {
		return nil, errors.New("not a PEM public key")
	}
	key, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	pub, ok := key.(*ecdsa.PublicKey)
	if !ok || pub.Curve != elliptic.P256() {
		return nil, errors.New("not an ECDSA P-256 key")
	}
	return pub, nil
}
