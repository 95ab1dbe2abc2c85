// Command retention-sweep enforces the security posture's retention table
// on ClickHouse, on every server version:
//
//	snapshots       90 days on Pro, 7 days on Free
//	alert_history   365 days
//	analyses        90 days
//	notifications   90 days
//
// A snapshot is kept for the shorter of the retention_days stored with it
// by ingest (the plan of the day it arrived) and what its customer's
// current plan keeps, read from PostgreSQL (customers.plan): a customer
// who moves from Pro to Free keeps 7 days from then on, one who moves up
// keeps the older snapshots only as long as they were promised. A
// customer unknown to PostgreSQL keeps the stored retention (never more
// than 90 days): absence is never a reason to delete.
//
// How. Tables are partitioned by day. A partition whose newest row
// (system.parts max_time, no data read) is past the table's longest
// retention, and whose day is before the horizon's day, is dropped whole
// (ALTER TABLE … DROP PARTITION ID). The expired rows of the partitions
// that are kept (Free snapshots, the partition of the horizon's day,
// which still takes late snapshots stamped after the horizon) go by one
// ALTER TABLE … DELETE WHERE mutation per table, with constant cut-offs,
// only when there are such rows. ClickHouse 18.16 has no TTL; on 19.6 and later the tables
// also carry TTLs (shared/migrate), which apply only when parts merge, so
// the sweep deletes what TTL has not yet, and deletes nothing twice.
//
// Not by a wrong clock. Before it deletes anything, a run checks its
// clock against ClickHouse's and PostgreSQL's (within 10 minutes) and
// against the data: a clock more than the snapshots' 90 days plus 7 past
// the newest snapshot received would expire every partition, and no row
// outlives that on a correct clock. Either check failing makes the run
// red, and nothing is deleted (clock.go says why the rule cannot block a
// healthy system: an idle customer, a quiet month, an empty database).
//
// Idempotent and bounded. A second run right after the first finds
// nothing. A run drops at most GUARDIAN_RETENTION_MAX_DROPS partitions
// and issues at most GUARDIAN_RETENTION_MAX_MUTATIONS mutations (one per
// table at most), both at least 1; what is left is reported and done by
// the next runs (more partitions left than seven runs drop makes the run
// red: the bound is too low for the data), and a mutation leaves alone the
// expired partitions left to be dropped.
// While a DELETE mutation of the sweep on a table is still pending
// (system.mutations, is_done = 0) none is issued on that table; one
// pending for more than a day makes the run red. Tables that do not exist
// are reported as skipped. Rows older than a table's retention are not
// inserted any more (ingest refuses them), so a partition of a day before
// the horizon's is not written to while it is dropped.
//
// Result line (besides job's members): partitions_dropped, rows_dropped,
// partitions_remaining, mutations_issued, mutations_pending,
// mutations_capped, rows_to_delete (expired rows in kept partitions, which
// the issued mutations delete), tables_skipped, mutations_stuck, plus
// "tables": the same per table, and "clock": the clocks and newest
// snapshot the run's clock was compared with ("refused": why it deleted
// nothing).
//
// Environment (see shared/job for the lock, metrics and alert settings):
//
//	GUARDIAN_PG_APP_DSN               its own role, guardian_app_retention_sweep (SELECT of customers' id and plan)
//	GUARDIAN_CLICKHOUSE_ADDR, _USER, _PASSWORD, _DATABASE   a user allowed ALTER … DELETE and DROP PARTITION
//	GUARDIAN_RETENTION_MAX_DROPS      partitions dropped per run (default 100)
//	GUARDIAN_RETENTION_MAX_MUTATIONS  DELETE mutations issued per run (default 4)
//
// Run it daily (it is cheap when there is nothing to do).
package main

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/glassmkr/guardian/shared/config"
	"github.com/glassmkr/guardian/shared/db"
	"github.com/glassmkr/guardian/shared/job"
	"github.com/glassmkr/guardian/shared/migrate"
)

// Environment variables of the job's own bounds.
const (
	EnvMaxDrops     = "GUARDIAN_RETENTION_MAX_DROPS"
	EnvMaxMutations = "GUARDIAN_RETENTION_MAX_MUTATIONS"
)

func main() { job.Main(jobSpec()) }

func jobSpec() job.Spec {
	return job.Spec{Name: "retention-sweep", Timeout: 30 * time.Minute, Run: run}
}

func run(ctx context.Context, env *config.Loader, r *job.Report) error {
	dsn := env.String(config.PGAppDSN)
	chCfg := env.LoadClickHouse()
	maxDrops := env.Int(EnvMaxDrops, DefaultMaxDrops)
	maxMutations := env.Int(EnvMaxMutations, DefaultMaxMutations)
	if err := env.Err(); err != nil {
		return err
	}
	if maxDrops < 1 || maxMutations < 1 {
		// 0 would leave expired data in place run after run.
		return fmt.Errorf("%s and %s must be at least 1", EnvMaxDrops, EnvMaxMutations)
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
	v, err := migrate.ServerVersion(ctx, ch)
	if err != nil {
		return err
	}
	r.Set("clickhouse_ttl", v.SupportsTTL())
	plans := pgPlans{pool}
	s := &Sweeper{
		CH: ch, Database: chCfg.Database, Plans: plans,
		Rules: Rules, PlanDays: PlanDays,
		MaxDrops: maxDrops, MaxMutations: maxMutations,
		MaxPlanCustomers: DefaultMaxPlanCustomers, StuckAfter: DefaultStuckAfter, BacklogRuns: DefaultBacklogRuns,
		MaxClockSkew: DefaultMaxClockSkew, PostgreSQLNow: plans.Now,
	}
	res, err := s.Run(ctx, time.Now())
	res.Report(r)
	return err
}

// pgPlans reads plans from the customers table.
type pgPlans struct{ db *pgxpool.Pool }

// Now is PostgreSQL's clock, which the sweep's must agree with.
func (p pgPlans) Now(ctx context.Context) (time.Time, error) {
	var t time.Time
	err := p.db.QueryRow(ctx, "SELECT now()").Scan(&t)
	return t, err
}

func (p pgPlans) Plans(ctx context.Context, ids []string) (map[string]string, error) {
	rows, err := p.db.Query(ctx, "SELECT id::text, plan FROM customers WHERE id = ANY($1::uuid[])", ids)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := make(map[string]string, len(ids))
	for rows.Next() {
		var id, plan string
		if err := rows.Scan(&id, &plan); err != nil {
			return nil, err
		}
		out[id] = plan
	}
	return out, rows.Err()
}
