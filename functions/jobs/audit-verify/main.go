// Command audit-verify walks every writer's hash chain in api_audit_log
// and reports the first row of each chain whose content, link or sequence
// does not hold: an edit, deletion or insertion by anyone with access to
// the database, superusers included. It runs under shared/job: one JSON
// result line, status ok (exit 0), red when a chain is broken (exit 1) or
// error when it could not check (exit 2), metrics and an alert.
//
// It needs only SELECT on api_audit_log (the runtime role has it):
// GUARDIAN_PG_APP_DSN, or GUARDIAN_PG_DSN.
package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/glassmkr/guardian/shared/audit"
	"github.com/glassmkr/guardian/shared/config"
	"github.com/glassmkr/guardian/shared/job"
)

func main() { job.Main(spec()) }

func spec() job.Spec {
	return job.Spec{Name: "audit-verify", Timeout: time.Hour, Run: run}
}

func run(ctx context.Context, env *config.Loader, r *job.Report) error {
	dsn := env.Optional(config.PGAppDSN, env.Optional(config.PGDSN, ""))
	if dsn == "" {
		return fmt.Errorf("set %s or %s", config.PGAppDSN, config.PGDSN)
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return fmt.Errorf("cannot connect to PostgreSQL")
	}
	defer conn.Close(context.Background())
	rep, err := audit.Verify(ctx, conn)
	if err != nil {
		return err
	}
	breaks := make([]string, len(rep.Breaks))
	for i, b := range rep.Breaks {
		breaks[i] = b.String()
	}
	r.Set("ok", rep.OK())
	r.Set("writers", rep.Writers)
	r.Set("rows", rep.Rows)
	r.Set("unchained_rows", rep.Unchained)
	r.Set("breaks", breaks)
	if !rep.OK() {
		return fmt.Errorf("%w: %d broken link(s): %s", job.ErrRed, len(breaks), strings.Join(breaks, "; "))
	}
	return nil
}
