// Command oidc serves sign-up and sign-in with Google (OpenID Connect):
//
//	GET /auth/google/start     303 to the provider (state, nonce, PKCE S256)
//	GET /auth/google/callback  303 to /settings/keys + session cookie; a page on failure
//
// The sign-in in flight (state, nonce, PKCE verifier) is kept in a sealed,
// short-lived cookie bound to the state (state.go); a state is accepted
// once. The callback exchanges the code with the verifier, verifies the ID
// token with go-oidc (signature by the provider's JWKS, issuer, audience,
// expiry), then the nonce, and requires a verified e-mail address. The
// first sign-in creates the customer and its admin user; later ones find
// the user by Google subject; a user with the same (verified) e-mail
// address and no Google account yet is linked: at once without a password,
// with one only from a browser signed in to that user, else 403
// link_needs_password (account.go). A user with a second factor
// (shared/mfa) gets no session from the callback: a challenge in the
// guardian_mfa cookie and the sign-in page's second step instead, which
// functions/auth completes. Refusals answer an HTML page
// (400; 403 when sign-up is closed, the account is being deleted or a
// password account must be linked from its own session; 409 when the
// address belongs to a user linked to another Google account; 502 when
// the provider is unreachable)
// and an audit annotation (auth_failed, metadata reason).
//
// The provider is discovered on first use, not at start, and discovery is
// retried while it fails (provider.go), so a provider that is down does not
// keep the function from starting.
//
// Environment: GUARDIAN_PG_APP_DSN, GUARDIAN_SESSION_SECRET (signs
// sessions and seals the state cookie), GUARDIAN_COOKIE_DOMAIN,
// GUARDIAN_URL (public base URL; the redirect URI is
// GUARDIAN_URL/auth/google/callback), GUARDIAN_OIDC_ISSUER (default
// https://accounts.google.com), GUARDIAN_OIDC_CLIENT_ID,
// GUARDIAN_OIDC_CLIENT_SECRET, GUARDIAN_SIGNUP (open, the default, or
// closed: no new customers; existing users still sign in).
package main

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/glassmkr/guardian/shared/config"
	"github.com/glassmkr/guardian/shared/db"
	"github.com/glassmkr/guardian/shared/fnserve"
)

// Variables of this function beyond shared/config's.
const (
	envURL          = "GUARDIAN_URL"
	envIssuer       = "GUARDIAN_OIDC_ISSUER"
	envClientID     = "GUARDIAN_OIDC_CLIENT_ID"
	envClientSecret = "GUARDIAN_OIDC_CLIENT_SECRET"
	envSignup       = "GUARDIAN_SIGNUP"
	defaultIssuer   = "https://accounts.google.com"
	callbackPath    = "/auth/google/callback"
)

func main() { fnserve.Main(setup) }

func setup(ctx context.Context, log *zap.Logger, env *config.Loader) (http.Handler, func(), error) {
	dsn := env.String(config.PGAppDSN)
	secret := env.Secret(config.SessionSecret, config.MinSecretLen)
	domain := env.Optional(config.CookieDomain, "")
	base := env.String(envURL)
	issuer := env.Optional(envIssuer, defaultIssuer)
	clientID := env.String(envClientID)
	clientSecret := env.Secret(envClientSecret, 1)
	signup := strings.ToLower(env.Optional(envSignup, "open"))
	if err := env.Err(); err != nil {
		return nil, nil, err
	}
	var errs []error
	if u, err := url.Parse(base); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.RawQuery != "" {
		errs = append(errs, errors.New(envURL+" must be an absolute http(s) URL such as https://app.example.com"))
	}
	if u, err := url.Parse(issuer); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		errs = append(errs, errors.New(envIssuer+" must be an absolute http(s) URL"))
	}
	if signup != "open" && signup != "closed" {
		errs = append(errs, errors.New(envSignup+" must be open or closed"))
	}
	if err := errors.Join(errs...); err != nil {
		return nil, nil, err
	}
	sealer, err := newSealer(secret)
	if err != nil {
		return nil, nil, err
	}
	pool, err := db.Open(ctx, config.PGAppDSN, dsn, 8)
	if err != nil {
		return nil, nil, err
	}
	h := &handler{
		db:         pool,
		secret:     secret,
		domain:     domain,
		sealer:     sealer,
		used:       newUsedStates(),
		idp:        newIDP(issuer, clientID, string(clientSecret), strings.TrimSuffix(base, "/")+callbackPath),
		signupOpen: signup == "open",
		log:        log,
		now:        time.Now,
	}
	return h.routes(), pool.Close, nil
}
