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

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/glassmkr/guardian/shared/job"
	"github.com/glassmkr/guardian/shared/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

var pepper = []byte("account-purge-test-pepper-0123456789abcdef")

type fixture struct {
	pg *testenv.PG
	ch *testenv.CH
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{pg: testenv.Postgres(t), ch: testenv.ClickHouse(t)}
	// A table added later, with a customer_id column, is purged too.
	if err := f.ch.Conn.Exec(context.Background(), "CREATE TABLE "+f.ch.Database+".server_events (customer_id String, ts DateTime, what String) ENGINE = MergeTree ORDER BY (customer_id, ts)"); err != nil {
		t.Fatal(err)
	}
	return f
}

// roleDSN names the DSN of the job's own role (migration 0025) in
// testenv's FunctionDSNs.
const roleDSN = "GUARDIAN_PG_DSN_ACCOUNT_PURGE"

// role is a pool connected as the job's own role, closed when t ends.
func (f *fixture) role(t *testing.T) *pgxpool.Pool {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), f.pg.FunctionDSNs[roleDSN])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

var chTables = []string{"alert_history", "analyses", "notifications", "server_events", "snapshots"}

// customer makes a customer with an account key, a collector key, a
// session, an idempotency key, two audit rows and two rows in every
// ClickHouse table; deleteIn schedules its deletion relative to now
// (nil: not scheduled).
func (f *fixture) customer(t *testing.T, deleteIn *time.Duration) *testenv.Customer {
	t.Helper()
	ctx := context.Background()
	c := testenv.NewCustomer(t, f.pg.Owner, pepper, pepper)
	c.AccountKey(t, "admin")
	c.CollectorKey(t, c.ServerID)
	c.Session(t)
	if _, err := f.pg.Owner.Exec(ctx, "INSERT INTO idempotency_keys (customer_id, key, request_hash, server_id) VALUES ($1, 'k1', '\\x00', $2)", c.ID, c.ServerID); err != nil {
		t.Fatal(err)
	}
	// A place one of its keys was reported leaked at (secretscan).
	if _, err := f.pg.Owner.Exec(ctx, "INSERT INTO leak_places (key_id, place) SELECT id, sha256(convert_to($1::uuid::text, 'UTF8')) FROM api_keys WHERE customer_id = $1::uuid LIMIT 1", c.ID); err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		if _, err := f.pg.Owner.Exec(ctx, `INSERT INTO api_audit_log (customer_id, user_id, request_id, method, path, resource_type, resource_id, action, result, status_code)
VALUES ($1, $2, $3, 'DELETE', '/api/v1/account', 'customer', $4, 'delete', 'success', 202)`, c.ID, c.UserID, fmt.Sprintf("%s-%d", c.ID, i), c.ID); err != nil {
			t.Fatal(err)
		}
	}
	if deleteIn != nil {
		if _, err := f.pg.Owner.Exec(ctx, `UPDATE customers SET delete_after = now() + $2 * interval '1 second',
	deletion_requested_at = now() + $2 * interval '1 second' - interval '30 days' WHERE id = $1`, c.ID, deleteIn.Seconds()); err != nil {
			t.Fatal(err)
		}
	}
	now := time.Now()
	insert := func(q string, args ...any) {
		b, err := f.ch.Conn.PrepareBatch(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		for range 2 {
			if err := b.Append(args...); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.Send(); err != nil {
			t.Fatal(err)
		}
	}
	db := f.ch.Database
	insert("INSERT INTO "+db+".snapshots (customer_id, server_id, ts, retention_days, payload)", c.ID, c.ServerID, now, uint16(90), "{}")
	insert("INSERT INTO "+db+".alert_history (customer_id, server_id, ts, rule)", c.ID, c.ServerID, now, "disk")
	insert("INSERT INTO "+db+".analyses (customer_id, server_id, ts, body)", c.ID, c.ServerID, now, "ok")
	insert("INSERT INTO "+db+".notifications (customer_id, ts, body)", c.ID, now, "sent")
	insert("INSERT INTO "+db+".server_events (customer_id, ts, what)", c.ID, now, "enrolled")
	return c
}

// in is a deletion date relative to now (negative: passed).
func in(d time.Duration) *time.Duration { return &d }

// chRows counts the customer's rows in each ClickHouse table.
func (f *fixture) chRows(t *testing.T, id string) map[string]uint64 {
	t.Helper()
	out := map[string]uint64{}
	for _, table := range chTables {
		var n uint64
		if err := f.ch.Conn.QueryRow(context.Background(), "SELECT count() FROM "+f.ch.Database+"."+table+" WHERE customer_id = ?", id).Scan(&n); err != nil {
			t.Fatal(err)
		}
		out[table] = n
	}
	return out
}

func all(m map[string]uint64, want uint64) bool {
	for _, n := range m {
		if n != want {
			return false
		}
	}
	return len(m) > 0
}

// pgRows counts what PostgreSQL holds of the customer: its own row, and
// the rows of every table that refers to it.
func (f *fixture) pgRows(t *testing.T, c *testenv.Customer) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, q := range []struct{ name, sql string }{
		{"customers", "SELECT count(*) FROM customers WHERE id = $1"},
		{"users", "SELECT count(*) FROM users WHERE customer_id = $1"},
		{"sessions", "SELECT count(*) FROM sessions WHERE customer_id = $1"},
		{"servers", "SELECT count(*) FROM servers WHERE customer_id = $1"},
		{"api_keys", "SELECT count(*) FROM api_keys WHERE customer_id = $1"},
		{"idempotency_keys", "SELECT count(*) FROM idempotency_keys WHERE customer_id = $1"},
		{"leak_places", "SELECT count(*) FROM leak_places WHERE place = sha256(convert_to($1::text, 'UTF8'))"},
		{"audit_owned", "SELECT count(*) FROM api_audit_log WHERE customer_id = $1"},
		{"audit_orphaned", "SELECT count(*) FROM api_audit_log WHERE customer_id IS NULL AND resource_id = $1::text"},
	} {
		var n int
		if err := f.pg.Owner.QueryRow(context.Background(), q.sql, c.ID).Scan(&n); err != nil {
			t.Fatal(err)
		}
		out[q.name] = n
	}
	return out
}

