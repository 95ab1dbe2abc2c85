package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
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
	// job's own, guardian_app_account_purge); the cascades run as the
	// tables' owner.
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
	// delete_after, or a deleted server whose rows are still not gone this
	// long after its deletion, makes the run red (the 30-day promise is
	// at risk).
	OverdueAfter time.Duration

	// AuditBatch is how many audit rows of an account being deleted are
	// anonymised per transaction before the delete (default 50,000).
	AuditBatch int

	// MaxRechecked bounds the deleted accounts, and the deleted servers
	// known purged, whose rows one run looks for again (default 1,000
	// each): past it, runs take the remembered deletions in turns
	// (recheckPage).
	MaxRechecked int

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
	// ServersDue, ServersPurged, ServersWaiting: servers deleted through
	// the API whose ClickHouse rows this run handled, finished, or left
	// for the next run.
	ServersDue     int      `json:"servers_due"`
	ServersPurged  []string `json:"purged_server_ids"`
	ServersWaiting []string `json:"waiting_server_ids"`
	// ServersRemaining: deleted servers whose rows are not yet known gone
	// beyond this run's bound.
	ServersRemaining int `json:"servers_remaining"`
	// ServersOverdue: deleted servers whose rows are still not known gone
	// more than OverdueAfter after their deletion, at the end of the run.
	ServersOverdue int `json:"servers_overdue"`
	// AccountsRechecked: accounts deleted in the last 30 days whose
	// ClickHouse rows were looked for again (a restored backup set brings
	// them back); AccountsFoundAgain: those that had rows, deleted again.
	AccountsRechecked  int      `json:"accounts_rechecked"`
	AccountsFoundAgain []string `json:"accounts_found_again"`
	// RecheckTurns: how many runs (hours) it takes to look again at every
	// remembered deleted account, and at every deleted server known
	// purged; 1 while each fits in one run's bound. 0 for servers when
	// servers not yet purged took the whole run's bound: none was looked
	// at again this run.
	AccountsRecheckTurns int `json:"accounts_recheck_turns"`
	ServersRecheckTurns  int `json:"servers_recheck_turns"`
	// AuditRowsAnonymised: audit rows written after their customer was
	// deleted (requests in flight during a purge, a spool replayed
	// later), whose customer_id this run set to NULL.
	AuditRowsAnonymised int64 `json:"audit_rows_anonymised"`
	// AuditRowsOfPurged: audit rows of the accounts this run deleted,
	// anonymised in batches before the delete.
	AuditRowsOfPurged int64 `json:"audit_rows_anonymised_before_delete"`
	// MFAAttemptsForgotten: second-factor attempt counters (per user, per
	// client address) whose window ended more than AttemptsKeptFor ago.
	MFAAttemptsForgotten int64 `json:"mfa_attempts_forgotten"`
}

// AttemptsKeptFor is how long a second-factor attempt counter outlives the
// start of its window. Windows are 15 minutes (shared/mfa), so a counter
// this old counts nothing; without the sweep a client address or a
// deleted user's id would stay in mfa_attempts for good.
const AttemptsKeptFor = 24 * time.Hour

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
	rep.Set("servers_due", r.ServersDue)
	rep.Set("purged_server_ids", nonNil(r.ServersPurged))
	rep.Set("waiting_server_ids", nonNil(r.ServersWaiting))
	rep.Set("servers_remaining", r.ServersRemaining)
	rep.Set("servers_overdue", r.ServersOverdue)
	rep.Set("accounts_rechecked", r.AccountsRechecked)
	rep.Set("accounts_found_again", nonNil(r.AccountsFoundAgain))
	rep.Set("accounts_recheck_turns", r.AccountsRecheckTurns)
	rep.Set("servers_recheck_turns", r.ServersRecheckTurns)
	rep.Set("audit_rows_anonymised", r.AuditRowsAnonymised)
	rep.Set("audit_rows_anonymised_before_delete", r.AuditRowsOfPurged)
	rep.Set("mfa_attempts_forgotten", r.MFAAttemptsForgotten)
}

