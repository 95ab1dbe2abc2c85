package main

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"
)

// scopes asked of the provider.
var scopes = []string{oidc.ScopeOpenID, "email", "profile"}

// errUnreachable marks a failure to reach the provider (network, timeout,
// a 5xx on discovery or JWKS) as opposed to an answer that refuses.
var errUnreachable = errors.New("identity provider unreachable")

// idp is the identity provider, discovered on first use. Discovery is
// not done at start-up, so a provider that is down cannot keep the
// function from starting: each use retries it (at most once per
// retryAfter, each attempt bounded by timeout) and fails fast meanwhile.
type idp struct {
	issuer, clientID, clientSecret, redirectURL string
	client                                      *http.Client
	timeout, retryAfter                         time.Duration
	now                                         func() time.Time

	mu       sync.Mutex
	ready    *discovered
	failedAt time.Time
	lastErr  error
}

// discovered is what discovery yields.
type discovered struct {
	oauth    *oauth2.Config
	verifier *oidc.IDTokenVerifier
}

func newIDP(issuer, clientID, clientSecret, redirectURL string) *idp {
	return &idp{
		issuer: issuer, clientID: clientID, clientSecret: clientSecret, redirectURL: redirectURL,
		client:     &http.Client{Timeout: 10 * time.Second, CheckRedirect: sameHostRedirects},
		timeout:    5 * time.Second,
		retryAfter: 2 * time.Second,
		now:        time.Now,
	}
}

// sameHostRedirects follows a redirect only within the host first asked:
// the token request carries the client secret (in its body, where the
// provider wants it so), and Go sends a 307's or 308's body on to any
// host, stripping only Authorization and Cookie headers.
func sameHostRedirects(req *http.Request, via []*http.Request) error {
	if len(via) >= 10 {
		return errors.New("stopped after 10 redirects")
	}
	if req.URL.Scheme != via[0].URL.Scheme || req.URL.Host != via[0].URL.Host {
		return http.ErrUseLastResponse
	}
	return nil
}

// get returns the discovered provider, discovering it now if needed.
func (p *idp) get(ctx context.Context) (*discovered, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ready != nil {
		return p.ready, nil
	}
	if p.lastErr != nil && p.now().Sub(p.failedAt) < p.retryAfter {
		return nil, p.lastErr
	}
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	prov, err := oidc.NewProvider(oidc.ClientContext(ctx, p.client), p.issuer)
	if err != nil {
		p.failedAt, p.lastErr = p.now(), errors.Join(errUnreachable, err)
		return nil, p.lastErr
	}
	var meta struct {
		JWKS string `json:"jwks_uri"`
	}
	if err := prov.Claims(&meta); err != nil || meta.JWKS == "" {
		p.failedAt, p.lastErr = p.now(), errors.Join(errUnreachable, errors.New("discovery names no jwks_uri"))
		return nil, p.lastErr
	}
	keys := &keySet{remote: oidc.NewRemoteKeySet(oidc.ClientContext(context.Background(), p.client), meta.JWKS)}
	p.ready = &discovered{
		oauth: &oauth2.Config{
			ClientID:     p.clientID,
			ClientSecret: p.clientSecret,
			Endpoint:     prov.Endpoint(),
			RedirectURL:  p.redirectURL,
			Scopes:       scopes,
		},
		verifier: oidc.NewVerifier(p.issuer, keys, &oidc.Config{ClientID: p.clientID, Now: p.now}),
	}
	return p.ready, nil
}

// exchange trades code for tokens, proving possession of verifier.
func (d *discovered) exchange(ctx context.Context, client *http.Client, code, verifier string) (*oauth2.Token, error) {
	ctx = context.WithValue(ctx, oauth2.HTTPClient, client)
	tok, err := d.oauth.Exchange(ctx, code, oauth2.VerifierOption(verifier))
	if err != nil {
		var re *oauth2.RetrieveError
		if errors.As(err, &re) && re.Response != nil && re.Response.StatusCode < 500 {
			return nil, err // the provider answered: the code is refused
		}
		return nil, errors.Join(errUnreachable, err)
	}
	return tok, nil
}

// verify checks an ID token's signature (with the provider's JWKS),
// issuer, audience and expiry.
func (d *discovered) verify(ctx context.Context, raw string) (*oidc.IDToken, error) {
	var fetch fetchFailure
	tok, err := d.verifier.Verify(context.WithValue(ctx, fetchFailureKey{}, &fetch), raw)
	if err != nil && fetch.err != nil {
		return nil, errors.Join(errUnreachable, fetch.err)
	}
	return tok, err
}

// keySet is the provider's JWKS. It notes a failure to fetch the keys on
// the request's context, since go-oidc's verifier flattens that error into
// one that reads like a bad signature.
type keySet struct{ remote *oidc.RemoteKeySet }

type fetchFailureKey struct{}

type fetchFailure struct{ err error }

func (k *keySet) VerifySignature(ctx context.Context, jwt string) ([]byte, error) {
	payload, err := k.remote.VerifySignature(ctx, jwt)
	if err != nil {
		if f, ok := ctx.Value(fetchFailureKey{}).(*fetchFailure); ok && isFetchError(err) {
			f.err = err
		}
	}
	return payload, err
}

// isFetchError tells a key set that could not be fetched from a token
// that does not verify: the former wraps the HTTP client's error (or the
// context's).
func isFetchError(err error) bool {
	var ue interface{ Timeout() bool }
	return errors.As(err, &ue) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled)
}