var (
	untouchedPG = map[string]int{"customers": 1, "users": 1, "sessions": 1, "servers": 2, "api_keys": 2, "idempotency_keys": 1, "leak_places": 1, "audit_owned": 2, "audit_orphaned": 0}
	purgedPG    = map[string]int{"customers": 0, "users": 0, "sessions": 0, "servers": 0, "api_keys": 0, "idempotency_keys": 0, "leak_places": 0, "audit_owned": 0, "audit_orphaned": 2}
)

func equal(a, b map[string]int) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func (f *fixture) execute(t *testing.T, beforePG func([]string) error) (job.Result, map[string]any) {
	t.Helper()
	env := map[string]string{
		"GUARDIAN_PG_APP_DSN":          f.pg.FunctionDSNs[roleDSN],
		"GUARDIAN_CLICKHOUSE_ADDR":     f.ch.Addr,
		"GUARDIAN_CLICKHOUSE_USER":     f.ch.User,
		"GUARDIAN_CLICKHOUSE_PASSWORD": f.ch.Password,
		"GUARDIAN_CLICKHOUSE_DATABASE": f.ch.Database,
		EnvWait:                        "30s",
		job.EnvLockDir:                 t.TempDir(),
	}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	var out, errOut bytes.Buffer
	res := job.Execute(context.Background(), jobSpec(beforePG), lookup, &out, &errOut)
	var line map[string]any
	if err := json.Unmarshal(out.Bytes(), &line); err != nil {
		t.Fatalf("result line %q: %v", out.String(), err)
	}
	return res, line
}

// TestPurgeDeletesDueAccountsAndFinishesAfterACrash runs the job as
// deployed (its own role), stopped once between ClickHouse and
// PostgreSQL as a crash would stop it.
func TestPurgeDeletesDueAccountsAndFinishesAfterACrash(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	doomed := f.customer(t, in(-time.Hour))
	later := f.customer(t, in(10*24*time.Hour))
	other := f.customer(t, nil)

	crash := errors.New("simulated crash between ClickHouse and PostgreSQL")
	var told []string
	res, line := f.execute(t, func(ids []string) error { told = ids; return crash })
	if res.Status != job.StatusError || !slices.Equal(told, []string{doomed.ID}) {
		t.Fatalf("crashed run: %s %s, told %v", res.Status, res.Err, told)
	}
	if line["mutations_issued"] != float64(len(chTables)) || line["rows_to_delete"] != float64(2*len(chTables)) {
		t.Errorf("crashed run's line: %v", line)
	}
	if got := f.chRows(t, doomed.ID); !all(got, 0) {
		t.Errorf("ClickHouse rows of the due account after its ClickHouse step: %v", got)
	}
	if got := f.pgRows(t, doomed); !equal(got, untouchedPG) {
		t.Errorf("PostgreSQL after the crash: %v, want it untouched", got)
	}

	res, line = f.execute(t, nil)
	if res.Status != job.StatusOK {
		t.Fatalf("next run: %s %s", res.Status, res.Err)
	}
	if line["accounts_purged"] != 1.0 || line["mutations_issued"] != 0.0 || fmt.Sprint(line["purged_customer_ids"]) != fmt.Sprint([]string{doomed.ID}) {
		t.Errorf("next run's line: %v", line)
	}
	if got := f.pgRows(t, doomed); !equal(got, purgedPG) {
		t.Errorf("PostgreSQL after the purge: %v, want %v", got, purgedPG)
	}
	for _, c := range []*testenv.Customer{later, other} {
		if got := f.pgRows(t, c); !equal(got, untouchedPG) {
			t.Errorf("PostgreSQL of an account not due: %v", got)
		}
		if got := f.chRows(t, c.ID); !all(got, 2) {
			t.Errorf("ClickHouse of an account not due: %v", got)
		}
	}

	// A request of the account still in flight during the purge: its
	// audit row lands after the deletion, with the account's id, and the
	// next run forgets the id as the deletion forgot the others'.
	if _, err := f.pg.Owner.Exec(context.Background(), `INSERT INTO api_audit_log (customer_id, request_id, method, path, resource_type, resource_id, action, result, status_code)
VALUES ($1, $2, 'GET', '/api/v1/servers', 'customer', $3, 'list', 'success', 200)`, doomed.ID, doomed.ID+"-late", doomed.ID); err != nil {
		t.Fatal(err)
	}
	res, line = f.execute(t, nil)
	if res.Status != job.StatusOK || line["accounts_due"] != 0.0 || line["accounts_purged"] != 0.0 || line["audit_rows_anonymised"] != 1.0 {
		t.Errorf("a run with nothing due and one late audit row: %s %v", res.Status, line)
	}
	if got, want := f.pgRows(t, doomed), map[string]int{"customers": 0, "users": 0, "sessions": 0, "servers": 0, "api_keys": 0,
		"idempotency_keys": 0, "leak_places": 0, "audit_owned": 0, "audit_orphaned": 3}; !equal(got, want) {
		t.Errorf("PostgreSQL after the late row's run: %v, want %v", got, want)
	}
}

