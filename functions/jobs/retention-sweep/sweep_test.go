package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/glassmkr/guardian/shared/job"
	"github.com/glassmkr/guardian/shared/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

const day = 24 * time.Hour

// fixture is a test's own PostgreSQL and ClickHouse databases with
// customers on each plan.
type fixture struct {
	pg *testenv.PG
	// plans reads plans as the job's own role (migration 0025).
	plans pgPlans
	ch    *testenv.CH
	now   time.Time
	// free and pro are on their plans since their first snapshot; down
	// moved from Pro to Free (its snapshots say 90 days), up from Free to
	// Pro (its snapshots say 7); ghost is unknown to PostgreSQL.
	free, pro, down, up, ghost string
}

// roleDSN names the DSN of the job's own role in testenv's FunctionDSNs.
const roleDSN = "GUARDIAN_PG_DSN_RETENTION_SWEEP"

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{pg: testenv.Postgres(t), ch: testenv.ClickHouse(t), now: time.Now().Truncate(time.Second)}
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, f.pg.FunctionDSNs[roleDSN])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	f.plans = pgPlans{pool}
	f.free = testenv.NewCustomer(t, f.pg.Owner, nil, nil).ID
	f.pro = testenv.NewCustomer(t, f.pg.Owner, nil, nil).ID
	f.down = testenv.NewCustomer(t, f.pg.Owner, nil, nil).ID
	f.up = testenv.NewCustomer(t, f.pg.Owner, nil, nil).ID
	f.ghost = "00000000-0000-4000-8000-000000000001"
	if _, err := f.pg.Owner.Exec(ctx, "UPDATE customers SET plan = 'pro' WHERE id = ANY($1::uuid[])", []string{f.pro, f.up}); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *fixture) sweeper(maxDrops, maxMutations int) *Sweeper {
	return &Sweeper{
		CH: f.ch.Conn, Database: f.ch.Database, Plans: f.plans,
		Rules: Rules, PlanDays: PlanDays,
		MaxDrops: maxDrops, MaxMutations: maxMutations,
		MaxPlanCustomers: DefaultMaxPlanCustomers, StuckAfter: DefaultStuckAfter,
		MaxClockSkew: DefaultMaxClockSkew, PostgreSQLNow: f.plans.Now,
	}
}

// movedClock is f.sweeper for a test that runs the sweep at a clock of its
// own, hours from the servers': their clocks are not compared with it.
func (f *fixture) movedClock(maxDrops, maxMutations int) *Sweeper {
	s := f.sweeper(maxDrops, maxMutations)
	s.MaxClockSkew = 0
	return s
}

// snapshot is a row of snapshots; its payload is its label.
type snapshot struct {
	customer  string
	retention uint16
	age       time.Duration
	label     string
}

func (f *fixture) insertSnapshots(t *testing.T, rows []snapshot) {
	t.Helper()
	ctx := context.Background()
	b, err := f.ch.Conn.PrepareBatch(ctx, "INSERT INTO "+f.ch.Database+".snapshots (customer_id, server_id, ts, received_at, collector_version, retention_days, payload)")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		ts := f.now.Add(-r.age)
		if err := b.Append(r.customer, "srv", ts, ts, "1.0", r.retention, r.label); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Send(); err != nil {
		t.Fatal(err)
	}
}

// insertAged writes one row per age into table, labelled by its age in
// the table's labelColumn.
func (f *fixture) insertAged(t *testing.T, table, labelColumn string, ages ...time.Duration) {
	t.Helper()
	ctx := context.Background()
	b, err := f.ch.Conn.PrepareBatch(ctx, fmt.Sprintf("INSERT INTO %s.%s (customer_id, ts, %s)", f.ch.Database, table, labelColumn))
	if err != nil {
		t.Fatal(err)
	}
	for _, age := range ages {
		if err := b.Append(f.free, f.now.Add(-age), age.String()); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Send(); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) labels(t *testing.T, table, labelColumn string) []string {
	t.Helper()
	rows, err := f.ch.Conn.Query(context.Background(), fmt.Sprintf("SELECT %s FROM %s.%s", labelColumn, f.ch.Database, table))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		out = append(out, s)
	}
	slices.Sort(out)
	return out
}

