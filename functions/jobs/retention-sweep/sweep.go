package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/glassmkr/guardian/shared/job"
	"github.com/glassmkr/guardian/shared/plan"
)

// Rule is the retention of one ClickHouse table. Every table the sweep
// knows has a DateTime column ts and daily partitions (see
// shared/migrate/clickhouse).
type Rule struct {
	// Table is the table's name in the Guardian database.
	Table string
	// Days is the longest any row is kept: a row whose ts is Days days
	// old or older is deleted, and a partition whose newest row is that
	// old is dropped whole.
	Days int
	// ByPlan marks a table whose rows carry their own retention_days
	// (fixed when stored, from the plan of the day) and a customer_id: a
	// row is kept for the shorter of retention_days and what the
	// customer's current plan keeps (PlanDays), never longer than Days.
	ByPlan bool
}

// Rules is the security posture's retention table. A table that does not
// exist (yet) in the database is reported as skipped.
var Rules = []Rule{
	{Table: "snapshots", Days: 90, ByPlan: true},
	{Table: "alert_history", Days: 365},
	{Table: "analyses", Days: 90},
	{Table: "notifications", Days: 90},
}

// PlanDays is how many days each plan keeps snapshots: the rule of
// shared/plan, which functions/ingest stamps into retention_days.
var PlanDays = plan.SnapshotDays()

// Defaults of the per-run bounds.
const (
	DefaultMaxDrops         = 100
	DefaultMaxMutations     = 4
	DefaultMaxPlanCustomers = 1000
	DefaultStuckAfter       = 24 * time.Hour
	DefaultBacklogRuns      = 7
)

// marker is a constant, always-true conjunct that every DELETE mutation of
// the sweep starts with. ClickHouse keeps a mutation's command text in
// system.mutations on every version, so the marker tells the sweep's
// pending mutations from anyone else's (account-purge's, an operator's).
const marker = "'guardian-retention-sweep' != ''"

const markerText = "guardian-retention-sweep"

// PlanLookup returns the current plan of each of the customers it knows.
type PlanLookup interface {
	Plans(ctx context.Context, customerIDs []string) (map[string]string, error)
}

// Sweeper enforces Rules on one ClickHouse database.
type Sweeper struct {
	CH       driver.Conn
	Database string
	Plans    PlanLookup
	Rules    []Rule
	PlanDays map[string]int
	// MaxDrops bounds the partitions dropped in one run, all tables
	// together; the rest are dropped by the next runs.
	MaxDrops int
	// MaxMutations bounds the DELETE mutations issued in one run (at
	// most one per table and run in any case).
	MaxMutations int
	// MaxPlanCustomers bounds the customers whose current plan shortens
	// their stored retention that one mutation names.
	MaxPlanCustomers int
	// StuckAfter: a sweep mutation pending for longer makes the run red.
	StuckAfter time.Duration
	// BacklogRuns: more whole expired partitions left than this many runs
	// drop at MaxDrops makes the run red, so a backlog the bound is too
	// low for is said, not left to grow run after run as "capped". Zero:
	// not checked.
	BacklogRuns int
	// MaxClockSkew: a run whose clock differs from ClickHouse's or
	// PostgreSQL's by more deletes nothing (clock.go). Zero: the clocks
	// are not compared (the data check still applies).
	MaxClockSkew time.Duration
	// PostgreSQLNow reads PostgreSQL's clock; nil: not compared.
	PostgreSQLNow func(context.Context) (time.Time, error)
}

// TableResult is what one run did to one table.
type TableResult struct {
	// Status: "absent" (no such table, skipped), "clean" (nothing
	// expired is left after this run except what a pending or issued
	// mutation deletes), "capped" (a per-run bound left work for the next
	// run), "failed" (an error stopped part of the work: see the error).
	Status string `json:"status"`
	// PartitionsDropped and RowsDropped: whole expired partitions dropped.
	PartitionsDropped int    `json:"partitions_dropped"`
	RowsDropped       uint64 `json:"rows_dropped"`
	// PartitionsRemaining: whole expired partitions left for the next run.
	PartitionsRemaining int `json:"partitions_remaining"`
	// BehindDays: how many days before the horizon the newest row of the
	// longest-expired partition left lies (0: none left).
	BehindDays int `json:"behind_days,omitempty"`
	// Mutation: "issued" this run, "pending" (an earlier sweep mutation
	// still runs, so none was issued), "capped" (expired rows wait for the
	// next run), or "" (no expired rows outside dropped partitions).
	Mutation string `json:"mutation,omitempty"`
	// RowsToDelete: expired rows counted in kept partitions; the issued
	// mutation deletes them, or the next run does.
	RowsToDelete uint64 `json:"rows_to_delete"`
	// PlanCustomers: customers whose current plan keeps less than their
	// rows' stored retention, named in this run's predicate;
	// PlanCustomersLeft: more of them, left for the next run.
	PlanCustomers     int `json:"plan_customers,omitempty"`
	PlanCustomersLeft int `json:"plan_customers_left,omitempty"`
	// StuckSince is set when the pending mutation is older than StuckAfter.
	StuckSince *time.Time `json:"stuck_since,omitempty"`
}

