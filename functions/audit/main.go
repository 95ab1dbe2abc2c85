// Command audit serves the customer's audit log: GET /api/v1/audit (JSON,
// or CSV with format=csv) and GET /settings/audit (an HTML page over the
// same data). Only the caller's customer's rows, newest first, with
// filters since, until, action and key_id, opaque cursor paging and a
// capped limit; a bad filter is 400 problem+json naming it. Rows are
// ordered by when their request reached the edge but stored when its
// answer began, so a client tailing the log re-reads an overlap
// (docs/api.md).
//
// A whole-filter CSV export must be read at GUARDIAN_AUDIT_EXPORT_MIN_RATE
// bytes a second (32768; 0: no floor), on average over the time it waits
// for its reader, past GUARDIAN_AUDIT_EXPORT_GRACE (30s) of waiting, or it
// is cut (paced.go).
//
// Grants: the runtime PostgreSQL role (SELECT on api_audit_log).
package main

import (
	"context"
	"fmt"
	"net/http"

	"go.uber.org/zap"

	"github.com/glassmkr/guardian/shared/config"
	"github.com/glassmkr/guardian/shared/db"
	"github.com/glassmkr/guardian/shared/fnserve"
)

func main() { fnserve.Main(setup) }

func setup(ctx context.Context, log *zap.Logger, env *config.Loader) (http.Handler, func(), error) {
	dsn := env.String(config.PGAppDSN)
	rate := env.Int("GUARDIAN_AUDIT_EXPORT_MIN_RATE", ExportMinRate)
	grace := env.Duration("GUARDIAN_AUDIT_EXPORT_GRACE", ExportGrace)
	if err := env.Err(); err != nil {
		return nil, nil, err
	}
	if rate < 0 {
		return nil, nil, fmt.Errorf("GUARDIAN_AUDIT_EXPORT_MIN_RATE must be a number of bytes a second, or 0 for no floor")
	}
	pool, err := db.Open(ctx, config.PGAppDSN, dsn, 4)
	if err != nil {
		return nil, nil, err
	}
	return newHandler(pool, log, int64(rate), grace), pool.Close, nil
}