// waitMutations polls system.mutations until every mutation of the
// test's database is done.
func (f *fixture) waitMutations(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var n uint64
		if err := f.ch.Conn.QueryRow(context.Background(), "SELECT count() FROM system.mutations WHERE database = ? AND is_done = 0", f.ch.Database).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d mutations still pending after 30 s", n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (f *fixture) partitions(t *testing.T, table string) int {
	t.Helper()
	var n uint64
	if err := f.ch.Conn.QueryRow(context.Background(), "SELECT uniqExact(partition_id) FROM system.parts WHERE database = ? AND table = ? AND active AND rows > 0", f.ch.Database, table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return int(n)
}

// seed writes rows of every kind at ages on both sides of each retention,
// in partitions that are entirely expired, partly expired and kept.
func (f *fixture) seed(t *testing.T) {
	t.Helper()
	var rows []snapshot
	add := func(name, customer string, retention uint16, ages ...int) {
		for _, a := range ages {
			rows = append(rows, snapshot{customer, retention, time.Duration(a) * day, fmt.Sprintf("%s/%d", name, a)})
		}
	}
	add("free", f.free, 7, 1, 6, 8, 30, 100)
	add("pro", f.pro, 90, 1, 8, 30, 89, 91, 120)
	add("down", f.down, 90, 3, 10, 50)
	add("up", f.up, 7, 2, 10)
	add("ghost", f.ghost, 90, 5, 60, 95)
	f.insertSnapshots(t, rows)
	f.insertAged(t, "alert_history", "alert_id", 10*day, 364*day, 366*day, 400*day)
	// 90 days ± 1 hour: one partition or two, depending on the hour.
	f.insertAged(t, "analyses", "body", 10*day, 90*day-time.Hour, 90*day+time.Hour, 200*day)
}

var (
	wantSnapshots = []string{"down/3", "free/1", "free/6", "ghost/5", "ghost/60", "pro/1", "pro/30", "pro/8", "pro/89", "up/2"}
	wantAlerts    = []string{(10 * day).String(), (364 * day).String()}
	wantAnalyses  = []string{(10 * day).String(), (90*day - time.Hour).String()}
)

func (f *fixture) checkRows(t *testing.T) {
	t.Helper()
	if got := f.labels(t, "snapshots", "payload"); !slices.Equal(got, wantSnapshots) {
		t.Errorf("snapshots left: %v\nwant %v", got, wantSnapshots)
	}
	if got := f.labels(t, "alert_history", "alert_id"); !slices.Equal(got, sorted(wantAlerts)) {
		t.Errorf("alert_history left: %v\nwant %v", got, sorted(wantAlerts))
	}
	if got := f.labels(t, "analyses", "body"); !slices.Equal(got, sorted(wantAnalyses)) {
		t.Errorf("analyses left: %v\nwant %v", got, sorted(wantAnalyses))
	}
}

func sorted(s []string) []string { s = slices.Clone(s); slices.Sort(s); return s }

func TestSweepKeepsExactlyTheRightRowsAndIsIdempotent(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	// A table the schema may not have yet is skipped, not an error.
	if err := f.ch.Conn.Exec(ctx, "DROP TABLE "+f.ch.Database+".notifications"); err != nil {
		t.Fatal(err)
	}
	f.seed(t)
	s := f.sweeper(DefaultMaxDrops, DefaultMaxMutations)

	res, err := s.Run(ctx, f.now)
	if err != nil {
		t.Fatal(err)
	}
	tot := res.Totals()
	if snap := res.Tables["snapshots"]; snap.PartitionsDropped != 4 || snap.RowsDropped != 4 || snap.Mutation != "issued" || snap.PlanCustomers != 1 {
		t.Errorf("snapshots: %+v, want 4 partitions (pro/91, ghost/95, free/100, pro/120) dropped, a mutation naming the downgraded customer", *snap)
	}
	if a := res.Tables["alert_history"]; a.PartitionsDropped != 2 || a.Mutation != "" || a.RowsToDelete != 0 {
		t.Errorf("alert_history: %+v, want 2 partitions dropped and no mutation", *a)
	}
	if !slices.Equal(tot.TablesSkipped, []string{"notifications"}) || res.Tables["notifications"].Status != "absent" {
		t.Errorf("skipped %v, want [notifications]", tot.TablesSkipped)
	}
	if tot.PartitionsRemaining != 0 || !res.Done() {
		t.Errorf("work left after an unbounded run: %+v", tot)
	}
	// free/8, free/30, down/10, down/50, up/10 and maybe analyses' 90 d + 1 h.
	if tot.RowsToDelete < 5 || tot.RowsToDelete > 6 {
		t.Errorf("rows_to_delete %d, want 5 or 6", tot.RowsToDelete)
	}
	f.waitMutations(t)
	f.checkRows(t)

	// Again, at once and a minute later: nothing to do, nothing changes.
	for _, at := range []time.Time{f.now, f.now.Add(time.Minute)} {
		res, err = s.Run(ctx, at)
		if err != nil {
			t.Fatal(err)
		}
		if tot := res.Totals(); tot.PartitionsDropped != 0 || tot.MutationsIssued != 0 || tot.RowsToDelete != 0 || !res.Done() {
			t.Errorf("second run did work: %+v", tot)
		}
		f.checkRows(t)
	}
}

// A database holding none of the rules' tables (a wrong database, or not
// migrated) is an error, not a clean run that enforces nothing.
func TestSweepOfADatabaseWithoutTheTablesFails(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	s := f.sweeper(10, 10)
	s.Database = "system"
	if _, err := s.Run(context.Background(), f.now); err == nil || !strings.Contains(err.Error(), "none of the tables") {
		t.Fatalf("sweep of a database without the tables: %v", err)
	}
}

func TestSweepBoundsEachRunAndTheNextRunsFinish(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	f.seed(t)
	s := f.sweeper(1, 1)

	res, err := s.Run(ctx, f.now)
	if err != nil {
		t.Fatal(err)
	}
	tot := res.Totals()
	if tot.PartitionsDropped != 1 || tot.MutationsIssued != 1 || tot.PartitionsRemaining == 0 || res.Done() {
		t.Fatalf("first bounded run: %+v", tot)
	}
	if res.Tables["snapshots"].Status != "capped" || res.Tables["alert_history"].PartitionsRemaining != 2 {
		t.Errorf("tables: snapshots %+v, alert_history %+v", *res.Tables["snapshots"], *res.Tables["alert_history"])
	}
	f.waitMutations(t)
	// The oldest expired partition went; the mutation left the three that
	// wait to be dropped alone.
	if got := f.labels(t, "snapshots", "payload"); slices.Contains(got, "pro/120") || !slices.Contains(got, "free/100") || !slices.Contains(got, "ghost/95") || !slices.Contains(got, "pro/91") {
		t.Errorf("snapshots after the bounded run: %v", got)
	}

	runs := 1
	for !res.Done() {
		if runs++; runs > 20 {
			t.Fatal("still not done after 20 bounded runs")
		}
		if res, err = s.Run(ctx, f.now); err != nil {
			t.Fatal(err)
		}
		if tot := res.Totals(); tot.PartitionsDropped > 1 || tot.MutationsIssued > 1 {
			t.Fatalf("run %d exceeded its bounds: %+v", runs, tot)
		}
		f.waitMutations(t)
	}
	f.checkRows(t)
	if n := f.partitions(t, "alert_history"); n != 2 {
		t.Errorf("alert_history has %d partitions with rows, want 2", n)
	}
	res, err = s.Run(ctx, f.now)
	if tot := res.Totals(); err != nil || tot.PartitionsDropped+tot.MutationsIssued != 0 {
		t.Errorf("a run after the backlog did work: %+v, %v", tot, err)
	}
}

func TestSweepIssuesNoSecondMutationWhileOneIsPending(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	table := f.ch.Database + ".snapshots"
	// Stopped merges hold mutations too, on this test's table only.
	if err := f.ch.Conn.Exec(ctx, "SYSTEM STOP MERGES "+table); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.ch.Conn.Exec(context.Background(), "SYSTEM START MERGES "+table) })
	f.insertSnapshots(t, []snapshot{
		{f.free, 7, 1 * day, "free/1"}, {f.free, 7, 8 * day, "free/8"}, {f.free, 7, 9 * day, "free/9"},
	})
	s := f.movedClock(DefaultMaxDrops, DefaultMaxMutations)
	res, err := s.Run(ctx, f.now)
	if err != nil || res.Tables["snapshots"].Mutation != "issued" {
		t.Fatalf("first run: %+v, %v", *res.Tables["snapshots"], err)
	}
	res, err = s.Run(ctx, f.now.Add(time.Hour))
	if err != nil || res.Tables["snapshots"].Mutation != "pending" || res.Totals().MutationsIssued != 0 {
		t.Fatalf("second run while the first mutation is pending: %+v, %v", *res.Tables["snapshots"], err)
	}
	var n uint64
	if err := f.ch.Conn.QueryRow(ctx, "SELECT count() FROM system.mutations WHERE database = ? AND table = 'snapshots'", f.ch.Database).Scan(&n); err != nil || n != 1 {
		t.Fatalf("%d mutations on snapshots, want 1 (%v)", n, err)
	}
	// One pending for longer than StuckAfter turns the run red.
	s.StuckAfter = time.Minute
	res, err = s.Run(ctx, f.now.Add(2*time.Hour))
	if !errors.Is(err, job.ErrRed) || !slices.Equal(res.Totals().MutationsStuck, []string{"snapshots"}) {
		t.Fatalf("stuck mutation: %+v, %v", res.Totals(), err)
	}
	if err := f.ch.Conn.Exec(ctx, "SYSTEM START MERGES "+table); err != nil {
		t.Fatal(err)
	}
	f.waitMutations(t)
	if got := f.labels(t, "snapshots", "payload"); !slices.Equal(got, []string{"free/1"}) {
		t.Errorf("snapshots left: %v", got)
	}
	res, err = s.Run(ctx, f.now.Add(2*time.Hour))
	if err != nil || res.Totals().MutationsIssued != 0 || !res.Done() {
		t.Errorf("run after the mutation finished: %+v, %v", res.Totals(), err)
	}
}

