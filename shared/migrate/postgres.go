package migrate

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// appRoleName is what an app role may be called (see Postgres).
var appRoleName = regexp.MustCompile(`^[a-z][a-z0-9_]{0,39}$`)

// DefaultAppRole is the runtime role the migrations grant privileges to.
const DefaultAppRole = "guardian_app"

// FunctionRoles names the functions (and jobs) that connect to PostgreSQL
// with a role of their own, <app role>_<name>, granted only what the function's
// statements need ({{fn_role:<name>}} in a migration). The roles must exist
// before the migrations run (CREATE ROLE needs a privilege the owner role
// does not have): deploy/stack/servers.sh creates them for the local
// stack, docs/deployment.md says how in production.
var FunctionRoles = []string{"auth", "mfa", "oidc", "keys", "servers", "sessions", "audit", "ingest", "secretscan", "healthz", "audit_verify", "retention_sweep", "account_purge"}

// FunctionRole is the role of function fn under the runtime role appRole.
func FunctionRole(appRole, fn string) string { return appRole + "_" + fn }

// lockKey serialises concurrent migrators on one database (an arbitrary
// constant: "guardian" in ASCII).
const lockKey int64 = 0x677561726469616e

// PostgresOptions tunes Postgres.
type PostgresOptions struct {
	// AppRole is the runtime role granted access; default DefaultAppRole.
	AppRole string
	// LockTimeout bounds each statement's wait for a table lock (default
	// 5 s). A migration that must wait longer is rolled back and tried
	// again, LockRetries times (default 12), rather than queueing every
	// query of the running edge behind its lock for as long as another
	// transaction (a long audit-verify, say) holds the table.
	LockTimeout time.Duration
	LockRetries int
	// Log, when set, is told of each retry.
	Log func(format string, args ...any)
}

// lockNotAvailable is PostgreSQL's error for a lock_timeout that expired.
const lockNotAvailable = "55P03"

