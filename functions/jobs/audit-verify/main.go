// Command audit-verify walks every writer's hash chain in api_audit_log
// and reports the first row of each chain whose content, link or sequence
// does not hold: an edit, deletion or insertion by anyone with access to
// the database, superusers included. Exit status 0 when every chain
// holds, 1 when one is broken, 2 when it could not check.
//
// It needs only SELECT on api_audit_log (the runtime role has it):
// GUARDIAN_PG_APP_DSN, or GUARDIAN_PG_DSN.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/glassmkr/guardian/shared/audit"
	"github.com/glassmkr/guardian/shared/config"
)

func main() {
	os.Exit(run(os.LookupEnv, os.Stdout))
}

func run(lookup func(string) (string, bool), out *os.File) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, time.Hour)
	defer cancel()
	l := config.New(lookup)
	dsn := l.Optional(config.PGAppDSN, l.Optional(config.PGDSN, ""))
	if dsn == "" {
		fmt.Fprintf(os.Stderr, "audit-verify: set %s or %s\n", config.PGAppDSN, config.PGDSN)
		return 2
	}
	conn, err := pgx.Connect(ctx, dsn)
	if err != nil {
		fmt.Fprintln(os.Stderr, "audit-verify: cannot connect to PostgreSQL")
		return 2
	}
	defer conn.Close(context.Background())
	rep, err := audit.Verify(ctx, conn)
	if err != nil {
		fmt.Fprintf(os.Stderr, "audit-verify: %v\n", err)
		return 2
	}
	breaks := make([]string, len(rep.Breaks))
	for i, b := range rep.Breaks {
		breaks[i] = b.String()
	}
	result := map[string]any{"ok": rep.OK(), "writers": rep.Writers, "rows": rep.Rows, "unchained_rows": rep.Unchained, "breaks": breaks}
	_ = json.NewEncoder(out).Encode(result)
	if !rep.OK() {
		for _, b := range breaks {
			fmt.Fprintln(os.Stderr, "audit-verify: BROKEN:", b)
		}
		return 1
	}
	return 0
}