// Result is one run's outcome.
type Result struct {
	Tables map[string]*TableResult
	// Clock is what the run's clock was compared with before it deleted
	// anything; nil when the run stopped before.
	Clock *ClockCheck
}

// Totals are a run's counts over all tables.
type Totals struct {
	PartitionsDropped   int      `json:"partitions_dropped"`
	RowsDropped         uint64   `json:"rows_dropped"`
	PartitionsRemaining int      `json:"partitions_remaining"`
	MutationsIssued     int      `json:"mutations_issued"`
	MutationsPending    int      `json:"mutations_pending"`
	MutationsCapped     int      `json:"mutations_capped"`
	RowsToDelete        uint64   `json:"rows_to_delete"`
	TablesSkipped       []string `json:"tables_skipped"`
	MutationsStuck      []string `json:"mutations_stuck"`
}

// Totals sums the tables' counts.
func (r Result) Totals() Totals {
	t := Totals{TablesSkipped: []string{}, MutationsStuck: []string{}}
	for _, name := range slices.Sorted(maps.Keys(r.Tables)) {
		tr := r.Tables[name]
		t.PartitionsDropped += tr.PartitionsDropped
		t.RowsDropped += tr.RowsDropped
		t.PartitionsRemaining += tr.PartitionsRemaining
		t.RowsToDelete += tr.RowsToDelete
		switch tr.Mutation {
		case "issued":
			t.MutationsIssued++
		case "pending":
			t.MutationsPending++
		case "capped":
			t.MutationsCapped++
		}
		if tr.Status == "absent" {
			t.TablesSkipped = append(t.TablesSkipped, name)
		}
		if tr.StuckSince != nil {
			t.MutationsStuck = append(t.MutationsStuck, name)
		}
	}
	return t
}

// Report adds the run's facts to the job's result line: the totals as
// top-level members and the per-table details under "tables".
func (r Result) Report(rep *job.Report) {
	t := r.Totals()
	rep.Set("partitions_dropped", t.PartitionsDropped)
	rep.Set("rows_dropped", t.RowsDropped)
	rep.Set("partitions_remaining", t.PartitionsRemaining)
	rep.Set("mutations_issued", t.MutationsIssued)
	rep.Set("mutations_pending", t.MutationsPending)
	rep.Set("mutations_capped", t.MutationsCapped)
	rep.Set("rows_to_delete", t.RowsToDelete)
	rep.Set("tables_skipped", t.TablesSkipped)
	rep.Set("mutations_stuck", t.MutationsStuck)
	rep.Set("tables", r.Tables)
	if r.Clock != nil {
		rep.Set("clock", r.Clock)
	}
}

// Done reports whether the run left nothing for a next run: no bound
// was reached and no earlier mutation was still pending. (Mutations it
// issued finish on their own.)
func (r Result) Done() bool {
	if r.Clock != nil && r.Clock.Refused != "" {
		return false
	}
	for _, tr := range r.Tables {
		if tr.Status == "capped" || tr.Status == "failed" || tr.Mutation == "pending" {
			return false
		}
	}
	return true
}

var identRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,62}$`)

// Run sweeps every table once, as of now. First it checks now against
// the servers' clocks and the data (clock.go): a clock that cannot be
// trusted deletes nothing, and the error wraps job.ErrRed. Tables are
// handled in Rules order; within a table, whole expired partitions are
// dropped first (oldest first), then one DELETE mutation removes the
// expired rows of the partitions that are kept. It carries on past a
// failing table and returns the errors joined; a sweep mutation pending
// for longer than StuckAfter makes the error wrap job.ErrRed.
func (s *Sweeper) Run(ctx context.Context, now time.Time) (Result, error) {
	res := Result{Tables: map[string]*TableResult{}}
	if !identRE.MatchString(s.Database) {
		return res, fmt.Errorf("invalid ClickHouse database name %q", s.Database)
	}
	if s.MaxDrops < 0 || s.MaxMutations < 0 || s.MaxPlanCustomers < 0 {
		return res, errors.New("per-run bounds must not be negative")
	}
	// UTC: a retention day is 24 hours, as ingest and the rows' own
	// retention_days count it, never a calendar day of a zone with DST.
	now = now.UTC().Truncate(time.Second)
	cols, err := s.columns(ctx)
	if err != nil {
		return res, err
	}
	// No table of any rule is a wrong database or one not migrated, not a
	// clean run: retention would silently never be enforced.
	if !slices.ContainsFunc(s.Rules, func(r Rule) bool { _, ok := cols[r.Table]; return ok }) {
		return res, fmt.Errorf("clickhouse: database %s holds none of the tables retention applies to (wrong GUARDIAN_CLICKHOUSE_DATABASE, or not migrated)", s.Database)
	}
	clock, soft, err := s.checkClock(ctx, now, cols)
	res.Clock = &clock
	if err != nil {
		return res, errors.Join(err, soft)
	}
	b := &budget{drops: s.MaxDrops, mutations: s.MaxMutations}
	errs := []error{soft}
	for _, rule := range s.Rules {
		tr := &TableResult{Status: "clean"}
		res.Tables[rule.Table] = tr
		tc, ok := cols[rule.Table]
		if !ok {
			tr.Status = "absent"
			continue
		}
		if err := checkColumns(rule, tc); err != nil {
			tr.Status = "failed"
			errs = append(errs, err)
			continue
		}
		err := s.sweepTable(ctx, rule, now, b, tr)
		switch {
		case err != nil:
			tr.Status = "failed"
			errs = append(errs, fmt.Errorf("%s: %w", rule.Table, err))
		case tr.PartitionsRemaining > 0 || tr.Mutation == "capped" || tr.PlanCustomersLeft > 0:
			tr.Status = "capped"
		}
		if tr.StuckSince != nil {
			errs = append(errs, fmt.Errorf("%w: %s: a retention mutation has been pending since %s", job.ErrRed, rule.Table, tr.StuckSince.UTC().Format(time.RFC3339)))
		}
	}
	if left := res.Totals().PartitionsRemaining; s.BacklogRuns > 0 && left > s.BacklogRuns*s.MaxDrops {
		errs = append(errs, fmt.Errorf("%w: %d expired partitions are left, more than %d runs drop at %s=%d; raise it",
			job.ErrRed, left, s.BacklogRuns, EnvMaxDrops, s.MaxDrops))
	}
	return res, errors.Join(errs...)
}

type budget struct{ drops, mutations int }

// columns returns the columns of every table of the database.
func (s *Sweeper) columns(ctx context.Context) (map[string]map[string]bool, error) {
	rows, err := s.CH.Query(ctx, "SELECT table, name FROM system.columns WHERE database = ?", s.Database)
	if err != nil {
		return nil, fmt.Errorf("read system.columns: %w", err)
	}
	defer rows.Close()
	out := map[string]map[string]bool{}
	for rows.Next() {
		var table, name string
		if err := rows.Scan(&table, &name); err != nil {
			return nil, fmt.Errorf("read system.columns: %w", err)
		}
		if out[table] == nil {
			out[table] = map[string]bool{}
		}
		out[table][name] = true
	}
	return out, rows.Err()
}

func checkColumns(rule Rule, cols map[string]bool) error {
	need := []string{"ts"}
	if rule.ByPlan {
		need = append(need, "customer_id", "retention_days")
	}
	for _, c := range need {
		if !cols[c] {
			return fmt.Errorf("%s: no column %s: the retention rule does not fit the table", rule.Table, c)
		}
	}
	return nil
}

// partition is one partition's active parts, summed.
type partition struct {
	id      string
	maxTime time.Time // newest ts; the zero Unix time when unknown
	rows    uint64
}

const partitionsQuery = `SELECT partition_id, max(max_time), sum(rows) FROM system.parts
WHERE database = ? AND table = ? AND active GROUP BY partition_id ORDER BY partition_id`

var partitionIDRE = regexp.MustCompile(`^[0-9A-Za-z_-]{1,64}$`)

// expired reports whether p can go whole: every row of it is older than
// horizon, and no row ingest still accepts can be written to it now.
// ClickHouse keeps each part's min and max of the partition key's
// DateTime column (system.parts max_time, on 18.16 and later), so no data
// is read. But a newest row at or before the horizon is not enough: the
// partition of the horizon's own day (horizonDay, its YYYYMMDD id in
// ClickHouse's time zone) still takes a late snapshot stamped after the
// horizon, and dropping it would delete that row with the old ones. So a
// partition goes only when its day is before horizonDay; the horizon's
// day keeps its partition, and its expired rows go by the DELETE
// mutation. A partition that is empty (a mutation deleted all its rows)
// has no max_time; it goes once its day, read from its id with two days'
// margin for any server time zone, is past the horizon.
func (p partition) expired(horizon time.Time, horizonDay string) bool {
	day, err := time.Parse("20060102", p.id)
	if err != nil || len(p.id) != 8 {
		return false // not a daily partition: never dropped whole
	}
	if p.rows == 0 {
		return !day.AddDate(0, 0, 2).After(horizon)
	}
	return p.id < horizonDay && p.maxTime.Unix() > 0 && !p.maxTime.After(horizon)
}

func (s *Sweeper) sweepTable(ctx context.Context, rule Rule, now time.Time, b *budget, tr *TableResult) error {
	table := s.Database + "." + rule.Table
	horizon := now.AddDate(0, 0, -rule.Days)

	// 1. Whole partitions whose every row is expired, for everyone.
	rows, err := s.CH.Query(ctx, partitionsQuery, s.Database, rule.Table)
	if err != nil {
		return fmt.Errorf("read system.parts: %w", err)
	}
	var parts []partition
	for rows.Next() {
		var p partition
		if err := rows.Scan(&p.id, &p.maxTime, &p.rows); err != nil {
			rows.Close()
			return fmt.Errorf("read system.parts: %w", err)
		}
		parts = append(parts, p)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read system.parts: %w", err)
	}
	// The horizon's day by the partition key's expression, in the
	// server's time zone.
	var hd uint32
	if err := s.CH.QueryRow(ctx, fmt.Sprintf("SELECT toYYYYMMDD(toDateTime(%d))", horizon.Unix())).Scan(&hd); err != nil {
		return fmt.Errorf("the horizon's day: %w", err)
	}
	horizonDay := strconv.FormatUint(uint64(hd), 10)
	// floor: rows at or before it lie in expired partitions left for the
	// next run, which the mutation leaves alone (they go whole later).
	var floor time.Time
	for _, p := range parts {
		if !p.expired(horizon, horizonDay) || !partitionIDRE.MatchString(p.id) {
			continue
		}
		if b.drops == 0 {
			tr.PartitionsRemaining++
			if p.rows > 0 && p.maxTime.After(floor) {
				floor = p.maxTime
			}
			if p.rows > 0 {
				tr.BehindDays = max(tr.BehindDays, int(horizon.Sub(p.maxTime)/(24*time.Hour)))
			}
			continue
		}
		if err := s.CH.Exec(ctx, "ALTER TABLE "+table+" DROP PARTITION ID '"+p.id+"'"); err != nil {
			return fmt.Errorf("drop partition %s: %w", p.id, err)
		}
		b.drops--
		tr.PartitionsDropped++
		tr.RowsDropped += p.rows
	}

	// 2. Expired rows inside the partitions that are kept: one mutation,
	// unless an earlier one of ours is still at work.
	pending, since, err := s.pendingSweep(ctx, rule.Table)
	if err != nil {
		return err
	}
	if pending {
		tr.Mutation = "pending"
		if s.StuckAfter > 0 && now.Sub(since) > s.StuckAfter {
			tr.StuckSince = &since
		}
		return nil
	}
	// Without the plans (PostgreSQL down), the stored retention and the
	// longest one still apply; the run then fails, so it is noticed.
	var planErr error
	var byDays map[int][]string
	if rule.ByPlan {
		byDays, planErr = s.planCustomers(ctx, rule, now, floor, tr)
	}
	pred := predicate(rule, now, floor, byDays)
	var n uint64
	if err := s.CH.QueryRow(ctx, "SELECT count() FROM "+table+" WHERE "+pred).Scan(&n); err != nil {
		return errors.Join(planErr, fmt.Errorf("count expired rows: %w", err))
	}
	tr.RowsToDelete = n
	if n == 0 {
		return planErr
	}
	if b.mutations == 0 {
		tr.Mutation = "capped"
		return planErr
	}
	if err := s.CH.Exec(ctx, "ALTER TABLE "+table+" DELETE WHERE "+pred); err != nil {
		return errors.Join(planErr, fmt.Errorf("delete expired rows: %w", err))
	}
	b.mutations--
	tr.Mutation = "issued"
	return planErr
}

// pendingSweep reports whether a DELETE mutation of the sweep is still
// pending on table, and since when (the oldest). A pending one stands in
// for the mutation this run would issue: it deletes the rows that were
// expired when it was issued, and the rows that expired since are the
// next run's, so mutations never pile up behind a slow or failing one.
func (s *Sweeper) pendingSweep(ctx context.Context, table string) (bool, time.Time, error) {
	rows, err := s.CH.Query(ctx, "SELECT command, create_time FROM system.mutations WHERE database = ? AND table = ? AND is_done = 0", s.Database, table)
	if err != nil {
		return false, time.Time{}, fmt.Errorf("read system.mutations: %w", err)
	}
	defer rows.Close()
	var found bool
	var oldest time.Time
	for rows.Next() {
		var cmd string
		var at time.Time
		if err := rows.Scan(&cmd, &at); err != nil {
			return false, time.Time{}, fmt.Errorf("read system.mutations: %w", err)
		}
		if strings.Contains(cmd, markerText) && (!found || at.Before(oldest)) {
			found, oldest = true, at
		}
	}
	return found, oldest, rows.Err()
}

// planCustomers finds the customers with rows that their stored
// retention still keeps but that are older than the shortest plan
// retention, asks for their current plans, and groups those whose plan
// keeps less (a downgrade from Pro to Free) by that plan's days. Customers
// with no plan (unknown to PostgreSQL, e.g. deleted) keep their stored
// retention: absence is never a reason to delete.
func (s *Sweeper) planCustomers(ctx context.Context, rule Rule, now, floor time.Time, tr *TableResult) (map[int][]string, error) {
	minDays := rule.Days
	for _, d := range s.PlanDays {
		minDays = min(minDays, d)
	}
	if minDays >= rule.Days || s.Plans == nil {
		return nil, nil
	}
	q := fmt.Sprintf(`SELECT DISTINCT customer_id FROM %s.%s
