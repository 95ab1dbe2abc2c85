package guardian

import (
	"context"
	"strings"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/glassmkr/guardian/shared/testenv"
)

// The edge refuses a database that lacks migrations of its release (new
// binaries restarted before `guardianctl migrate`), and starts when it
// cannot reach PostgreSQL at all, saying so.
func TestCheckSchema(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	ctx := context.Background()
	if err := checkSchema(pg.AppDSN, zap.NewNop()); err != nil {
		t.Fatalf("a migrated database: %v", err)
	}
	var last string
	if err := pg.Owner.QueryRow(ctx, "DELETE FROM schema_migrations WHERE version = (SELECT max(version) FROM schema_migrations) RETURNING name").Scan(&last); err != nil {
		t.Fatal(err)
	}
	if err := checkSchema(pg.AppDSN, zap.NewNop()); err == nil || !strings.Contains(err.Error(), last) || !strings.Contains(err.Error(), "guardianctl migrate") {
		t.Fatalf("a database without %s: %v", last, err)
	}
	// Before the grant that lets the edge read the list: as unmigrated.
	app := strings.Split(strings.TrimPrefix(pg.AppDSN, "postgres://"), ":")[0]
	if _, err := pg.Owner.Exec(ctx, "REVOKE SELECT ON schema_migrations FROM "+app); err != nil {
		t.Fatal(err)
	}
	if err := checkSchema(pg.AppDSN, zap.NewNop()); err == nil || !strings.Contains(err.Error(), "has not been migrated") {
		t.Fatalf("a database from before the grant: %v", err)
	}

	core, logs := observer.New(zap.WarnLevel)
	if err := checkSchema("postgres://guardian_app@127.0.0.1:1/guardian?connect_timeout=2", zap.New(core)); err != nil {
		t.Fatalf("PostgreSQL away: %v, want the edge to start", err)
	}
	if logs.FilterMessageSnippet("not checked").Len() != 1 {
		t.Fatalf("the skipped check was not logged: %v", logs.All())
	}
	if err := checkSchema("postgres://%zz", zap.NewNop()); err == nil || strings.Contains(err.Error(), "%zz") {
		t.Fatalf("a malformed DSN: %v", err)
	}
}