const (
	// Due by the run's clock and PostgreSQL's both: an account is never
	// taken (its ClickHouse rows deleted first) before its time by either.
	dueCount   = `SELECT count(*) FROM customers WHERE delete_after <= least($1, now())`
	dueAccount = `SELECT id::text FROM customers WHERE delete_after <= least($1, now()) ORDER BY delete_after, id LIMIT $2`
	// deleteAccounts re-checks delete_after, so an account whose deletion
	// was called off meanwhile stays. The foreign keys delete its users,
	// sessions, servers, keys and idempotency keys; a trigger sets
	// customer_id to NULL on its audit rows, which stay (migration 0011).
	// Due by PostgreSQL's clock too: as this job's role, deleting an
	// account not yet due by it fails the statement (migration 0042).
	deleteAccounts = `DELETE FROM customers WHERE id = ANY($1::uuid[]) AND delete_after <= least($2, now()) RETURNING id::text`
	// forgetDeleted nulls customer_id on audit rows written after their
	// customer's deletion, and forgets deletions older than its argument
	// (migration 0011). A spool holds rows only while PostgreSQL is away
	// and replays them as soon as it is back, so 30 days is ample.
	forgetDeleted = `SELECT forget_deleted_customers('30 days')`
	// forgetAuditBatch anonymises up to $2 audit rows of account $1, whose
	// deletion must be due by PostgreSQL's clock (migration 0031).
	forgetAuditBatch = `SELECT forget_audit_rows_of($1::uuid, $2)`
	// forgetAttempts deletes second-factor attempt counters long past
	// their window (AttemptsKeptFor).
	forgetAttempts = `DELETE FROM mfa_attempts WHERE window_start < $1`
	// Servers deleted through the API: those whose ClickHouse rows may
	// remain first, oldest first (dueServers); then, in the room left,
	// those purged already, whose rows a restored backup set may have
	// brought back (recheckedServers): the newest, and a page of the
	// older ones in turns (recheckPage).
	dueServers = `SELECT server_id::text, customer_id::text FROM deleted_servers
WHERE purged_at IS NULL ORDER BY deleted_at, server_id LIMIT $1`
	purgedServers    = `SELECT count(*) FROM deleted_servers WHERE purged_at IS NOT NULL`
	recheckedServers = `(SELECT server_id::text, customer_id::text FROM deleted_servers
WHERE purged_at IS NOT NULL ORDER BY deleted_at DESC, server_id LIMIT $1)
UNION ALL (SELECT server_id::text, customer_id::text FROM deleted_servers
WHERE purged_at IS NOT NULL ORDER BY deleted_at DESC, server_id OFFSET $3 LIMIT $2)`
	serversCount  = `SELECT count(*) FROM deleted_servers WHERE purged_at IS NULL`
	serversBefore = `SELECT count(*) FROM deleted_servers WHERE purged_at IS NULL AND deleted_at < $1`
	// markPurged records that a server's rows were found gone once the
	// rows on their way to ClickHouse at its deletion have landed.
	markPurged = `UPDATE deleted_servers SET purged_at = now()
WHERE server_id = ANY($1::uuid[]) AND purged_at IS NULL AND deleted_at < now() - $2::interval RETURNING server_id::text`
	// forgetServers forgets deleted servers once no backup set can hold
	// their rows (KeptDeletions).
	forgetServers = `DELETE FROM deleted_servers WHERE purged_at IS NOT NULL AND deleted_at < now() - $1::interval`
	// deletedAccounts are the accounts deleted in the last 30 days
	// (forget_deleted_customers keeps them that long): the newest, and a
	// page of the older ones in turns (recheckPage).
	deletedCount    = `SELECT count(*) FROM deleted_customers`
	deletedAccounts = `(SELECT customer_id::text FROM deleted_customers ORDER BY deleted_at DESC, customer_id LIMIT $1)
UNION ALL (SELECT customer_id::text FROM deleted_customers ORDER BY deleted_at DESC, customer_id OFFSET $3 LIMIT $2)`
)

