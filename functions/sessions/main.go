// Command sessions serves the signed-in user's sessions and the account's
// deletion, for sessions only (the edge admits no key here):
//
//	GET    /api/v1/sessions                  the user's live sessions, newest first
//	DELETE /api/v1/sessions/{id}             204, that session of the user ends
//	POST   /api/v1/sessions/revoke-others    200 {revoked: n}, every other session ends
//	DELETE /api/v1/account                   202 {delete_after}: deletion is scheduled
//	                                         an hour ahead, every key and every other
//	                                         session ends; asked again, the same date
//
// Ending another session (one, or all others) needs a password confirmed
// in the last five minutes (401 reauth_required); ending one's own does
// not. Deleting the account is for administrators, with the same
// confirmation (403 insufficient_scope, 401 reauth_required).
// The purge job removes the customer once delete_after has passed.
//
// Grants: the runtime PostgreSQL role.
package main

import (
	"context"
	"net/http"
	"time"

	"go.uber.org/zap"

	"github.com/glassmkr/guardian/shared/config"
	"github.com/glassmkr/guardian/shared/db"
	"github.com/glassmkr/guardian/shared/fnserve"
)

func main() { fnserve.Main(setup) }

func setup(ctx context.Context, log *zap.Logger, env *config.Loader) (http.Handler, func(), error) {
	dsn := env.String(config.PGAppDSN)
	if err := env.Err(); err != nil {
		return nil, nil, err
	}
	pool, err := db.Open(ctx, config.PGAppDSN, dsn, 4)
	if err != nil {
		return nil, nil, err
	}
	h := &handler{db: pool, log: log, now: time.Now}
	return h.routes(), pool.Close, nil
}
