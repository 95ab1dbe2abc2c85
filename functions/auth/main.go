// Command auth serves sign-in and session changes:
//
//	POST /auth/login     {email, password}   204 + session cookie; 401 invalid_credentials
//	POST /auth/logout                        204, session ended, cookie cleared
//	POST /auth/reauth    {password}          204 + fresh cookie; the session is re-authenticated
//	POST /auth/password  {current_password?, new_password}  204; set or change the password
//
// Sign-in and re-auth end the old session and issue a fresh one, so a
// token seen before a password check is useless after it. Bodies may be
// JSON or an HTML form; a form sign-in answers with a redirect.
//
// Grants: the runtime PostgreSQL role, the session signing secret (it
// issues tokens), the cookie domain.
package main

import (
	"context"
	"net/http"
	"runtime"
	"time"

	"go.uber.org/zap"

	"github.com/glassmkr/guardian/shared/config"
	"github.com/glassmkr/guardian/shared/db"
	"github.com/glassmkr/guardian/shared/fnserve"
	"github.com/glassmkr/guardian/shared/password"
)

func main() { fnserve.Main(setup) }

func setup(ctx context.Context, log *zap.Logger, env *config.Loader) (http.Handler, func(), error) {
	dsn := env.String(config.PGAppDSN)
	secret := env.Secret(config.SessionSecret, config.MinSecretLen)
	domain := env.Optional(config.CookieDomain, "")
	concurrency := env.Int("GUARDIAN_BCRYPT_CONCURRENCY", runtime.NumCPU())
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
	h := &handler{db: pool, secret: secret, domain: domain, verifier: v, log: log, now: time.Now}
	// Sign-in has no session yet for the edge to check for cross-site use:
	// refuse cross-site browser POSTs here (login CSRF). Clients that send
	// no Fetch Metadata or Origin (not browsers) pass.
	return http.NewCrossOriginProtection().Handler(h.routes()), pool.Close, nil
}