// recheckPage picks which of total remembered deletions, newest first, the
// run at now looks at again, at most size (> 0): the newest head, and the
// rest rows from offset on (a page of the older ones); pages is how many
// runs it takes to look at them all. Where all fit, head is size. Else
// half are the newest (a restored set is most often the latest, which
// holds the deletions since it was made), and the older ones are taken in
// turns: runs are hourly, so the hour of now walks their pages, each
// looked at within that many hours (pages shift a little as deletions
// come and go; one on a boundary waits a turn more at most). A bound that
// always took the newest would never look again at the rest: more than a
// bound's worth of deletions in 30 days, then an older set restored,
// would bring their rows back for good.
func recheckPage(total, size int, now time.Time) (head, rest, offset, pages int) {
	if total <= size {
		return size, 0, 0, 1
	}
	head = size / 2
	rest = size - head
	pages = (total - head + rest - 1) / rest
	return head, rest, head + int(now.Unix()/3600%int64(pages))*rest, pages
}

// maxRechecked is MaxRechecked or its default.
func (p *Purger) maxRechecked() int {
	if p.MaxRechecked > 0 {
		return p.MaxRechecked
	}
	return maxRecheckedPerRun
}

// KeptDeletions is how long a deleted server is remembered, its rows
// deleted again should they reappear: ClickHouse backup sets are kept 30
// days, so a set restored after data loss can bring back a server deleted
// up to 30 days before. Deleted accounts are remembered as long
// (deleted_customers, forget_deleted_customers).
const KeptDeletions = 31 * 24 * time.Hour

// serverSettle is how long after its deletion a server's rows are looked
// for again before it counts as purged (purged_at, and no longer overdue):
// a snapshot the server pushed just before its deletion may still be on
// its way to ClickHouse (ingest groups inserts for up to ~10 s).
const serverSettle = 10 * time.Minute

