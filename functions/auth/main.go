// Command auth serves sign-in and session changes:
//
//	POST /auth/login     {email, password}   204 + session cookie; 401 invalid_credentials;
//	                                         401 mfa_required {mfa_token, methods} if the user has a second factor
//	POST /auth/login/mfa {mfa_token, code | credential}  204 + session cookie (assurance level 2)
//	POST /auth/login/webauthn {mfa_token}    200 options for navigator.credentials.get
//	POST /auth/logout                        204, session ended, cookie cleared
//	POST /auth/reauth    {password}          204 + fresh cookie; the session is re-authenticated;
//	                                         401 mfa_required as above if the user has a second factor
//	POST /auth/reauth/mfa, /auth/reauth/webauthn   as for sign-in, for the caller's session
//	POST /auth/password  {current_password?, new_password}  204; set or change the password
//
// Sign-in and re-auth end the old session and issue a fresh one, so a
// token seen before a password check is useless after it. Bodies may be
// JSON or an HTML form; a form sign-in answers with a redirect, to the
// second-factor page (token in the guardian_mfa cookie) when one is
// needed. A code is an authenticator app's 6 digits or a recovery code;
// credential is a WebAuthn assertion (shared/mfa). Too many wrong codes
// answer 429 too_many_attempts from the second step; sign-in's password
// step answers as for any user (the pause reveals neither the account nor
// the password), and re-auth's, for the caller's own account, says it.
//
// Grants: the runtime PostgreSQL role, the session signing secret (it
// issues tokens), the cookie domain, the MFA secret (TOTP seeds, recovery
// codes), the public URL (WebAuthn's origin).
package main

import (
	"context"
	"errors"
	"net/http"
	"runtime"
	"time"

	"go.uber.org/zap"

	"github.com/glassmkr/guardian/shared/config"
	"github.com/glassmkr/guardian/shared/db"
	"github.com/glassmkr/guardian/shared/fnserve"
	"github.com/glassmkr/guardian/shared/mfa"
	"github.com/glassmkr/guardian/shared/password"
	"github.com/glassmkr/guardian/shared/problem"
)

func main() { fnserve.Main(setup) }

func setup(ctx context.Context, log *zap.Logger, env *config.Loader) (http.Handler, func(), error) {
	dsn := env.String(config.PGAppDSN)
	secret := env.Secret(config.SessionSecret, config.MinSecretLen)
	domain := env.Optional(config.CookieDomain, "")
	concurrency := env.Int("GUARDIAN_BCRYPT_CONCURRENCY", runtime.NumCPU())
	if concurrency < 1 {
		return nil, nil, errors.New("GUARDIAN_BCRYPT_CONCURRENCY must be 1 or more (password checks at once)")
	}
	mcfg := mfa.ConfigFromEnv(env)
	if err := env.Err(); err != nil {
		return nil, nil, err
	}
	pool, err := db.Open(ctx, config.PGAppDSN, dsn, 8)
	if err != nil {
		return nil, nil, err
	}
	v, err := password.NewVerifier(concurrency, 3*time.Second)
	if err != nil {
		pool.Close()
		return nil, nil, err
	}
	second, err := mfa.New(pool, mcfg)
	if err != nil {
		pool.Close()
		return nil, nil, err
	}
	if off := second.WebAuthnOff(); off != nil {
		log.Warn("WebAuthn is off; second factors are TOTP and recovery codes only", zap.String("why", off.Error()))
	}
	h := &handler{db: pool, secret: secret, domain: domain, verifier: v, mfa: second, log: log, now: time.Now}
	// Sign-in has no session yet for the edge to check for cross-site use:
	// refuse cross-site browser POSTs here (login CSRF). Clients that send
	// no Fetch Metadata or Origin (not browsers) pass.
	cop := http.NewCrossOriginProtection()
	cop.SetDenyHandler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		problem.Write(w, problem.New(http.StatusForbidden, "cross_site", "cross-site requests may not sign in or change the account"))
	}))
	return cop.Handler(h.routes()), pool.Close, nil
}
