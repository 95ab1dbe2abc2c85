package main

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/glassmkr/guardian/shared/job"
)

// Defaults of the per-run bounds.
const (
	DefaultMaxAccounts  = 100
	DefaultWait         = 5 * time.Minute
	DefaultOverdueAfter = 24 * time.Hour
)

// Purger removes the accounts whose deletion date has passed.
type Purger struct {
	// PG connects as a role with SELECT and DELETE on customers (the
	// runtime role); the cascades run as the tables' owner.
	PG *pgxpool.Pool
	// CH and Database: the Guardian ClickHouse database.
	CH       driver.Conn
	Database string
	// MaxAccounts bounds the accounts one run handles, oldest
	// delete_after first; the rest are the next runs'.
	MaxAccounts int
	// Wait bounds how long a run waits for its ClickHouse deletions
	// before it leaves the PostgreSQL step of those accounts to the next
	// run.
	Wait time.Duration
	// Poll is the interval at which system.mutations is read while waiting.
	Poll time.Duration
	// OverdueAfter: an account still not purged this long after its
	// delete_after makes the run red (the 30-day promise is at risk).
	OverdueAfter time.Duration

	// beforePG, when set, runs between the ClickHouse and the PostgreSQL
	// step with the accounts about to be deleted; an error stops the run
	// there, as a crash would (tests).
	beforePG func(ids []string) error
}

// Result is one run's outcome.
type Result struct {
	// Due: accounts whose delete_after had passed when the run started.
	Due int `json:"accounts_due"`
	// Purged: accounts deleted from PostgreSQL this run, their
	// ClickHouse rows gone first.
	Purged []string `json:"purged_customer_ids"`
	// Waiting: accounts of this run whose ClickHouse rows are still being
	// deleted; the next run finishes them.
	Waiting []string `json:"waiting_customer_ids"`
	// Remaining: due accounts beyond this run's bound.
	Remaining int `json:"accounts_remaining"`
	// MutationsIssued and RowsToDelete: ClickHouse DELETE mutations issued
	// this run and the rows they delete (counted when issued).
	MutationsIssued int    `json:"mutations_issued"`
	RowsToDelete    uint64 `json:"rows_to_delete"`
	// Tables: the ClickHouse tables with a customer_id column.
	Tables []string `json:"clickhouse_tables"`
	// Overdue: accounts still present more than OverdueAfter after their
	// delete_after, at the end of the run.
	Overdue int `json:"accounts_overdue"`
}

// Report adds the run's facts to the job's result line.
func (r Result) Report(rep *job.Report) {
	rep.Set("accounts_due", r.Due)
	rep.Set("accounts_purged", len(r.Purged))
	rep.Set("purged_customer_ids", nonNil(r.Purged))
	rep.Set("waiting_customer_ids", nonNil(r.Waiting))
	rep.Set("accounts_remaining", r.Remaining)
	rep.Set("accounts_overdue", r.Overdue)
	rep.Set("mutations_issued", r.MutationsIssued)
	rep.Set("rows_to_delete", r.RowsToDelete)
	rep.Set("clickhouse_tables", nonNil(r.Tables))
}

const (
	dueCount   = `SELECT count(*) FROM customers WHERE delete_after <= $1`
	dueAccount = `SELECT id::text FROM customers WHERE delete_after <= $1 ORDER BY delete_after, id LIMIT $2`
	// deleteAccounts re-checks delete_after, so an account whose deletion
	// was called off meanwhile stays. The foreign keys delete its users,
	// sessions, servers, keys and idempotency keys, and set customer_id
	// to NULL on its audit rows, which stay.
	deleteAccounts = `DELETE FROM customers WHERE id = ANY($1::uuid[]) AND delete_after <= $2 RETURNING id::text`
)

var identRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,62}$`)

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// Run purges the accounts due as of now, at most MaxAccounts of them:
//
//  1. PostgreSQL: which accounts are due (delete_after <= now).
//  2. ClickHouse: in every table with a customer_id column, one DELETE
//     mutation for the due accounts that still have rows there and are
//     not already named by a pending mutation.
//  3. Wait (at most Wait) until no pending mutation names them, then
//     count again.
//  4. PostgreSQL: delete the accounts with no ClickHouse row left.
//
// PostgreSQL goes last: it is the record of what is still to purge, so a
// run that stops anywhere (crash, timeout, ClickHouse down) leaves every
// account it did not finish due, and the next run picks it up; every
// step is idempotent.
func (p *Purger) Run(ctx context.Context, now time.Time) (Result, error) {
	var res Result
	if !identRE.MatchString(p.Database) {
		return res, fmt.Errorf("invalid ClickHouse database name %q", p.Database)
	}
	if p.MaxAccounts <= 0 || p.MaxAccounts > 1000 {
		return res, errors.New("accounts per run must be between 1 and 1000")
	}
	if err := p.PG.QueryRow(ctx, dueCount, now).Scan(&res.Due); err != nil {
		return res, fmt.Errorf("read due accounts: %w", err)
	}
	rows, err := p.PG.Query(ctx, dueAccount, now, p.MaxAccounts)
	if err != nil {
		return res, fmt.Errorf("read due accounts: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return res, fmt.Errorf("read due accounts: %w", err)
	}
	res.Remaining = res.Due - len(ids)
	if len(ids) == 0 {
		return res, nil
	}
	res.Tables, err = p.customerTables(ctx)
	if err != nil {
		return res, err
	}

	for _, table := range res.Tables {
		n, counted, err := p.deleteRows(ctx, table, ids)
		if err != nil {
			return res, fmt.Errorf("clickhouse %s: %w", table, err)
		}
		res.MutationsIssued += n
		res.RowsToDelete += counted
	}
	if err := p.waitMutations(ctx, res.Tables, ids); err != nil {
		return res, err
	}
	left := map[string]bool{}
	for _, table := range res.Tables {
		pending, err := p.pendingFor(ctx, table, ids)
		if err != nil {
			return res, fmt.Errorf("clickhouse %s: %w", table, err)
		}
		counts, err := p.count(ctx, table, ids)
		if err != nil {
			return res, fmt.Errorf("clickhouse %s: %w", table, err)
		}
		for _, id := range ids {
			if pending[id] || counts[id] > 0 {
				left[id] = true
			}
		}
	}
	var ready []string
	for _, id := range ids {
		if left[id] {
			res.Waiting = append(res.Waiting, id)
		} else {
			ready = append(ready, id)
		}
	}

	if len(ready) > 0 {
		if p.beforePG != nil {
			if err := p.beforePG(ready); err != nil {
				return res, err
			}
		}
		rows, err := p.PG.Query(ctx, deleteAccounts, ready, now)
		if err != nil {
			return res, fmt.Errorf("delete accounts: %w", err)
		}
		if res.Purged, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
			return res, fmt.Errorf("delete accounts: %w", err)
		}
		slices.Sort(res.Purged)
	}

	if p.OverdueAfter > 0 {
		if err := p.PG.QueryRow(ctx, dueCount, now.Add(-p.OverdueAfter)).Scan(&res.Overdue); err != nil {
			return res, fmt.Errorf("read overdue accounts: %w", err)
		}
		if res.Overdue > 0 {
			return res, fmt.Errorf("%w: %d accounts are still not purged %s after their deletion date", job.ErrRed, res.Overdue, p.OverdueAfter)
		}
	}
	return res, nil
}

// customerTables lists the MergeTree tables of the database with a
// customer_id column: every table that holds customer data, those added
// later included.
func (p *Purger) customerTables(ctx context.Context) ([]string, error) {
	engines := map[string]string{}
	rows, err := p.CH.Query(ctx, "SELECT name, engine FROM system.tables WHERE database = ?", p.Database)
	if err != nil {
		return nil, fmt.Errorf("clickhouse: list tables: %w", err)
	}
	for rows.Next() {
		var name, engine string
		if err := rows.Scan(&name, &engine); err != nil {
			rows.Close()
			return nil, fmt.Errorf("clickhouse: list tables: %w", err)
		}
		engines[name] = engine
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("clickhouse: list tables: %w", err)
	}
	rows, err = p.CH.Query(ctx, "SELECT table FROM system.columns WHERE database = ? AND name = 'customer_id'", p.Database)
	if err != nil {
		return nil, fmt.Errorf("clickhouse: list columns: %w", err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var t string
		if err := rows.Scan(&t); err != nil {
			return nil, fmt.Errorf("clickhouse: list columns: %w", err)
		}
		if identRE.MatchString(t) && strings.HasSuffix(engines[t], "MergeTree") {
			out = append(out, t)
		}
	}
	slices.Sort(out)
	return out, rows.Err()
}

// deleteRows issues one mutation deleting the rows of the accounts in
// ids that have rows in table and are not named by a pending mutation
// already. It returns the mutations issued (0 or 1) and the rows counted.
func (p *Purger) deleteRows(ctx context.Context, table string, ids []string) (int, uint64, error) {
	pending, err := p.pendingFor(ctx, table, ids)
	if err != nil {
		return 0, 0, err
	}
	counts, err := p.count(ctx, table, ids)
	if err != nil {
		return 0, 0, err
	}
	var doomed []string
	var n uint64
	for _, id := range ids {
		if counts[id] > 0 && !pending[id] {
			doomed = append(doomed, id)
			n += counts[id]
		}
	}
	if len(doomed) == 0 {
		return 0, 0, nil
	}
	q := fmt.Sprintf("ALTER TABLE %s.%s DELETE WHERE customer_id IN (%s)", p.Database, table, quoteList(doomed))
	if err := p.CH.Exec(ctx, q); err != nil {
		return 0, 0, fmt.Errorf("delete rows: %w", err)
	}
	return 1, n, nil
}

// count returns the rows per account of ids in table.
func (p *Purger) count(ctx context.Context, table string, ids []string) (map[string]uint64, error) {
	q := fmt.Sprintf("SELECT customer_id, count() FROM %s.%s WHERE customer_id IN (%s) GROUP BY customer_id", p.Database, table, quoteList(ids))
	rows, err := p.CH.Query(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("count rows: %w", err)
	}
	defer rows.Close()
	out := map[string]uint64{}
	for rows.Next() {
		var id string
		var n uint64
		if err := rows.Scan(&id, &n); err != nil {
			return nil, fmt.Errorf("count rows: %w", err)
		}
		out[id] = n
	}
	return out, rows.Err()
}

// pendingFor returns the accounts of ids that a pending mutation of table
// names. A mutation's command text (system.mutations, on 18.16 and
// later) keeps the ids it was given verbatim, so an id found there is one
// whose deletion is already under way: none is issued again, and
// PostgreSQL waits until it is done. (A mutation that names the account
// but deletes only some of its rows, such as retention-sweep's for a
// downgraded plan, only delays the purge by a run: the count after it
// still finds the rest.)
func (p *Purger) pendingFor(ctx context.Context, table string, ids []string) (map[string]bool, error) {
	rows, err := p.CH.Query(ctx, "SELECT command FROM system.mutations WHERE database = ? AND table = ? AND is_done = 0", p.Database, table)
	if err != nil {
		return nil, fmt.Errorf("read system.mutations: %w", err)
	}
	defer rows.Close()
	out := map[string]bool{}
	for rows.Next() {
		var cmd string
		if err := rows.Scan(&cmd); err != nil {
			return nil, fmt.Errorf("read system.mutations: %w", err)
		}
		for _, id := range ids {
			if strings.Contains(cmd, "'"+id+"'") {
				out[id] = true
			}
		}
	}
	return out, rows.Err()
}

// waitMutations polls until no pending mutation of tables names one of
// ids, or Wait has passed (then the next run carries on).
func (p *Purger) waitMutations(ctx context.Context, tables, ids []string) error {
	deadline := time.Now().Add(p.Wait)
	poll := p.Poll
	if poll <= 0 {
		poll = 200 * time.Millisecond
	}
	for {
		busy := false
		for _, table := range tables {
			pending, err := p.pendingFor(ctx, table, ids)
			if err != nil {
				return fmt.Errorf("clickhouse %s: %w", table, err)
			}
			if len(pending) > 0 {
				busy = true
				break
			}
		}
		if !busy || !time.Now().Add(poll).Before(deadline) {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(poll):
		}
	}
}

// quoteList renders ids as a ClickHouse list of string literals. Ids come
// from PostgreSQL's uuid type; anything else is left out, so nothing that
// needs escaping is ever spliced into a statement.
func quoteList(ids []string) string {
	q := make([]string, 0, len(ids))
	for _, id := range ids {
		if uuidRE.MatchString(id) {
			q = append(q, "'"+id+"'")
		}
	}
	if len(q) == 0 {
		return "''"
	}
	return strings.Join(q, ", ")
}

func nonNil(s []string) []string {
	if s == nil {
		return []string{}
	}
	return s
}
