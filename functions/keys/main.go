// Command keys serves the customer's API keys:
//
//	GET    /api/v1/keys                  list (never the secret; the last 4 shown)
//	POST   /api/v1/keys                  {name, scope, expires_at?}: 201 with the key, shown once
//	POST   /api/v1/keys/{id}/rotate      {grace_seconds?}: 201 with the new key; the old one
//	                                     stops now, or after a grace window of up to 24 h
//	DELETE /api/v1/keys/{id}             204, revoked at once
//
// Creating and rotating keys needs a session whose password was verified
// in the last five minutes (401 reauth_required otherwise): a stolen
// cookie cannot be turned into a long-lived key, and a key cannot mint
// keys.
//
// Grants: the runtime PostgreSQL role and the key pepper (it hashes the
// keys it mints).
package main

import (
	"context"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/glassmkr/guardian/shared/apikey"
	"github.com/glassmkr/guardian/shared/config"
	"github.com/glassmkr/guardian/shared/db"
	"github.com/glassmkr/guardian/shared/fnserve"
	"github.com/glassmkr/guardian/shared/plan"
)

func main() { fnserve.Main(setup) }

func setup(ctx context.Context, log *zap.Logger, env *config.Loader) (http.Handler, func(), error) {
	dsn := env.String(config.PGAppDSN)
	pepper := env.Secret(config.KeyPepper, config.MinSecretLen)
	if err := env.Err(); err != nil {
		return nil, nil, err
	}
	pool, err := db.Open(ctx, config.PGAppDSN, dsn, 4)
	if err != nil {
		return nil, nil, err
	}
	h := &handler{db: pool, hasher: apikey.NewHasher(pepper), log: log, now: time.Now, maxKeys: plan.MaxAccountKeys}
	return h.routes(), pool.Close, nil
}
