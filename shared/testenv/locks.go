package testenv

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// BlockedBy waits until a PostgreSQL backend waits for a lock that backend
// pid holds, and returns the waiter's pid; or, if done delivers first (the
// work under test finished without waiting), its value with finished true.
// With roles, only a backend signed in as one of them counts (the function
// under test's, not the edge's own writes that may touch the same rows).
// It fails t if neither happens within 30 s. Tests of lock order use it to
// let the other side commit exactly while the work under test waits,
// without sleeping on a guess.
func BlockedBy[T any](t testing.TB, db *pgxpool.Pool, pid int, done <-chan T, roles ...string) (waiter int, v T, finished bool) {
	t.Helper()
	if roles == nil {
		roles = []string{} // an array, not NULL: "any role"
	}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		select {
		case v = <-done:
			return 0, v, true
		default:
		}
		err := db.QueryRow(context.Background(), `SELECT pid FROM pg_stat_activity
			WHERE $1 = ANY(pg_blocking_pids(pid)) AND (cardinality($2::text[]) = 0 OR usename = ANY($2)) LIMIT 1`, pid, roles).Scan(&waiter)
		if err == nil {
			return waiter, v, false
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			t.Fatal(err)
		}
	}
	t.Fatal("nothing waited for the lock, and the work did not finish")
	return 0, v, false
}

// Hold begins a transaction on db that runs sql (which takes a lock) and
// returns it with its backend's pid, for BlockedBy; it is rolled back when
// t ends unless committed.
func Hold(t testing.TB, db *pgxpool.Pool, sql string, args ...any) (pgx.Tx, int) {
	t.Helper()
	ctx := context.Background()
	tx, err := db.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	if _, err := tx.Exec(ctx, sql, args...); err != nil {
		t.Fatal(err)
	}
	var pid int
	if err := tx.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	return tx, pid
}
