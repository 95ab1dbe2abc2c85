// Command audit serves the customer's audit log: GET /api/v1/audit (JSON,
// or CSV with format=csv) and GET /settings/audit (an HTML page over the
// same data). Only the caller's customer's rows, newest first, with
// filters since, until, action and key_id, opaque cursor paging and a
// capped limit; a bad filter is 400 problem+json naming it. Rows are
// ordered by when their request reached the edge but stored when its
// answer began, so a client tailing the log re-reads an overlap
// (docs/api.md).
//
// Grants: the runtime PostgreSQL role (SELECT on api_audit_log).
package main

import (
	"context"
	"net/http"

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
	return newHandler(pool, log), pool.Close, nil
}
