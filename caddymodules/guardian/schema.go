package guardian

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/zap"

	"github.com/glassmkr/guardian/shared/config"
	"github.com/glassmkr/guardian/shared/migrate/postgres"
	"github.com/glassmkr/guardian/shared/pgdsn"
)

// schemaCheckTimeout bounds the start-up check of the database's schema.
const schemaCheckTimeout = 3 * time.Second

// checkSchema refuses an edge whose database lacks migrations this
// release brings: started against it (new binaries installed and
// restarted before `guardianctl migrate`), every audit row would go to the
// spool until it filled, and functions would fail on missing tables or
// grants. A database the edge cannot reach does not stop it (it is built
// to start while PostgreSQL is away: the limiter fails open, audit rows
// spool); the log says the check was skipped.
func checkSchema(dsn string, log *zap.Logger) error {
	ctx, cancel := context.WithTimeout(context.Background(), schemaCheckTimeout)
	defer cancel()
	// pgx directly, not shared/db, which would link the ClickHouse client
	// into the edge. A parse error would quote the DSN: say only which.
	cfg, err := pgdsn.Conn(config.PGAppDSN, dsn)
	if err != nil {
		return fmt.Errorf("guardian: %w", err)
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		log.Warn("database schema not checked: PostgreSQL cannot be reached now", zap.Error(err))
		return nil
	}
	defer conn.Close(context.Background())
	pending, err := postgres.Pending(ctx, conn)
	var pe *pgconn.PgError
	switch {
	case errors.As(err, &pe) && (pe.Code == "42501" || pe.Code == "42P01"):
		// No schema_migrations, or no grant to read it (before 0030).
		return errors.New("guardian: the database has not been migrated for this release; run `guardianctl migrate` first (docs/deployment.md, Upgrades)")
	case err != nil:
		log.Warn("database schema not checked", zap.Error(err))
		return nil
	case len(pending) > 0:
		return fmt.Errorf("guardian: the database lacks %d migration(s) of this release (%s); run `guardianctl migrate` first (docs/deployment.md, Upgrades)",
			len(pending), strings.Join(pending, ", "))
	}
	return nil
}