// maxServersPerRun bounds the deleted servers one run handles, and
// maxRecheckedPerRun (by default) the deleted accounts whose rows it looks
// for again and the deleted servers known purged among the former.
const (
	maxServersPerRun   = 1000
	maxRecheckedPerRun = 1000
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
// step is idempotent. Then the servers deleted through the API
// (purgeServers), and the accounts deleted in the last 30 days whose rows
// came back (recheckAccounts); before all of it, PostgreSQL's own
// housekeeping.
func (p *Purger) Run(ctx context.Context, now time.Time) (Result, error) {
	var res Result
	if !identRE.MatchString(p.Database) {
		return res, fmt.Errorf("invalid ClickHouse database name %q", p.Database)
	}
	if p.MaxAccounts <= 0 || p.MaxAccounts > 1000 {
		return res, errors.New("accounts per run must be between 1 and 1000")
	}
	// PostgreSQL's housekeeping first: the steps after it reach ClickHouse
	// at every run (the deletions of the last 30 days are looked for
	// again), and a ClickHouse away must not hold it up.
	if err := p.PG.QueryRow(ctx, forgetDeleted).Scan(&res.AuditRowsAnonymised); err != nil {
		return res, fmt.Errorf("anonymise late audit rows of deleted accounts: %w", err)
	}
	tag, err := p.PG.Exec(ctx, forgetAttempts, now.Add(-AttemptsKeptFor))
	if err != nil {
		return res, fmt.Errorf("forget old second-factor attempt counters: %w", err)
	}
	res.MFAAttemptsForgotten = tag.RowsAffected()
	if err := p.purgeAccounts(ctx, now, &res); err != nil {
		return res, err
	}
	if err := p.purgeServers(ctx, now, &res); err != nil {
		return res, err
	}
	if err := p.recheckAccounts(ctx, now, &res); err != nil {
		return res, err
	}
	if p.OverdueAfter > 0 {
		if err := p.PG.QueryRow(ctx, dueCount, now.Add(-p.OverdueAfter)).Scan(&res.Overdue); err != nil {
			return res, fmt.Errorf("read overdue accounts: %w", err)
		}
		// A server whose rows a deletion cannot remove (a mutation that
		// keeps failing) would otherwise wait, run after run, in silence,
		// its data copied into every night's backup.
		if err := p.PG.QueryRow(ctx, serversBefore, now.Add(-p.OverdueAfter)).Scan(&res.ServersOverdue); err != nil {
			return res, fmt.Errorf("read overdue deleted servers: %w", err)
		}
		var late []string
		if res.Overdue > 0 {
			late = append(late, fmt.Sprintf("%d accounts are still not purged %s after their deletion date", res.Overdue, p.OverdueAfter))
		}
		if res.ServersOverdue > 0 {
			late = append(late, fmt.Sprintf("%d deleted servers still have ClickHouse rows, or pending deletions, %s after their deletion", res.ServersOverdue, p.OverdueAfter))
		}
		if len(late) > 0 {
			return res, fmt.Errorf("%w: %s", job.ErrRed, strings.Join(late, "; "))
		}
	}
	return res, nil
}

// purgeAccounts is Run's work for the accounts due.
func (p *Purger) purgeAccounts(ctx context.Context, now time.Time, res *Result) error {
	if err := p.PG.QueryRow(ctx, dueCount, now).Scan(&res.Due); err != nil {
		return fmt.Errorf("read due accounts: %w", err)
	}
	rows, err := p.PG.Query(ctx, dueAccount, now, p.MaxAccounts)
	if err != nil {
		return fmt.Errorf("read due accounts: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("read due accounts: %w", err)
	}
	res.Remaining = res.Due - len(ids)
	if len(ids) == 0 {
		return nil
	}
	res.Tables, err = p.customerTables(ctx)
	if err != nil {
		return err
	}
	ready, waiting, err := p.deleteAndCheck(ctx, res.Tables, "customer_id", ids, nil, res)
	if err != nil {
		return err
	}
	res.Waiting = waiting
	if len(ready) > 0 {
		if p.beforePG != nil {
			if err := p.beforePG(ready); err != nil {
				return err
			}
		}
		if ready, err = p.anonymiseAudit(ctx, ready, res); err != nil {
			return err
		}
		rows, err := p.PG.Query(ctx, deleteAccounts, ready, now)
		if err != nil {
			return fmt.Errorf("delete accounts: %w", err)
		}
		if res.Purged, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
			return fmt.Errorf("delete accounts: %w", err)
		}
		slices.Sort(res.Purged)
	}
	return nil
}

// anonymiseAudit sets customer_id to NULL on the audit rows of accounts,
// AuditBatch rows per transaction, so the delete that follows has next to
// none left to update, and returns the accounts it did. Work a run cut
// short has done stays done. An account not yet due by PostgreSQL's clock
// (the job's is ahead) is left, with its deletion, to the next run.
func (p *Purger) anonymiseAudit(ctx context.Context, accounts []string, res *Result) ([]string, error) {
	batch := p.AuditBatch
	if batch <= 0 {
		batch = 50_000
	}
	var done []string
next:
	for _, id := range accounts {
		for {
			var n int64
			err := p.PG.QueryRow(ctx, forgetAuditBatch, id, batch).Scan(&n)
			var pe *pgconn.PgError
			if errors.As(err, &pe) && pe.Code == "42501" && strings.Contains(pe.Message, "not due") {
				res.Waiting = append(res.Waiting, id)
				continue next
			}
			if err != nil {
				return done, fmt.Errorf("anonymise the audit rows of a deleted account: %w", err)
			}
			res.AuditRowsOfPurged += n
			if n < int64(batch) {
				break
			}
		}
		done = append(done, id)
	}
	return done, nil
}

// purgeServers deletes the ClickHouse rows of servers deleted through the
// API (deleted_servers), marks purged those that have none left and were
// deleted more than serverSettle ago, and forgets those deleted more than
// KeptDeletions ago. Like an account, a server stays recorded until its
// rows are gone, so a run that stops anywhere leaves it for the next.
func (p *Purger) purgeServers(ctx context.Context, now time.Time, res *Result) error {
	var ids, customers []string
	var server, customer string
	collect := func(rows pgx.Rows, err error) error {
		if err != nil {
			return fmt.Errorf("read deleted servers: %w", err)
		}
		if _, err := pgx.ForEachRow(rows, []any{&server, &customer}, func() error {
			ids = append(ids, server)
			if !slices.Contains(customers, customer) {
				customers = append(customers, customer)
			}
			return nil
		}); err != nil {
			return fmt.Errorf("read deleted servers: %w", err)
		}
		return nil
	}
	if err := collect(p.PG.Query(ctx, dueServers, maxServersPerRun)); err != nil {
		return err
	}
	if len(ids) == maxServersPerRun {
		var total int
		if err := p.PG.QueryRow(ctx, serversCount).Scan(&total); err != nil {
			return fmt.Errorf("count deleted servers: %w", err)
		}
		res.ServersRemaining = max(total-maxServersPerRun, 0)
	}
	if room := min(maxServersPerRun-len(ids), p.maxRechecked()); room > 0 {
		var purged int
		if err := p.PG.QueryRow(ctx, purgedServers).Scan(&purged); err != nil {
			return fmt.Errorf("count deleted servers: %w", err)
		}
		head, rest, offset, pages := recheckPage(purged, room, now)
		res.ServersRecheckTurns = pages
		if err := collect(p.PG.Query(ctx, recheckedServers, head, rest, offset)); err != nil {
			return err
		}
	}
	res.ServersDue = len(ids)
	if len(ids) == 0 {
		return nil
	}
	tables, err := p.tablesWith(ctx, "server_id")
	if err != nil {
		return err
	}
	// Tables keyed by customer first (all of Guardian's) are read and
	// mutated within the servers' customers: their primary key then skips
	// every other customer's data instead of scanning server_id over the
	// whole table. A server never changes customer, and its rows are
	// written with its own customer_id (ingest takes both from its key).
	byCustomer, err := p.customerTables(ctx)
	if err != nil {
		return err
	}
	narrow := map[string]string{}
	for _, table := range byCustomer {
		narrow[table] = withinCustomers(customers)
	}
	ready, waiting, err := p.deleteAndCheck(ctx, tables, "server_id", ids, narrow, res)
	if err != nil {
		return err
	}
	res.ServersWaiting = waiting
	if len(ready) > 0 {
		rows, err := p.PG.Query(ctx, markPurged, ready, serverSettle)
		if err != nil {
			return fmt.Errorf("record purged servers: %w", err)
		}
		if res.ServersPurged, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
			return fmt.Errorf("record purged servers: %w", err)
		}
		slices.Sort(res.ServersPurged)
	}
	if _, err := p.PG.Exec(ctx, forgetServers, KeptDeletions); err != nil {
		return fmt.Errorf("forget deleted servers: %w", err)
	}
	return nil
}