// TestPurgeWaitsForPendingDeletions holds one table's mutations and
// checks that PostgreSQL waits for them, no mutation is issued twice, a
// late purge is red, and the run after the mutation finishes.
func TestPurgeWaitsForPendingDeletions(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	table := f.ch.Database + ".snapshots"
	if err := f.ch.Conn.Exec(ctx, "SYSTEM STOP MERGES "+table); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.ch.Conn.Exec(context.Background(), "SYSTEM START MERGES "+table) })
	doomed := f.customer(t, in(-48*time.Hour))
	p := &Purger{PG: f.role(t), CH: f.ch.Conn, Database: f.ch.Database, MaxAccounts: 10, Wait: 300 * time.Millisecond, Poll: 50 * time.Millisecond, OverdueAfter: DefaultOverdueAfter}

	res, err := p.Run(ctx, time.Now())
	if !errors.Is(err, job.ErrRed) || res.Overdue != 1 || !slices.Equal(res.Waiting, []string{doomed.ID}) || len(res.Purged) != 0 || res.MutationsIssued != len(chTables) {
		t.Fatalf("run with snapshots held: %+v, %v", res, err)
	}
	if got := f.pgRows(t, doomed); !equal(got, untouchedPG) {
		t.Errorf("PostgreSQL while ClickHouse rows remain: %v", got)
	}
	res, err = p.Run(ctx, time.Now())
	if !errors.Is(err, job.ErrRed) || res.MutationsIssued != 0 || len(res.Purged) != 0 {
		t.Fatalf("second run while the mutation is pending: %+v, %v", res, err)
	}
	var n uint64
	if err := f.ch.Conn.QueryRow(ctx, "SELECT count() FROM system.mutations WHERE database = ? AND table = 'snapshots'", f.ch.Database).Scan(&n); err != nil || n != 1 {
		t.Fatalf("%d mutations on snapshots, want 1 (%v)", n, err)
	}

	if err := f.ch.Conn.Exec(ctx, "SYSTEM START MERGES "+table); err != nil {
		t.Fatal(err)
	}
	p.Wait = 30 * time.Second
	res, err = p.Run(ctx, time.Now())
	if err != nil || !slices.Equal(res.Purged, []string{doomed.ID}) || res.Overdue != 0 {
		t.Fatalf("run after the mutation could finish: %+v, %v", res, err)
	}
	if got := f.chRows(t, doomed.ID); !all(got, 0) {
		t.Errorf("ClickHouse rows after the purge: %v", got)
	}
	if got := f.pgRows(t, doomed); !equal(got, purgedPG) {
		t.Errorf("PostgreSQL after the purge: %v", got)
	}
}

// A database that holds no table with customer data (a wrong
// GUARDIAN_CLICKHOUSE_DATABASE, or one not migrated) is an error, not
// "nothing left to delete": the account stays in PostgreSQL, the only
// record of what is left to purge, with its ClickHouse rows.
func TestPurgeIntoADatabaseWithoutTablesPurgesNothing(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	doomed := f.customer(t, in(-48*time.Hour))
	p := &Purger{PG: f.role(t), CH: f.ch.Conn, Database: "system", MaxAccounts: 10, Wait: time.Second, Poll: 50 * time.Millisecond}
	res, err := p.Run(context.Background(), time.Now())
	if err == nil || !strings.Contains(err.Error(), "no MergeTree table") || len(res.Purged) != 0 {
		t.Fatalf("run against a database without tables: %+v, %v", res, err)
	}
	if got := f.pgRows(t, doomed); !equal(got, untouchedPG) {
		t.Errorf("PostgreSQL after the refused run: %v", got)
	}
	if got := f.chRows(t, doomed.ID); !all(got, 2) {
		t.Errorf("ClickHouse rows gone: %v", got)
	}
}