// Postgres applies every pending PostgreSQL migration, each in its own
// transaction, holding an advisory lock so that two migrators (two
// instances starting at once) apply each file exactly once. It returns the
// names of the migrations it applied.
func Postgres(ctx context.Context, pool *pgxpool.Pool, opts PostgresOptions) ([]string, error) {
	role := opts.AppRole
	if role == "" {
		role = DefaultAppRole
	}
	if opts.LockTimeout <= 0 {
		opts.LockTimeout = 5 * time.Second
	}
	if opts.LockRetries <= 0 {
		opts.LockRetries = 12
	}
	if opts.Log == nil {
		opts.Log = func(string, ...any) {}
	}
	// The name is set into the migrations' SQL (comments included, where
	// quoting does not help) and, with a suffix per function, must stay
	// within PostgreSQL's 63 bytes unshortened: a plain lower-case name.
	if !appRoleName.MatchString(role) {
		return nil, fmt.Errorf("migrate postgres: app role %q: want lower-case letters, digits and _, starting with a letter, at most 40 bytes", role)
	}
	migrations, err := load("postgres")
	if err != nil {
		return nil, err
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return nil, fmt.Errorf("migrate postgres: connect: %w", err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", lockKey); err != nil {
		return nil, fmt.Errorf("migrate postgres: lock: %w", err)
	}
	defer func() {
		// A fresh context: the lock must be released even if ctx ended.
		_, _ = conn.Exec(context.Background(), "SELECT pg_advisory_unlock($1)", lockKey)
	}()

	if _, err := conn.Exec(ctx, `CREATE TABLE IF NOT EXISTS schema_migrations (
		version integer PRIMARY KEY,
		name text NOT NULL,
		checksum text NOT NULL,
		applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
		return nil, fmt.Errorf("migrate postgres: create schema_migrations: %w", err)
	}
	applied := map[int]string{}
	rows, err := conn.Query(ctx, "SELECT version, checksum FROM schema_migrations")
	if err != nil {
		return nil, fmt.Errorf("migrate postgres: read schema_migrations: %w", err)
	}
	for rows.Next() {
		var v int
		var sum string
		if err := rows.Scan(&v, &sum); err != nil {
			return nil, fmt.Errorf("migrate postgres: read schema_migrations: %w", err)
		}
		applied[v] = sum
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("migrate postgres: read schema_migrations: %w", err)
	}

	// A database some migration of which this binary does not know is
	// newer than it: an older guardianctl must not report it up to date.
	known := map[int]bool{}
	for _, m := range migrations {
		known[m.Version] = true
	}
	var unknown []int
	for v := range applied {
		if !known[v] {
			unknown = append(unknown, v)
		}
	}
	if len(unknown) > 0 {
		slices.Sort(unknown)
		return nil, fmt.Errorf("migrate postgres: the database has migrations this binary does not know (versions %v): it was migrated by a newer release; use that release's guardianctl", unknown)
	}
	var pending []Migration
	for _, m := range migrations {
		if sum, ok := applied[m.Version]; ok {
			if sum != m.Checksum {
				return nil, fmt.Errorf("migrate postgres: %s was changed after it was applied; add a new migration instead", m.Name)
			}
			continue
		}
		pending = append(pending, m)
	}
	if len(pending) == 0 {
		return nil, nil
	}
	// Every role the migrations grant to must exist before the first one
	// runs: otherwise the run stops part-way, at the first grant to a
	// missing role, with the migrations before it committed.
	roles := []string{role}
	for _, fn := range FunctionRoles {
		roles = append(roles, FunctionRole(role, fn))
	}
	var missing []string
	if err := conn.QueryRow(ctx, "SELECT coalesce(array_agg(r ORDER BY r), '{}') FROM unnest($1::text[]) AS r WHERE r NOT IN (SELECT rolname FROM pg_roles)", roles).Scan(&missing); err != nil {
		return nil, fmt.Errorf("migrate postgres: read roles: %w", err)
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("migrate postgres: roles missing, create them first (docs/deployment.md): %s", strings.Join(missing, ", "))
	}

	pairs := []string{"{{app_role}}", pgx.Identifier{role}.Sanitize()}
	for _, fn := range FunctionRoles {
		pairs = append(pairs, "{{fn_role:"+fn+"}}", pgx.Identifier{FunctionRole(role, fn)}.Sanitize())
	}
	replacer := strings.NewReplacer(pairs...)
	var done []string
	for _, m := range pending {
		sql := replacer.Replace(m.SQL)
		if i := strings.Index(sql, "{{"); i >= 0 {
			end := min(len(sql), i+40)
			return done, fmt.Errorf("migrate postgres: %s: unknown placeholder near %q", m.Name, sql[i:end])
		}
		apply := func(tx pgx.Tx) error {
			if _, err := tx.Exec(ctx, fmt.Sprintf("SET LOCAL lock_timeout = %d", opts.LockTimeout.Milliseconds())); err != nil {
				return err
			}
			// No arguments: pgx sends the file with the simple protocol, so
			// one file may hold many statements and a function body.
			if _, err := tx.Exec(ctx, sql); err != nil {
				return err
			}
			_, err := tx.Exec(ctx, "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)", m.Version, m.Name, m.Checksum)
			return err
		}
		for attempt := 1; ; attempt++ {
			err := pgx.BeginFunc(ctx, conn.Conn(), apply)
			if err == nil {
				break
			}
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != lockNotAvailable || attempt > opts.LockRetries {
				return done, fmt.Errorf("migrate postgres: apply %s: %w", m.Name, err)
			}
			wait := min(time.Duration(attempt)*time.Second, 10*time.Second)
			opts.Log("migrate postgres: %s waited %s for a table lock another transaction holds; rolled back, trying again in %s (attempt %d of %d)",
				m.Name, opts.LockTimeout, wait, attempt+1, opts.LockRetries+1)
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return done, fmt.Errorf("migrate postgres: apply %s: %w", m.Name, ctx.Err())
			}
		}
		done = append(done, m.Name)
	}
	return done, nil
}