// recheckAccounts deletes again the ClickHouse rows of accounts deleted in
// the last 30 days (a page of them, recheckPage), should any have come back (a backup set restored
// after data loss, or a snapshot that landed after the purge). The rows
// are counted first, so a run with none issues no deletion.
func (p *Purger) recheckAccounts(ctx context.Context, now time.Time, res *Result) error {
	var total int
	if err := p.PG.QueryRow(ctx, deletedCount).Scan(&total); err != nil {
		return fmt.Errorf("count deleted accounts: %w", err)
	}
	head, rest, offset, pages := recheckPage(total, p.maxRechecked(), now)
	res.AccountsRecheckTurns = pages
	rows, err := p.PG.Query(ctx, deletedAccounts, head, rest, offset)
	if err != nil {
		return fmt.Errorf("read deleted accounts: %w", err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return fmt.Errorf("read deleted accounts: %w", err)
	}
	res.AccountsRechecked = len(ids)
	if len(ids) == 0 {
		return nil
	}
	tables, err := p.customerTables(ctx)
	if err != nil {
		return err
	}
	found := map[string]bool{}
	for _, table := range tables {
		counts, err := p.count(ctx, table, "", "customer_id", ids)
		if err != nil {
			return fmt.Errorf("clickhouse %s: %w", table, err)
		}
		for id, n := range counts {
			if n > 0 {
				found[id] = true
			}
		}
	}
	if len(found) == 0 {
		return nil
	}
	again := slices.Sorted(maps.Keys(found))
	res.AccountsFoundAgain = again
	_, waiting, err := p.deleteAndCheck(ctx, tables, "customer_id", again, nil, res)
	if err != nil {
		return err
	}
	res.Waiting = append(res.Waiting, waiting...)
	return nil
}

// deleteAndCheck issues the deletions of ids' rows (values of col) in
// tables, waits for them (at most Wait), and splits ids into those with
// no row and no pending deletion left (ready) and the rest (waiting).
// narrow gives, per table, a condition (ending in AND) that every row of
// ids there meets, to let the table's primary key skip the rest; a table
// it does not name (or a nil map) has none.
func (p *Purger) deleteAndCheck(ctx context.Context, tables []string, col string, ids []string, narrow map[string]string, res *Result) (ready, waiting []string, err error) {
	for _, table := range tables {
		n, counted, err := p.deleteRows(ctx, table, narrow[table], col, ids)
		if err != nil {
			return nil, nil, fmt.Errorf("clickhouse %s: %w", table, err)
		}
		res.MutationsIssued += n
		res.RowsToDelete += counted
	}
	if err := p.waitMutations(ctx, tables, ids); err != nil {
		return nil, nil, err
	}
	left := map[string]bool{}
	for _, table := range tables {
		pending, err := p.pendingFor(ctx, table, ids)
		if err != nil {
			return nil, nil, fmt.Errorf("clickhouse %s: %w", table, err)
		}
		counts, err := p.count(ctx, table, narrow[table], col, ids)
		if err != nil {
			return nil, nil, fmt.Errorf("clickhouse %s: %w", table, err)
		}
		for _, id := range ids {
			if pending[id] || counts[id] > 0 {
				left[id] = true
			}
		}
	}
	for _, id := range ids {
		if left[id] {
			waiting = append(waiting, id)
		} else {
			ready = append(ready, id)
		}
	}
	return ready, waiting, nil
}

// customerTables lists the MergeTree tables of the database with a
// customer_id column: every table that holds customer data, those added
// later included.
func (p *Purger) customerTables(ctx context.Context) ([]string, error) {
	return p.tablesWith(ctx, "customer_id")
}

// tablesWith lists the MergeTree tables of the database with column col.
func (p *Purger) tablesWith(ctx context.Context, col string) ([]string, error) {
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
	rows, err = p.CH.Query(ctx, "SELECT table FROM system.columns WHERE database = ? AND name = ?", p.Database, col)
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
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("clickhouse: list columns: %w", err)
	}
	// None at all is a wrong database or one not migrated, never "nothing
	// to delete": the PostgreSQL rows, the only record of what is left to
	// purge, would go while the data stayed.
	if len(out) == 0 {
		return nil, fmt.Errorf("clickhouse: database %s holds no MergeTree table with a %s column (wrong GUARDIAN_CLICKHOUSE_DATABASE, or not migrated): nothing purged", p.Database, col)
	}
	slices.Sort(out)
	return out, nil
}