func TestPurgeBoundsEachRun(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	var ids []string
	for i := range 3 {
		ids = append(ids, f.customer(t, in(-time.Duration(3-i)*time.Hour)).ID)
	}
	p := &Purger{PG: f.role(t), CH: f.ch.Conn, Database: f.ch.Database, MaxAccounts: 2, Wait: 30 * time.Second, Poll: 50 * time.Millisecond}
	ctx := context.Background()
	res, err := p.Run(ctx, time.Now())
	if err != nil || res.Due != 3 || res.Remaining != 1 || !slices.Equal(res.Purged, sorted(ids[:2])) || res.MutationsIssued != len(chTables) {
		t.Fatalf("first run: %+v, %v", res, err)
	}
	res, err = p.Run(ctx, time.Now())
	if err != nil || res.Due != 1 || res.Remaining != 0 || !slices.Equal(res.Purged, ids[2:]) {
		t.Fatalf("second run: %+v, %v", res, err)
	}
	for _, id := range ids {
		if got := f.chRows(t, id); !all(got, 0) {
			t.Errorf("ClickHouse rows of %s: %v", id, got)
		}
	}
}

func sorted(s []string) []string { s = slices.Clone(s); slices.Sort(s); return s }

// TestPurgeDeletesTheRowsOfDeletedServers: a server deleted through the
// API (as functions/servers does: the servers row goes, deleted_servers
// records it) loses its ClickHouse rows at the next run, while the other
// servers of its account keep theirs, and the record is then forgotten.
func TestPurgeDeletesTheRowsOfDeletedServers(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	c := f.customer(t, nil)
	ctx := context.Background()
	var gone string
	if err := f.pg.Owner.QueryRow(ctx, "INSERT INTO servers (customer_id, name, hostname) VALUES ($1, 'old', 'old.example') RETURNING id::text", c.ID).Scan(&gone); err != nil {
		t.Fatal(err)
	}
	db := f.ch.Database
	now := time.Now()
	for _, ins := range []struct {
		q    string
		more []any
	}{
		{"INSERT INTO " + db + ".snapshots (customer_id, server_id, ts, retention_days, payload)", []any{uint16(90), "{}"}},
		{"INSERT INTO " + db + ".alert_history (customer_id, server_id, ts, rule)", []any{"disk"}},
		{"INSERT INTO " + db + ".analyses (customer_id, server_id, ts, body)", []any{"ok"}},
	} {
		b, err := f.ch.Conn.PrepareBatch(ctx, ins.q)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Append(append([]any{c.ID, gone, now}, ins.more...)...); err != nil {
			t.Fatal(err)
		}
		if err := b.Send(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := f.pg.Owner.Exec(ctx, `WITH d AS (DELETE FROM servers WHERE id = $1 RETURNING id, customer_id)
		INSERT INTO deleted_servers (server_id, customer_id) SELECT id, customer_id FROM d`, gone); err != nil {
		t.Fatal(err)
	}
	serverRows := func(id string) uint64 {
		var total uint64
		for _, table := range []string{"snapshots", "alert_history", "analyses"} {
			var n uint64
			if err := f.ch.Conn.QueryRow(ctx, "SELECT count() FROM "+db+"."+table+" WHERE server_id = ?", id).Scan(&n); err != nil {
				t.Fatal(err)
			}
			total += n
		}
		return total
	}
	if serverRows(gone) != 3 {
		t.Fatal("fixture: the deleted server has no rows")
	}
	res, line := f.execute(t, nil)
	// Deleted moments ago: its rows go, its record stays for snapshots
	// still on their way (serverSettle), to be deleted at the next run.
	if res.Status != job.StatusOK || line["servers_due"] != 1.0 || fmt.Sprint(line["purged_server_ids"]) != "[]" {
		t.Fatalf("run: %s %s %v", res.Status, res.Err, line)
	}
	if n := serverRows(gone); n != 0 {
		t.Errorf("%d rows of the deleted server remain", n)
	}
	// A snapshot that was on its way lands after the deletion.
	late, err := f.ch.Conn.PrepareBatch(ctx, "INSERT INTO "+db+".snapshots (customer_id, server_id, ts, retention_days, payload)")
	if err != nil {
		t.Fatal(err)
	}
	if err := late.Append(c.ID, gone, now, uint16(90), "{}"); err != nil {
		t.Fatal(err)
	}
	if err := late.Send(); err != nil {
		t.Fatal(err)
	}
	if _, err := f.pg.Owner.Exec(ctx, "UPDATE deleted_servers SET deleted_at = now() - $2::interval WHERE server_id = $1", gone, serverSettle+time.Minute); err != nil {
		t.Fatal(err)
	}
	res, line = f.execute(t, nil)
	if res.Status != job.StatusOK || line["servers_due"] != 1.0 || fmt.Sprint(line["purged_server_ids"]) != fmt.Sprint([]string{gone}) {
		t.Fatalf("second run: %s %s %v", res.Status, res.Err, line)
	}
	if n := serverRows(gone); n != 0 {
		t.Errorf("%d rows of the deleted server remain, the late snapshot's included", n)
	}
	if n := serverRows(c.ServerID); n != 6 {
		t.Errorf("the account's other server has %d rows, want its 6", n)
	}
	if got := f.chRows(t, c.ID); !all(got, 2) {
		t.Errorf("the account's rows: %v", got)
	}
	var purged int
	if err := f.pg.Owner.QueryRow(ctx, "SELECT count(*) FROM deleted_servers WHERE server_id = $1 AND purged_at IS NOT NULL", gone).Scan(&purged); err != nil || purged != 1 {
		t.Fatalf("deleted_servers holds %d purged records of the server (%v), want 1", purged, err)
	}
	// A backup set restored after data loss brings the server's rows
	// back: the next run deletes them again.
	restored, err := f.ch.Conn.PrepareBatch(ctx, "INSERT INTO "+db+".snapshots (customer_id, server_id, ts, retention_days, payload)")
	if err != nil {
		t.Fatal(err)
	}
	if err := restored.Append(c.ID, gone, now, uint16(90), "{}"); err != nil {
		t.Fatal(err)
	}
	if err := restored.Send(); err != nil {
		t.Fatal(err)
	}
	res, line = f.execute(t, nil)
	if res.Status != job.StatusOK || line["servers_due"] != 1.0 || line["servers_overdue"] != 0.0 {
		t.Fatalf("the run after a restore: %s %s %v", res.Status, res.Err, line)
	}
	if n := serverRows(gone); n != 0 {
		t.Errorf("%d restored rows of the deleted server remain", n)
	}
	if n := serverRows(c.ServerID); n != 6 {
		t.Errorf("the account's other server has %d rows after the restore's run, want its 6", n)
	}
	// Once no backup set can hold its rows, the server is forgotten.
	if _, err := f.pg.Owner.Exec(ctx, "UPDATE deleted_servers SET deleted_at = now() - $2::interval WHERE server_id = $1", gone, KeptDeletions+time.Minute); err != nil {
		t.Fatal(err)
	}
	if res, line = f.execute(t, nil); res.Status != job.StatusOK {
		t.Fatalf("the run after %s: %s %s %v", KeptDeletions, res.Status, res.Err, line)
	}
	var left int
	if err := f.pg.Owner.QueryRow(ctx, "SELECT count(*) FROM deleted_servers").Scan(&left); err != nil || left != 0 {
		t.Fatalf("deleted_servers holds %d records %s after the deletion (%v)", left, KeptDeletions, err)
	}
}

// A purged account's rows that come back (a backup set restored after
// data loss holds them) are deleted again at the next run, for as long as
// the deletion is remembered; the other accounts' rows stay.
func TestAPurgedAccountsRowsThatComeBackAreDeletedAgain(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	doomed := f.customer(t, in(-time.Hour))
	other := f.customer(t, nil)
	if res, line := f.execute(t, nil); res.Status != job.StatusOK || line["accounts_purged"] != 1.0 {
		t.Fatalf("the purge: %s %s %v", res.Status, res.Err, line)
	}
	if res, line := f.execute(t, nil); res.Status != job.StatusOK || line["accounts_rechecked"] != 1.0 || fmt.Sprint(line["accounts_found_again"]) != "[]" || line["mutations_issued"] != 0.0 {
		t.Fatalf("a run with nothing come back: %s %s %v", res.Status, res.Err, line)
	}
	ctx := context.Background()
	b, err := f.ch.Conn.PrepareBatch(ctx, "INSERT INTO "+f.ch.Database+".alert_history (customer_id, server_id, ts, rule)")
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Append(doomed.ID, doomed.ServerID, time.Now(), "disk"); err != nil {
		t.Fatal(err)
	}
	if err := b.Send(); err != nil {
		t.Fatal(err)
	}
	res, line := f.execute(t, nil)
	if res.Status != job.StatusOK || fmt.Sprint(line["accounts_found_again"]) != fmt.Sprint([]string{doomed.ID}) || line["mutations_issued"] != 1.0 {
		t.Fatalf("the run after the rows came back: %s %s %v", res.Status, res.Err, line)
	}
	if got := f.chRows(t, doomed.ID); !all(got, 0) {
		t.Errorf("the purged account's rows after the run: %v", got)
	}
	if got := f.chRows(t, other.ID); !all(got, 2) {
		t.Errorf("another account's rows: %v", got)
	}
}

// A deleted server's rows are counted within its customer: the primary
// key (customer_id first) skips other customers' rows instead of reading
// server_id across the whole table, and the count is the same.
func TestServerRowsAreCountedWithinTheirCustomer(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	db := f.ch.Database
	const mine, gone = "00000000-0000-4000-8000-000000000001", "00000000-0000-4000-8000-0000000000aa"
	// 3 rows of the deleted server, 200,000 of other customers' servers.
	if err := f.ch.Conn.Exec(ctx, "INSERT INTO "+db+".snapshots (customer_id, server_id, ts, retention_days, payload) SELECT '"+mine+"', '"+gone+"', now(), 90, '{}' FROM system.numbers LIMIT 3"); err != nil {
		t.Fatal(err)
	}
	if err := f.ch.Conn.Exec(ctx, "INSERT INTO "+db+".snapshots (customer_id, server_id, ts, retention_days, payload) SELECT concat('10000000-0000-4000-8000-', substring(toString(1000000000000 + number % 1000), 2, 12)), concat('20000000-0000-4000-8000-', substring(toString(1000000000000 + number % 5000), 2, 12)), now(), 90, '{}' FROM system.numbers LIMIT 200000"); err != nil {
		t.Fatal(err)
	}
	p := &Purger{CH: f.ch.Conn, Database: db}
	read := func(narrow string) (map[string]uint64, uint64) {
		var rows uint64
		pctx := clickhouse.Context(ctx, clickhouse.WithProgress(func(pr *clickhouse.Progress) { rows += pr.Rows }))
		counts, err := p.count(pctx, "snapshots", narrow, "server_id", []string{gone})
		if err != nil {
			t.Fatal(err)
		}
		return counts, rows
	}
	narrowed, narrowRead := read(withinCustomers([]string{mine}))
	whole, wholeRead := read("")
	if narrowed[gone] != 3 || whole[gone] != 3 {
		t.Fatalf("counts %v within the customer, %v over the table; want 3 rows", narrowed, whole)
	}
	if wholeRead < 200_000 || narrowRead > wholeRead/4 {
		t.Errorf("read %d rows within the customer and %d over the table; want a small fraction", narrowRead, wholeRead)
	}
	t.Logf("rows read: %d within the customer, %d over the table", narrowRead, wholeRead)
}

// Second-factor attempt counters name users and client addresses; once
// their window is long over they count nothing and go, so neither a
// deleted user's id nor an address stays for good.
func TestPurgeForgetsOldSecondFactorAttemptCounters(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	now := time.Now()
	if _, err := f.pg.Owner.Exec(ctx, `INSERT INTO mfa_attempts (scope, subject, window_start, attempts) VALUES
		('ip', '192.0.2.7', $1, 3), ('user', '00000000-0000-4000-8000-0000000000aa', $1, 5),
		('ip', '192.0.2.8', $2, 1)`, now.Add(-AttemptsKeptFor-time.Minute), now.Add(-time.Minute)); err != nil {
		t.Fatal(err)
	}
	p := &Purger{PG: f.role(t), CH: f.ch.Conn, Database: f.ch.Database, MaxAccounts: 10, Wait: time.Second, Poll: 50 * time.Millisecond}
	res, err := p.Run(ctx, now)
	if err != nil || res.MFAAttemptsForgotten != 2 {
		t.Fatalf("run: %+v, %v; want 2 counters forgotten", res, err)
	}
	var left []string
	rows, err := f.pg.Owner.Query(ctx, "SELECT subject FROM mfa_attempts")
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		left = append(left, s)
	}
	if !slices.Equal(left, []string{"192.0.2.8"}) {
		t.Fatalf("counters left: %v, want only the current one", left)
	}
}

// A deleted account's audit rows are anonymised in batches of their own
// before the account is deleted, so a large log cannot make the delete
// outrun the job's time and roll back at every run. The purge role may do
// that only to an account scheduled for deletion.
func TestPurgeAnonymisesTheAuditLogInBatches(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	doomed := f.customer(t, in(-time.Hour))
	live := f.customer(t, nil)
	if _, err := f.pg.Owner.Exec(ctx, `INSERT INTO api_audit_log (customer_id, request_id, method, path, action, result, status_code)
		SELECT $1::uuid, $1::text || '-more-' || g, 'GET', '/api/v1/keys', 'list', 'success', 200 FROM generate_series(1, 25) AS g`, doomed.ID); err != nil {
		t.Fatal(err)
	}
	p := &Purger{PG: f.role(t), CH: f.ch.Conn, Database: f.ch.Database, MaxAccounts: 10, Wait: 10 * time.Second, Poll: 50 * time.Millisecond, AuditBatch: 10}
	res, err := p.Run(ctx, time.Now())
	if err != nil || !slices.Equal(res.Purged, []string{doomed.ID}) || res.AuditRowsOfPurged != 27 {
		t.Fatalf("run: %+v, %v; want the account purged and its 27 audit rows anonymised before", res, err)
	}
	var owned, orphaned int
	if err := f.pg.Owner.QueryRow(ctx, "SELECT count(*) FILTER (WHERE customer_id = $1::uuid), count(*) FILTER (WHERE customer_id IS NULL AND (request_id LIKE $1::text || '%' OR resource_id = $1::text)) FROM api_audit_log", doomed.ID).Scan(&owned, &orphaned); err != nil {
		t.Fatal(err)
	}
	if owned != 0 || orphaned != 27 {
		t.Fatalf("after the purge: %d rows still owned, %d anonymised; want 0 and 27", owned, orphaned)
	}
	var n int64
	err = f.role(t).QueryRow(ctx, forgetAuditBatch, live.ID, 10).Scan(&n)
	if err == nil || !strings.Contains(err.Error(), "not due for deletion") {
		t.Fatalf("the purge role anonymised a live account's log: %d rows, %v", n, err)
	}
}

// An account due by the job's clock but not yet by PostgreSQL's (the
// job's clock ahead) is not taken at all: not its ClickHouse rows, nor
// its audit rows, nor the account. It is no error.
func TestAnAccountNotYetDueByPostgresWaits(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	soon := f.customer(t, in(time.Hour))
	p := &Purger{PG: f.role(t), CH: f.ch.Conn, Database: f.ch.Database, MaxAccounts: 10, Wait: 10 * time.Second, Poll: 50 * time.Millisecond}
	res, err := p.Run(ctx, time.Now().Add(2*time.Hour))
	if err != nil || len(res.Purged) != 0 || res.MutationsIssued != 0 {
		t.Fatalf("run with the job's clock ahead: %+v, %v; want the account untouched", res, err)
	}
	if got := f.pgRows(t, soon); got["customers"] != 1 || got["audit_owned"] != 2 {
		t.Fatalf("the account after the run: %v", got)
	}
	if got := f.chRows(t, soon.ID); !all(got, 2) {
		t.Fatalf("its ClickHouse rows after the run: %v", got)
	}
}

// A deleted server whose rows a deletion cannot remove (here: merges
// stopped, so the mutation stays pending) turns the run red once it is a
// day past its deletion, instead of waiting in silence run after run; the
// run after the deletion completes is green.
func TestAStuckServerDeletionIsRed(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	c := f.customer(t, nil)
	db := f.ch.Database
	table := db + ".snapshots"
	if err := f.ch.Conn.Exec(ctx, "SYSTEM STOP MERGES "+table); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.ch.Conn.Exec(context.Background(), "SYSTEM START MERGES "+table) })
	if _, err := f.pg.Owner.Exec(ctx, `WITH d AS (DELETE FROM servers WHERE id = $1 RETURNING id, customer_id)
		INSERT INTO deleted_servers (server_id, customer_id, deleted_at) SELECT id, customer_id, now() - interval '2 days' FROM d`, c.ServerID); err != nil {
		t.Fatal(err)
	}
	p := &Purger{PG: f.role(t), CH: f.ch.Conn, Database: db, MaxAccounts: 10, Wait: 300 * time.Millisecond, Poll: 50 * time.Millisecond, OverdueAfter: DefaultOverdueAfter}
	res, err := p.Run(ctx, time.Now())
	if !errors.Is(err, job.ErrRed) || !strings.Contains(err.Error(), "1 deleted servers") || res.ServersOverdue != 1 ||
		!slices.Equal(res.ServersWaiting, []string{c.ServerID}) || res.Overdue != 0 {
		t.Fatalf("a server's deletion held: %+v, %v", res, err)
	}
	if err := f.ch.Conn.Exec(ctx, "SYSTEM START MERGES "+table); err != nil {
		t.Fatal(err)
	}
	p.Wait = 30 * time.Second
	res, err = p.Run(ctx, time.Now())
	if err != nil || res.ServersOverdue != 0 || !slices.Equal(res.ServersPurged, []string{c.ServerID}) {
		t.Fatalf("the run after the deletion could finish: %+v, %v", res, err)
	}
}

