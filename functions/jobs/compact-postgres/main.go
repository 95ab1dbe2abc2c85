// Command compact-postgres rewrites the PostgreSQL tables that hold
// customers' personal data, weekly before the full backup, so that what
// account-purge deleted leaves the data files, and with them the backups.
//
// A deleted row's bytes stay in its table's files until the space is
// reused: VACUUM makes it reusable, it does not clear it. On a table that
// changes little (a customer's name in customers, a user's e-mail in
// users and in its index) that can take months, and pgBackRest copies the
// files as they are into every full backup. VACUUM FULL writes each table
// and its indexes anew, and the old files go; the full backup that
// follows holds none of it.
//
// Each table is rewritten in a statement of its own under lock_timeout: a
// table it cannot lock at once (a long transaction) is tried again a few
// times, then left for the next run, which turns this one red. The
// rewrite holds the table's lock for as long as it takes (these tables
// are small: milliseconds to seconds), and sign-in or a key's first check
// wait that long.
//
// It needs the tables' owner (GUARDIAN_PG_DSN, the migrations' role):
// VACUUM FULL is the owner's.
package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/glassmkr/guardian/shared/config"
	"github.com/glassmkr/guardian/shared/db"
	"github.com/glassmkr/guardian/shared/job"
)

// Tables are those where a purged account leaves personal data (names,
// e-mail addresses, hostnames, key names and hashes, second factors,
// client addresses, digests of where its keys leaked). The audit log is
// not one: its rows stay by design.
var Tables = []string{
	"customers", "users", "sessions", "api_keys", "servers", "idempotency_keys",
	"deleted_customers", "deleted_servers", "mfa_totp", "webauthn_credentials",
	"mfa_recovery_codes", "mfa_challenges", "mfa_attempts", "revocation_notices",
	"leak_places",
}

// Lock waits: how long one attempt waits for a table's lock, how many
// attempts, and the pause between them.
const (
	lockTimeout = 5 * time.Second
	attempts    = 3
	retryPause  = 30 * time.Second
)

func main() { job.Main(spec()) }

func spec() job.Spec {
	return job.Spec{Name: "compact-postgres", Timeout: time.Hour, Run: run}
}

// TableResult is what happened to one table.
type TableResult struct {
	Table string `json:"table"`
	// Status: "compacted", "absent" (no such table) or "locked" (its lock
	// was not obtained; next run).
	Status      string `json:"status"`
	BytesBefore int64  `json:"bytes_before"`
	BytesAfter  int64  `json:"bytes_after"`
	// Attempts is how many times the table was tried (more than one: its
	// lock was not obtained at first).
	Attempts int `json:"attempts"`
}

func run(ctx context.Context, env *config.Loader, r *job.Report) error {
	dsn := env.String(config.PGDSN)
	if err := env.Err(); err != nil {
		return err
	}
	conn, err := db.Connect(ctx, config.PGDSN, dsn)
	if err != nil {
		return fmt.Errorf("postgres: connect: %w", err)
	}
	defer func() { _ = conn.Close(context.Background()) }()
	res, err := compact(ctx, conn, Tables, retryPause)
	r.Set("tables", res)
	return err
}

// compact rewrites each of tables, retrying one whose lock it could not
// get (after pause), and reports each.
func compact(ctx context.Context, conn *pgx.Conn, tables []string, pause time.Duration) ([]TableResult, error) {
	if _, err := conn.Exec(ctx, fmt.Sprintf("SET lock_timeout = '%dms'", lockTimeout.Milliseconds())); err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	res := make([]TableResult, len(tables))
	pending := map[int]bool{}
	for i, t := range tables {
		res[i] = TableResult{Table: t}
		pending[i] = true
	}
	for attempt := 0; attempt < attempts && len(pending) > 0; attempt++ {
		if attempt > 0 {
			select {
			case <-time.After(pause):
			case <-ctx.Done():
				return res, ctx.Err()
			}
		}
		for i, t := range tables {
			if !pending[i] {
				continue
			}
			res[i].Attempts++
			done, err := compactTable(ctx, conn, &res[i])
			if err != nil {
				return res, fmt.Errorf("%s: %w", t, err)
			}
			if done {
				delete(pending, i)
			}
		}
	}
	var locked []string
	for i, t := range tables {
		if pending[i] {
			res[i].Status = "locked"
			locked = append(locked, t)
		}
	}
	if len(locked) > 0 {
		return res, fmt.Errorf("%w: could not lock %v within %s, %d times: their deleted rows stay in their files (and the next full backup) until a run can", job.ErrRed, locked, lockTimeout, attempts)
	}
	return res, nil
}

// compactTable rewrites one table; done is false when its lock was not
// obtained in time.
func compactTable(ctx context.Context, conn *pgx.Conn, tr *TableResult) (done bool, err error) {
	// to_regclass: NULL, not an error, for a table a migration has not
	// made yet. Reading the size takes a lock too, under the same timeout.
	var size, node *int64
	err = conn.QueryRow(ctx, "SELECT pg_total_relation_size(to_regclass($1)), pg_relation_filenode(to_regclass($1))::bigint", "public."+tr.Table).Scan(&size, &node)
	if isLockTimeout(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("size: %w", err)
	}
	if size == nil {
		tr.Status = "absent"
		return true, nil
	}
	tr.BytesBefore = *size
	if _, err := conn.Exec(ctx, "VACUUM (FULL) "+pgx.Identifier{"public", tr.Table}.Sanitize()); err != nil {
		if isLockTimeout(err) {
			return false, nil
		}
		return false, fmt.Errorf("vacuum full: %w", err)
	}
	var after *int64
	err = conn.QueryRow(ctx, "SELECT pg_total_relation_size(to_regclass($1)), pg_relation_filenode(to_regclass($1))::bigint", "public."+tr.Table).Scan(&size, &after)
	if isLockTimeout(err) {
		// Rewritten; only the figure is missing.
		tr.Status = "compacted"
		return true, nil
	}
	if err != nil || size == nil || after == nil {
		return false, fmt.Errorf("size after: %v", err)
	}
	// A role that is not the owner gets a WARNING and success from
	// VACUUM, and nothing is rewritten: a new file is the proof.
	if *after == *node {
		return false, fmt.Errorf("not rewritten (is %s the tables' owner?)", config.PGDSN)
	}
	tr.BytesAfter = *size
	tr.Status = "compacted"
	return true, nil
}

// isLockTimeout reports PostgreSQL's lock_not_available (55P03).
func isLockTimeout(err error) bool {
	var pe interface{ SQLState() string }
	return errors.As(err, &pe) && pe.SQLState() == "55P03"
}
