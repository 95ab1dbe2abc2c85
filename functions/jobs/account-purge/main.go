// Command account-purge completes account deletions: an account whose
// deletion the customer asked for (DELETE /api/v1/account sets
// customers.delete_after to the request time plus an hour, see
// functions/sessions) loses all its data once delete_after has passed.
// The purge happens at delete_after, not before: the date the customer was
// shown is the date their data goes, and a run scheduled hourly ends it
// within the hour after it.
//
// It also completes server deletions: a server deleted through the API
// (DELETE /api/v1/servers/{id}, recorded in deleted_servers) loses its
// ClickHouse rows (every MergeTree table with a server_id column) at the
// next run, the same way; its record is marked purged once none is left,
// and kept 31 days (see below).
//
// What goes:
//   - ClickHouse: the account's rows in every MergeTree table of the
//     database that has a customer_id column (snapshots, alert_history,
//     analyses, notifications, and tables added later), by one
//     ALTER TABLE … DELETE WHERE customer_id IN (…) mutation per table;
//   - PostgreSQL: the customers row, and by the foreign keys' cascades its
//     users, sessions, servers, API keys and idempotency keys. Its
//     api_audit_log rows stay, with customer_id set to NULL by a trigger
//     on customers (the one change the audit log's own trigger allows;
//     the rows' hash chain does not cover customer_id). Rows written
//     after the deletion (a request in flight, a spool replayed later)
//     are nulled by every run (forget_deleted_customers, migration 0011).
//
// Order and restarts. ClickHouse first, PostgreSQL last, and an account's
// PostgreSQL row is deleted only once no pending mutation names it and a
// fresh count finds none of its rows in ClickHouse. The PostgreSQL row is
// the record of what is still to purge, so a run that stops anywhere
// (crash, timeout, ClickHouse or PostgreSQL down) loses nothing that should
// be kept and leaves nothing orphaned: the next run finds the account due
// again, issues no mutation already pending, and finishes. Every step is
// idempotent.
//
// Bounds. A run takes at most GUARDIAN_PURGE_MAX_ACCOUNTS accounts (oldest
// delete_after first), issues at most one mutation per table for them (and
// one each for the deleted servers and the deleted accounts whose rows came
// back), and waits at most GUARDIAN_PURGE_WAIT for each; what is left is
// the next run's. A run handles at most 1,000 deleted servers (those not
// yet purged first, then the purged ones, newest first) and looks again
// for the rows of at most 1,000 deleted accounts (newest first). An
// account still present a day after its delete_after makes the run red,
// and so does a server deleted through the API whose rows are still not
// known gone a day after its deletion.
//
// Audit. The run writes no api_audit_log row: that log records API calls
// (method, path, status, the edge's hash chains), and the deletion request
// itself is already there (action "delete" on resource "customer", with
// delete_after). The result line names the purged accounts instead.
//
// Deletions outlast the backups. A ClickHouse backup set restored after
// data loss is up to 30 days old and holds the rows of accounts and
// servers deleted since. Each run looks again for the rows of the
// accounts deleted in the last 30 days (deleted_customers) and of the
// servers deleted in the last 31 (deleted_servers keeps them, marked
// purged_at, migration 0044), and deletes any it finds.
//
// Housekeeping. Each run also deletes second-factor attempt counters whose
// window began over a day ago: they name users and client addresses, and
// count nothing once their 15-minute window is over.
//
// Result line (besides job's members): accounts_due, accounts_purged,
// purged_customer_ids, waiting_customer_ids, accounts_remaining,
// accounts_overdue, mutations_issued, rows_to_delete, clickhouse_tables,
// servers_due, purged_server_ids, waiting_server_ids, servers_remaining,
// servers_overdue, accounts_rechecked, accounts_found_again,
// audit_rows_anonymised, mfa_attempts_forgotten.
//
// Environment (see shared/job for the lock, metrics and alert settings):
//
//	GUARDIAN_PG_APP_DSN           its own role, guardian_app_account_purge (migration 0025):
//	                              SELECT and DELETE on customers (accounts due only,
//	                              migration 0042), deleted_servers and mfa_attempts,
//	                              UPDATE of deleted_servers.purged_at and SELECT on
//	                              deleted_customers (0044), and forget_deleted_customers,
//	                              all this job needs (cascades and the audit trigger run
//	                              as the tables' owner); the owner DSN is not used
//	GUARDIAN_CLICKHOUSE_ADDR, _USER, _PASSWORD, _DATABASE   a user allowed ALTER … DELETE
//	GUARDIAN_PURGE_MAX_ACCOUNTS   accounts per run, 1 to 1000 (default 100)
//	GUARDIAN_PURGE_WAIT           wait for this run's ClickHouse deletions (default 5m)
package main

import (
	"context"
	"fmt"
	"time"

	"github.com/glassmkr/guardian/shared/config"
	"github.com/glassmkr/guardian/shared/db"
	"github.com/glassmkr/guardian/shared/job"
)

// Environment variables of the job's own bounds.
const (
	EnvMaxAccounts = "GUARDIAN_PURGE_MAX_ACCOUNTS"
	EnvWait        = "GUARDIAN_PURGE_WAIT"
)

func main() { job.Main(jobSpec(nil)) }

// jobSpec is the job; beforePG is Purger.beforePG (tests).
func jobSpec(beforePG func([]string) error) job.Spec {
	return job.Spec{Name: "account-purge", Timeout: 30 * time.Minute, Run: func(ctx context.Context, env *config.Loader, r *job.Report) error {
		return run(ctx, env, r, beforePG)
	}}
}

func run(ctx context.Context, env *config.Loader, r *job.Report, beforePG func([]string) error) error {
	dsn := env.String(config.PGAppDSN)
	chCfg := env.LoadClickHouse()
	maxAccounts := env.Int(EnvMaxAccounts, DefaultMaxAccounts)
	wait := env.PositiveDuration(EnvWait, DefaultWait)
	if err := env.Err(); err != nil {
		return err
	}
	if maxAccounts < 1 || maxAccounts > 1000 {
		return fmt.Errorf("%s must be between 1 and 1000", EnvMaxAccounts)
	}
	pool, err := db.Open(ctx, config.PGAppDSN, dsn, 2)
	if err != nil {
		return err
	}
	defer pool.Close()
	ch, err := db.ClickHouse(chCfg, db.ClickHouseOptions{Read: 5 * time.Minute})
	if err != nil {
		return err
	}
	defer ch.Close()
	p := &Purger{
		PG: pool, CH: ch, Database: chCfg.Database,
		MaxAccounts: maxAccounts, Wait: wait, OverdueAfter: DefaultOverdueAfter,
		beforePG: beforePG,
	}
	res, err := p.Run(ctx, time.Now())
	res.Report(r)
	return err
}