func TestJobPrintsCountsInItsResultLine(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.seed(t)
	env := map[string]string{
		"GUARDIAN_PG_APP_DSN":          f.pg.FunctionDSNs[roleDSN],
		"GUARDIAN_CLICKHOUSE_ADDR":     f.ch.Addr,
		"GUARDIAN_CLICKHOUSE_USER":     f.ch.User,
		"GUARDIAN_CLICKHOUSE_PASSWORD": f.ch.Password,
		"GUARDIAN_CLICKHOUSE_DATABASE": f.ch.Database,
		EnvMaxDrops:                    "3",
		job.EnvLockDir:                 t.TempDir(),
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	var out, errOut bytes.Buffer
	res := job.Execute(context.Background(), jobSpec(), lookup, &out, &errOut)
	if res.Status != job.StatusOK {
		t.Fatalf("status %s: %s\n%s", res.Status, res.Err, errOut.String())
	}
	var line map[string]any
	if err := json.Unmarshal(out.Bytes(), &line); err != nil {
		t.Fatalf("result line %q: %v", out.String(), err)
	}
	if line["job"] != "retention-sweep" || line["partitions_dropped"] != 3.0 || line["mutations_issued"].(float64) < 1 ||
		line["partitions_remaining"].(float64) < 1 || line["clickhouse_ttl"] == nil || line["tables"] == nil {
		t.Errorf("result line: %s", out.String())
	}
	// The job compares its clock with both servers' and the data.
	if clock, _ := line["clock"].(map[string]any); clock["clickhouse_now"] == nil || clock["postgresql_now"] == nil ||
		clock["newest_snapshot_received_at"] == nil || clock["refused"] != nil {
		t.Errorf("result line's clock: %v", line["clock"])
	}
	if strings.Contains(out.String()+errOut.String(), f.ch.Password) {
		t.Error("the result line shows the ClickHouse password")
	}
	f.waitMutations(t)
}

func TestPartitionExpiry(t *testing.T) {
	horizon := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	const horizonDay = "20260310"
	cases := []struct {
		name string
		p    partition
		want bool
	}{
		{"newest row before the horizon, an earlier day: expired", partition{"20260309", horizon.Add(-time.Hour), 5}, true},
		{"newest row at the horizon, an earlier day: expired", partition{"20260309", horizon, 5}, true},
		{"the horizon's own day is kept though every row is expired: a late snapshot may still come", partition{"20260310", horizon.Add(-time.Hour), 5}, false},
		{"a row after the horizon keeps the partition", partition{"20260309", horizon.Add(time.Second), 5}, false},
		{"unknown newest row keeps the partition", partition{"20260101", time.Unix(0, 0), 5}, false},
		{"a partition that is not a day is never dropped whole", partition{"202603", horizon.Add(-40 * 24 * time.Hour), 5}, false},
		{"empty partition two days past its day: expired", partition{"20260308", time.Unix(0, 0), 0}, true},
		{"empty partition of yesterday is kept (may be written now)", partition{"20260309", time.Unix(0, 0), 0}, false},
		{"empty partition with another id scheme is kept", partition{"all", time.Unix(0, 0), 0}, false},
	}
	for _, c := range cases {
		if got := c.p.expired(horizon, horizonDay); got != c.want {
			t.Errorf("%s: got %v", c.name, got)
		}
	}
}

// A partition whose rows are all expired, but whose day is the horizon's,
// is not dropped: ingest still accepts a snapshot stamped later that day,
// which a drop racing with its insert would delete. Its expired rows go by
// the mutation instead, and a row stamped after the horizon stays.
func TestSweepKeepsTheHorizonsDayPartition(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	// A clock whose 90-day horizon is noon of a day in ClickHouse's zone.
	var sod int64
	probe := f.now.AddDate(0, 0, -90).Unix()
	if err := f.ch.Conn.QueryRow(ctx, fmt.Sprintf("SELECT toInt64(toUnixTimestamp(toStartOfDay(toDateTime(%d))))", probe)).Scan(&sod); err != nil {
		t.Fatal(err)
	}
	horizon := time.Unix(sod, 0).Add(12 * time.Hour)
	f.now = horizon.AddDate(0, 0, 90)
	if !f.now.AddDate(0, 0, -90).Equal(horizon) {
		t.Fatalf("the clock's horizon is %v, want %v", f.now.AddDate(0, 0, -90), horizon)
	}
	f.insertAged(t, "analyses", "body", 90*day+time.Hour) // the horizon's day, before it
	res, err := f.movedClock(10, 10).Run(ctx, f.now)
	if err != nil {
		t.Fatal(err)
	}
	if tr := res.Tables["analyses"]; tr.PartitionsDropped != 0 || tr.RowsToDelete != 1 || tr.Mutation != "issued" {
		t.Fatalf("analyses: %+v; want the horizon's day kept and its expired row deleted by a mutation", *tr)
	}
	f.waitMutations(t)
	// The late snapshot of that day, stamped after the horizon, stays.
	f.insertAged(t, "analyses", "body", 90*day-time.Hour)
	if _, err := f.movedClock(10, 10).Run(ctx, f.now); err != nil {
		t.Fatal(err)
	}
	f.waitMutations(t)
	if got := f.labels(t, "analyses", "body"); !slices.Equal(got, []string{(90*day - time.Hour).String()}) {
		t.Fatalf("analyses left: %v", got)
	}
}

type failingPlans struct{}

func (failingPlans) Plans(context.Context, []string) (map[string]string, error) {
	return nil, errors.New("postgres is down")
}

func TestSweepWithoutPlansStillAppliesStoredRetention(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	f.seed(t)
	s := f.sweeper(DefaultMaxDrops, DefaultMaxMutations)
	s.Plans = failingPlans{}
	res, err := s.Run(ctx, f.now)
	if err == nil || errors.Is(err, job.ErrRed) || res.Tables["snapshots"].Status != "failed" || res.Tables["snapshots"].Mutation != "issued" {
		t.Fatalf("run without plans: %+v, %v", *res.Tables["snapshots"], err)
	}
	f.waitMutations(t)
	// Only the downgraded customer's rows, which need its plan, are left.
	want := sorted(append(slices.Clone(wantSnapshots), "down/10", "down/50"))
	if got := f.labels(t, "snapshots", "payload"); !slices.Equal(got, want) {
		t.Errorf("snapshots left: %v\nwant %v", got, want)
	}
	if got := f.labels(t, "alert_history", "alert_id"); !slices.Equal(got, sorted(wantAlerts)) {
		t.Errorf("alert_history left: %v", got)
	}
	s.Plans = f.plans
	if _, err := s.Run(ctx, f.now); err != nil {
		t.Fatal(err)
	}
	f.waitMutations(t)
	f.checkRows(t)
}

// A backlog of expired partitions more than BacklogRuns runs at MaxDrops
// can drop turns the run red (the bound is too low for the data), and
// says how far behind the oldest is; a backlog the next runs clear stays
// "capped", not red. A bound of 0, which would never delete, is refused.
func TestABacklogTheBoundCannotClearIsRed(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	f.seed(t)
	s := f.sweeper(1, 1)
	s.BacklogRuns = 1
	res, err := s.Run(context.Background(), f.now)
	left := res.Totals().PartitionsRemaining
	if left < 2 || !errors.Is(err, job.ErrRed) || !strings.Contains(err.Error(), EnvMaxDrops+"=1; raise it") {
		t.Fatalf("%d partitions left for a bound of 1 per run: %v", left, err)
	}
	if res.Tables["alert_history"].BehindDays < 30 {
		t.Errorf("alert_history: behind by %d days, want the 400-day-old partition's 35", res.Tables["alert_history"].BehindDays)
	}
	f.waitMutations(t)
	s = f.sweeper(1, 1)
	s.BacklogRuns = 100
	if _, err := s.Run(context.Background(), f.now); err != nil {
		t.Fatalf("a backlog the next runs clear: %v", err)
	}
	f.waitMutations(t)

	env := map[string]string{
		"GUARDIAN_PG_APP_DSN": f.pg.FunctionDSNs[roleDSN], "GUARDIAN_CLICKHOUSE_ADDR": f.ch.Addr,
		"GUARDIAN_CLICKHOUSE_DATABASE": f.ch.Database, EnvMaxDrops: "0", job.EnvLockDir: t.TempDir(),
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	var out, errOut bytes.Buffer
	if r := job.Execute(context.Background(), jobSpec(), lookup, &out, &errOut); r.Status != job.StatusError || !strings.Contains(fmt.Sprint(r.Err), "must be at least 1") {
		t.Fatalf("a bound of 0: %s %v", r.Status, r.Err)
	}
}