// With more deleted servers remembered than a run handles, the purged ones
// are looked at again newest first: a restored set is the latest, and the
// rows it brings back are those of the servers deleted since it was made.
func TestRecentlyDeletedServersAreLookedAtAgainFirst(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	c := f.customer(t, nil)
	ctx := context.Background()
	if _, err := f.pg.Owner.Exec(ctx, `INSERT INTO deleted_servers (server_id, customer_id, deleted_at, purged_at)
		SELECT gen_random_uuid(), $1, now() - interval '2 days' - i * interval '1 minute', now() - interval '1 day'
		FROM generate_series(1, $2) i`, c.ID, maxServersPerRun); err != nil {
		t.Fatal(err)
	}
	// The server deleted an hour ago, purged, whose rows a restore brought back.
	if _, err := f.pg.Owner.Exec(ctx, `WITH d AS (DELETE FROM servers WHERE id = $1 RETURNING id, customer_id)
		INSERT INTO deleted_servers (server_id, customer_id, deleted_at, purged_at) SELECT id, customer_id, now() - interval '1 hour', now() - interval '50 minutes' FROM d`, c.ServerID); err != nil {
		t.Fatal(err)
	}
	res, line := f.execute(t, nil)
	if res.Status != job.StatusOK || line["servers_remaining"] != 0.0 || line["servers_overdue"] != 0.0 {
		t.Fatalf("run: %s %s %v", res.Status, res.Err, line)
	}
	var n uint64
	if err := f.ch.Conn.QueryRow(ctx, "SELECT count() FROM "+f.ch.Database+".snapshots WHERE server_id = ?", c.ServerID).Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d rows of the server deleted last remain (%v)", n, err)
	}
}

