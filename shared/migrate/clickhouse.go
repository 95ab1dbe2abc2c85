package migrate

import (
	"context"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// ClickHouse applies every pending ClickHouse migration to database db and
// then EnsureTTL. ClickHouse has no transactions: each statement is written
// to be safe to run again (IF NOT EXISTS), and a migration is recorded only
// after all its statements succeed, so an interrupted run simply resumes.
// It returns the names of the migrations it applied.
func ClickHouse(ctx context.Context, conn driver.Conn, db string) ([]string, error) {
	if !validIdent(db) {
		return nil, fmt.Errorf("migrate clickhouse: invalid database name %q", db)
	}
	migrations, err := load("clickhouse")
	if err != nil {
		return nil, err
	}
	if err := conn.Exec(ctx, "CREATE DATABASE IF NOT EXISTS "+db); err != nil {
		return nil, fmt.Errorf("migrate clickhouse: create database: %w", err)
	}
	if err := conn.Exec(ctx, "CREATE TABLE IF NOT EXISTS "+db+`.schema_migrations (
		version UInt32, name String, checksum String, applied_at DateTime
	) ENGINE = MergeTree ORDER BY version`); err != nil {
		return nil, fmt.Errorf("migrate clickhouse: create schema_migrations: %w", err)
	}
	applied := map[uint32]string{}
	rows, err := conn.Query(ctx, "SELECT version, checksum FROM "+db+".schema_migrations")
	if err != nil {
		return nil, fmt.Errorf("migrate clickhouse: read schema_migrations: %w", err)
	}
	for rows.Next() {
		var v uint32
		var sum string
		if err := rows.Scan(&v, &sum); err != nil {
			rows.Close()
			return nil, fmt.Errorf("migrate clickhouse: read schema_migrations: %w", err)
		}
		applied[v] = sum
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("migrate clickhouse: read schema_migrations: %w", err)
	}

	var done []string
	for _, m := range migrations {
		if sum, ok := applied[uint32(m.Version)]; ok {
			if sum != m.Checksum {
				return done, fmt.Errorf("migrate clickhouse: %s was changed after it was applied; add a new migration instead", m.Name)
			}
			continue
		}
		for _, stmt := range statements(strings.ReplaceAll(m.SQL, "{{db}}", db)) {
			if err := conn.Exec(ctx, stmt); err != nil {
				return done, fmt.Errorf("migrate clickhouse: apply %s: %w", m.Name, err)
			}
		}
		// Inline VALUES hang on ClickHouse 18.16 with this driver: use a batch.
		batch, err := conn.PrepareBatch(ctx, "INSERT INTO "+db+".schema_migrations (version, name, checksum, applied_at)")
		if err != nil {
			return done, fmt.Errorf("migrate clickhouse: record %s: %w", m.Name, err)
		}
		if err := batch.Append(uint32(m.Version), m.Name, m.Checksum, time.Now().UTC()); err != nil {
			return done, fmt.Errorf("migrate clickhouse: record %s: %w", m.Name, err)
		}
		if err := batch.Send(); err != nil {
			return done, fmt.Errorf("migrate clickhouse: record %s: %w", m.Name, err)
		}
		done = append(done, m.Name)
	}
	if _, err := EnsureTTL(ctx, conn, db); err != nil {
		return done, err
	}
	return done, nil
}

// TTLRules are the retention rules of the security posture, as ClickHouse
// TTL expressions per table. The retention-sweep job enforces the same
// rules on servers without TTL.
var TTLRules = map[string]string{
	"snapshots":     "ts + toIntervalDay(retention_days)",
	"alert_history": "ts + toIntervalDay(365)",
	"analyses":      "ts + toIntervalDay(90)",
	"notifications": "ts + toIntervalDay(90)",
}

// Version is a ClickHouse server version.
type Version struct{ Major, Minor int }

// ParseVersion reads the leading "major.minor" of a version string such as
// "18.16.1" or "24.8.4.13".
func ParseVersion(s string) (Version, error) {
	parts := strings.SplitN(strings.TrimSpace(s), ".", 3)
	if len(parts) < 2 {
		return Version{}, fmt.Errorf("clickhouse version %q: want major.minor", s)
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(parts[1])
	if err1 != nil || err2 != nil || major < 0 || minor < 0 {
		return Version{}, fmt.Errorf("clickhouse version %q: want major.minor", s)
	}
	return Version{major, minor}, nil
}

// SupportsTTL reports whether table TTL clauses exist (ClickHouse 19.6+).
func (v Version) SupportsTTL() bool {
	return v.Major > 19 || (v.Major == 19 && v.Minor >= 6)
}

// ServerVersion asks the server for its version.
func ServerVersion(ctx context.Context, conn driver.Conn) (Version, error) {
	var s string
	if err := conn.QueryRow(ctx, "SELECT version()").Scan(&s); err != nil {
		return Version{}, fmt.Errorf("clickhouse version: %w", err)
	}
	return ParseVersion(s)
}

var ttlClause = regexp.MustCompile(`(?i)\bTTL\b`)

// HasTTL reports whether a CREATE TABLE statement has a TTL clause.
func HasTTL(createQuery string) bool { return ttlClause.MatchString(createQuery) }

// EnsureTTL sets each table's retention TTL where the server supports TTL
// and the table lacks one, so a server upgraded from an old version gains
// TTLs on the next migration run. It returns the tables it altered; on a
// server without TTL it does nothing.
func EnsureTTL(ctx context.Context, conn driver.Conn, db string) ([]string, error) {
	v, err := ServerVersion(ctx, conn)
	if err != nil {
		return nil, err
	}
	if !v.SupportsTTL() {
		return nil, nil
	}
	// Giving a table a TTL would by default rewrite every part it has
	// (materialize_ttl_after_modify, 20.x on): months of snapshots, with
	// the sweep's own deletions queued behind it. The parts already
	// written need no TTL of their own: retention-sweep ages them out.
	alterCtx := ctx
	var materialize uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM system.settings WHERE name = 'materialize_ttl_after_modify'").Scan(&materialize); err != nil {
		return nil, fmt.Errorf("clickhouse ttl: read settings: %w", err)
	}
	if materialize > 0 {
		alterCtx = clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{"materialize_ttl_after_modify": 0}))
	}
	var altered []string
	for _, table := range sortedKeys(TTLRules) {
		var create string
		err := conn.QueryRow(ctx, "SELECT create_table_query FROM system.tables WHERE database = ? AND name = ?", db, table).Scan(&create)
		if err != nil {
			return altered, fmt.Errorf("clickhouse ttl: read %s: %w", table, err)
		}
		if HasTTL(create) {
			continue
		}
		if err := conn.Exec(alterCtx, TTLStatement(db, table)); err != nil {
			return altered, fmt.Errorf("clickhouse ttl: alter %s: %w", table, err)
		}
		altered = append(altered, table)
	}
	return altered, nil
}

// TTLStatement is the ALTER that gives table its retention TTL.
func TTLStatement(db, table string) string {
	return fmt.Sprintf("ALTER TABLE %s.%s MODIFY TTL %s", db, table, TTLRules[table])
}

var identRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,62}$`)

func validIdent(s string) bool { return identRE.MatchString(s) }

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