WHERE ts <= toDateTime(%d) AND ts > toDateTime(%d) AND toUInt32(ts) + toUInt32(retention_days) * 86400 > %d`,
		s.Database, rule.Table, now.AddDate(0, 0, -minDays).Unix(), max(now.AddDate(0, 0, -rule.Days).Unix(), floor.Unix()), now.Unix())
	rows, err := s.CH.Query(ctx, q)
	if err != nil {
		return nil, fmt.Errorf("find customers past their plan's retention: %w", err)
	}
	var ids []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return nil, fmt.Errorf("find customers past their plan's retention: %w", err)
		}
		if uuidRE.MatchString(id) {
			ids = append(ids, id)
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("find customers past their plan's retention: %w", err)
	}
	slices.Sort(ids)
	var shorter []string
	days := map[string]int{}
	for chunk := range slices.Chunk(ids, 5000) {
		plans, err := s.Plans.Plans(ctx, chunk)
		if err != nil {
			return nil, fmt.Errorf("read plans: %w", err)
		}
		for _, id := range chunk {
			if d, ok := s.PlanDays[plans[id]]; ok && d < rule.Days {
				shorter = append(shorter, id)
				days[id] = d
			}
		}
	}
	if len(shorter) > s.MaxPlanCustomers {
		tr.PlanCustomersLeft = len(shorter) - s.MaxPlanCustomers
		shorter = shorter[:s.MaxPlanCustomers]
	}
	tr.PlanCustomers = len(shorter)
	out := map[int][]string{}
	for _, id := range shorter {
		out[days[id]] = append(out[days[id]], id)
	}
	return out, nil
}

var uuidRE = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)

// predicate is the WHERE of the count and of the DELETE mutation: rows
// expired as of now, outside the expired partitions left for the next
// run (ts > floor). Cut-offs are constants, so a mutation deletes what was
// expired when it was issued whenever it runs. Identifiers and values are
// the sweep's own or checked UUIDs: nothing from outside is spliced in.
func predicate(rule Rule, now, floor time.Time, byDays map[int][]string) string {
	var or []string
	or = append(or, fmt.Sprintf("ts <= toDateTime(%d)", now.AddDate(0, 0, -rule.Days).Unix()))
	if rule.ByPlan {
		// The row's own retention, as a TTL of ts + retention_days would.
		or = append(or, fmt.Sprintf("toUInt32(ts) + toUInt32(retention_days) * 86400 <= %d", now.Unix()))
		for _, d := range slices.Sorted(maps.Keys(byDays)) {
			or = append(or, fmt.Sprintf("(customer_id IN (%s) AND ts <= toDateTime(%d))", quoteList(byDays[d]), now.AddDate(0, 0, -d).Unix()))
		}
	}
	p := marker
	if !floor.IsZero() {
		p += fmt.Sprintf(" AND ts > toDateTime(%d)", floor.Unix())
	}
	return p + " AND (" + strings.Join(or, " OR ") + ")"
}

func quoteList(ids []string) string {
	q := make([]string, len(ids))
	for i, id := range ids {
		q[i] = "'" + id + "'"
	}
	return strings.Join(q, ", ")
}