// More remembered deletions than a run looks at again are taken in turns,
// one page an hour: every deleted account whose rows a restored backup
// brought back is found within as many runs as there are pages, not only
// the newest page's.
func TestDeletedAccountsAreLookedAtAgainInTurns(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	var ids []string
	for range 3 {
		ids = append(ids, f.customer(t, in(-time.Hour)).ID)
	}
	p := &Purger{PG: f.role(t), CH: f.ch.Conn, Database: f.ch.Database, MaxAccounts: 10, MaxRechecked: 1, Wait: 30 * time.Second, Poll: 50 * time.Millisecond}
	ctx := context.Background()
	if res, err := p.Run(ctx, time.Now()); err != nil || len(res.Purged) != 3 {
		t.Fatalf("the purge: %+v, %v", res, err)
	}
	b, err := f.ch.Conn.PrepareBatch(ctx, "INSERT INTO "+f.ch.Database+".alert_history (customer_id, server_id, ts, rule)")
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if err := b.Append(id, id, time.Now(), "disk"); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Send(); err != nil {
		t.Fatal(err)
	}
	var found []string
	hour := time.Now().Truncate(time.Hour)
	for i := range 3 {
		res, err := p.Run(ctx, hour.Add(time.Duration(i)*time.Hour))
		if err != nil || res.AccountsRechecked != 1 || res.AccountsRecheckTurns != 3 || len(res.AccountsFoundAgain) != 1 {
			t.Fatalf("run %d: %+v, %v", i, res, err)
		}
		found = append(found, res.AccountsFoundAgain...)
	}
	if !slices.Equal(sorted(found), sorted(ids)) {
		t.Fatalf("found again %v in three runs, want each of %v", found, ids)
	}
	for _, id := range ids {
		if got := f.chRows(t, id); !all(got, 0) {
			t.Errorf("ClickHouse rows of %s: %v", id, got)
		}
	}
}

