// Package postgres embeds Guardian's PostgreSQL migrations (NNNN_name.sql,
// applied by shared/migrate), and tells which of them a database lacks:
// the edge checks that at start without linking the migrator, whose
// ClickHouse client it has no use for.
package postgres

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
)

// FS holds the migrations.
//
//go:embed *.sql
var FS embed.FS

// QueryRower is what Pending needs of a connection.
type QueryRower interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Pending returns the names of the migrations embedded here that db has
// not applied (schema_migrations), in order. A binary started against such
// a database would run queries its schema cannot answer.
func Pending(ctx context.Context, db QueryRower) ([]string, error) {
	entries, err := fs.ReadDir(FS, ".")
	if err != nil {
		return nil, fmt.Errorf("read embedded migrations: %w", err)
	}
	var applied []string
	if err := db.QueryRow(ctx, "SELECT coalesce(array_agg(name), '{}') FROM schema_migrations").Scan(&applied); err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries { // in name order, which is version order
		if name := e.Name(); strings.HasSuffix(name, ".sql") && !slices.Contains(applied, name) {
			out = append(out, name)
		}
	}
	return out, nil
}
