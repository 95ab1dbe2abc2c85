// Package migrate applies Guardian's embedded schema migrations to
// PostgreSQL and ClickHouse.
//
// Migrations are SQL files named NNNN_name.sql, applied in order and
// recorded in a schema_migrations table, so running them again is a no-op.
// A recorded migration whose file has since changed is an error: history is
// never rewritten, a new file is added instead.
package migrate

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"

	"github.com/glassmkr/guardian/shared/migrate/postgres"
)

//go:embed clickhouse/*.sql
var clickhouseFiles embed.FS

// engineFiles is where each engine's migrations are embedded: PostgreSQL's
// in a package of their own, which the edge reads without this package's
// ClickHouse client.
func engineFiles(engine string) (fs.FS, error) {
	switch engine {
	case "postgres":
		return postgres.FS, nil
	case "clickhouse":
		return fs.Sub(clickhouseFiles, "clickhouse")
	}
	return nil, fmt.Errorf("no migrations for %q", engine)
}

// Migration is one embedded SQL file.
type Migration struct {
	Version  int
	Name     string
	SQL      string
	Checksum string
}

// Files returns the embedded migrations of engine ("postgres" or
// "clickhouse"), ordered by version.
func Files(engine string) ([]Migration, error) { return load(engine) }

// load returns the migrations under dir, ordered by version.
func load(dir string) ([]Migration, error) {
	files, err := engineFiles(dir)
	if err != nil {
		return nil, err
	}
	entries, err := fs.ReadDir(files, ".")
	if err != nil {
		return nil, fmt.Errorf("read embedded %s migrations: %w", dir, err)
	}
	var out []Migration
	seen := map[int]string{}
	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, ".sql") {
			continue
		}
		num, _, ok := strings.Cut(name, "_")
		v, err := strconv.Atoi(num)
		if !ok || err != nil || v <= 0 {
			return nil, fmt.Errorf("migration %s/%s: name must start with a positive number and an underscore", dir, name)
		}
		if prev, dup := seen[v]; dup {
			return nil, fmt.Errorf("migrations %s and %s share version %d", prev, name, v)
		}
		seen[v] = name
		body, err := fs.ReadFile(files, name)
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", name, err)
		}
		sum := sha256.Sum256(body)
		out = append(out, Migration{Version: v, Name: name, SQL: string(body), Checksum: hex.EncodeToString(sum[:])})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Version < out[j].Version })
	return out, nil
}

// statements splits a file into statements at semicolons that end a line,
// dropping comment-only lines; for servers that take one statement a call.
func statements(sql string) []string {
	var out []string
	var cur strings.Builder
	for _, line := range strings.Split(sql, "\n") {
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "--") {
			continue
		}
		cur.WriteString(line)
		cur.WriteByte('\n')
		if strings.HasSuffix(trimmed, ";") {
			stmt := strings.TrimSuffix(strings.TrimSpace(cur.String()), ";")
			out = append(out, stmt)
			cur.Reset()
		}
	}
	if s := strings.TrimSpace(cur.String()); s != "" {
		out = append(out, s)
	}
	return out
}