// deleteRows issues one mutation deleting the rows whose col (customer_id
// or server_id) is one of ids that has rows in table and is not named by
// a pending mutation already; narrow prefixes the condition. It returns
// the mutations issued (0 or 1) and the rows counted.
func (p *Purger) deleteRows(ctx context.Context, table, narrow, col string, ids []string) (int, uint64, error) {
	pending, err := p.pendingFor(ctx, table, ids)
	if err != nil {
		return 0, 0, err
	}
	counts, err := p.count(ctx, table, narrow, col, ids)
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
	q := fmt.Sprintf("ALTER TABLE %s.%s DELETE WHERE %s%s IN (%s)", p.Database, table, narrow, col, quoteList(doomed))
	if err := p.CH.Exec(ctx, q); err != nil {
		return 0, 0, fmt.Errorf("delete rows: %w", err)
	}
	return 1, n, nil
}

// count returns the rows per id of ids (values of col) in table, among
// the rows that meet narrow (a condition ending in AND, or "").
func (p *Purger) count(ctx context.Context, table, narrow, col string, ids []string) (map[string]uint64, error) {
	q := fmt.Sprintf("SELECT %s, count() FROM %s.%s WHERE %s%s IN (%s) GROUP BY %s", col, p.Database, table, narrow, col, quoteList(ids), col)
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

// withinCustomers is the condition (for deleteAndCheck's narrow) that a
// row belongs to one of customers.
func withinCustomers(customers []string) string {
	return "customer_id IN (" + quoteList(customers) + ") AND "
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