func TestRecheckPage(t *testing.T) {
	at := func(h int64) time.Time { return time.Unix(h*3600+59, 0) }
	for _, c := range []struct {
		total, size               int
		hour                      int64
		head, rest, offset, pages int
	}{
		{0, 1000, 7, 1000, 0, 0, 1},
		{1000, 1000, 7, 1000, 0, 0, 1},
		{1001, 1000, 8, 500, 500, 500, 2},   // 501 older: two pages; hour 8, the first
		{1001, 1000, 9, 500, 500, 1000, 2},  // hour 9: the second
		{2500, 1000, 10, 500, 500, 1500, 4}, // 2000 older: four pages
		{3, 1, 4, 0, 1, 1, 3},               // a bound of one: turns alone
		{3, 1, 5, 0, 1, 2, 3},
	} {
		head, rest, offset, pages := recheckPage(c.total, c.size, at(c.hour))
		if head != c.head || rest != c.rest || offset != c.offset || pages != c.pages {
			t.Errorf("recheckPage(%d, %d, hour %d) = %d, %d, %d, %d; want %d, %d, %d, %d",
				c.total, c.size, c.hour, head, rest, offset, pages, c.head, c.rest, c.offset, c.pages)
		}
	}
	// Consecutive hours cover every deletion.
	const total, size = 4321, 1000
	seen := make([]bool, total)
	for h := int64(100); h < 100+8; h++ {
		head, rest, offset, _ := recheckPage(total, size, at(h))
		for i := range head {
			seen[i] = true
		}
		for i := offset; i < min(offset+rest, total); i++ {
			seen[i] = true
		}
	}
	for i, ok := range seen {
		if !ok {
			t.Fatalf("deletion %d of %d not looked at in eight consecutive hours", i, total)
		}
	}
}
