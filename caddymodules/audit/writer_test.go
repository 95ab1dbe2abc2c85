package audit

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus/testutil"
	promtestutil "github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/glassmkr/guardian/shared/audit"
	"github.com/glassmkr/guardian/shared/identity"
	"github.com/glassmkr/guardian/shared/mono"
	"github.com/glassmkr/guardian/shared/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

// newWriter is a writer with one chain, so tests can point at a row by
// its place in the chain.
func newWriter(t testing.TB, dsn string, maxSpool int64) *Writer {
	t.Helper()
	w, err := NewWriter(WriterConfig{DSN: dsn, SpoolDir: filepath.Join(t.TempDir(), "spool"), MaxSpool: maxSpool, Chains: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close() })
	return w
}

func testRow(i int) *audit.Row {
	n := strconv.Itoa(i)
	return &audit.Row{
		OccurredAt: time.Now().UTC().Truncate(time.Microsecond), SourceIP: "203.0.113.9", UserAgent: "test",
		RequestID: identity.NewRequestID(), Method: "GET", Path: "/api/v1/whoami",
		Action: "read", Result: "success", StatusCode: 200, Metadata: `{"n":` + n + `}`,
	}
}

// recordFor records n rows of customer, one after another, and returns
// their request ids.
func recordFor(t *testing.T, w *Writer, customer string, n int) []string {
	t.Helper()
	var ids []string
	for i := range n {
		r := testRow(i)
		r.CustomerID = customer
		if err := w.Record(context.Background(), r); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, r.RequestID)
	}
	return ids
}

// recordAtOnce records n rows from n goroutines and fails t if any is
// refused.
func recordAtOnce(t *testing.T, w *Writer, n int) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- w.Record(context.Background(), testRow(i))
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatalf("a row was refused: %v", err)
		}
	}
}

func count(t *testing.T, db *pgxpool.Pool) int64 {
	t.Helper()
	var n int64
	if err := db.QueryRow(context.Background(), "SELECT count(*) FROM api_audit_log").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestConcurrentRowsAreGroupCommittedAndChained(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	w, err := NewWriter(WriterConfig{DSN: pg.AppDSN, SpoolDir: filepath.Join(t.TempDir(), "spool")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close() })
	const n = 2000
	recordAtOnce(t, w, n)
	if got := count(t, pg.Owner); got != n {
		t.Fatalf("%d rows, want %d", got, n)
	}
	var batches int64
	if err := pg.Owner.QueryRow(context.Background(), "SELECT count(DISTINCT xmin::text) FROM api_audit_log").Scan(&batches); err != nil {
		t.Fatal(err)
	}
	if batches >= n {
		t.Errorf("%d transactions for %d rows: no group commit", batches, n)
	}
	rep, err := audit.Verify(context.Background(), pg.Owner)
	if err != nil || !rep.OK() || rep.Rows != n || rep.Writers < 1 || rep.Writers > len(w.chains) {
		t.Fatalf("verify: %+v %v", rep, err)
	}
}

// Addresses PostgreSQL prints in another form than Go (an IPv4-compatible
// ::1.2.3.4) or cannot store as written (a zone) still verify.
func TestEveryAddressFormVerifies(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	w := newWriter(t, pg.AppDSN, 1<<20)
	ips := []string{"203.0.113.9", "::1.2.3.4", "::ffff:1.2.3.4", "::0.0.1.2", "::1", "2001:db8::1", "fe80::1%eth0", "2001:DB8:0:0:0:0:0:2"}
	for i, ip := range ips {
		r := testRow(i)
		r.SourceIP = audit.NormalizeIP(ip)
		if err := w.Record(context.Background(), r); err != nil {
			t.Fatalf("%s: %v", ip, err)
		}
	}
	rep, err := audit.Verify(context.Background(), pg.Owner)
	if err != nil || !rep.OK() || rep.Rows != int64(len(ips)) {
		t.Fatalf("verify: %+v %v", rep, err)
	}
}

// A value stored redacted is hashed as stored: writing anything over it
// (a secret, even) is an edit like any other.
func TestVerifyFindsAnEditOverARedactedValue(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	w := newWriter(t, pg.AppDSN, 1<<20)
	ctx := context.Background()
	r := testRow(1)
	r.Metadata = `{"new_password":"[redacted]"}`
	if err := w.Record(ctx, r); err != nil {
		t.Fatal(err)
	}
	if rep, err := audit.Verify(ctx, pg.Owner); err != nil || !rep.OK() {
		t.Fatalf("before: %+v %v", rep, err)
	}
	for _, stmt := range []string{
		"ALTER TABLE api_audit_log DISABLE TRIGGER api_audit_log_no_update_delete",
		`UPDATE api_audit_log SET metadata = '{"new_password":"hunter2-hunter2"}'`,
		"ALTER TABLE api_audit_log ENABLE TRIGGER api_audit_log_no_update_delete",
	} {
		if _, err := pg.Owner.Exec(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
	if rep, err := audit.Verify(ctx, pg.Owner); err != nil || rep.OK() || rep.Breaks[0].Reason != "content" {
		t.Fatalf("an edit over a redacted value not found: %+v %v", rep, err)
	}
}

func TestVerifyFindsAnEditedRowEvenByTheOwner(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	w := newWriter(t, pg.AppDSN, 1<<20)
	for i := range 20 {
		if err := w.Record(context.Background(), testRow(i)); err != nil {
			t.Fatal(err)
		}
	}
	ctx := context.Background()
	var victim int64
	if err := pg.Owner.QueryRow(ctx, "SELECT id FROM api_audit_log WHERE writer_seq = 7").Scan(&victim); err != nil {
		t.Fatal(err)
	}
	// A determined owner switches the append-only trigger off first.
	for _, stmt := range []string{
		"ALTER TABLE api_audit_log DISABLE TRIGGER api_audit_log_no_update_delete",
		fmt.Sprintf("UPDATE api_audit_log SET status_code = 500, result = 'error' WHERE id = %d", victim),
		"ALTER TABLE api_audit_log ENABLE TRIGGER api_audit_log_no_update_delete",
	} {
		if _, err := pg.Owner.Exec(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := audit.Verify(ctx, pg.Owner)
	if err != nil || rep.OK() || rep.Breaks[0].RowID != victim || rep.Breaks[0].Reason != "content" {
		t.Fatalf("edited row not found: %+v %v", rep, err)
	}

	// A deleted row shows as a gap.
	pg2 := testenv.Postgres(t)
	w2 := newWriter(t, pg2.AppDSN, 1<<20)
	for i := range 5 {
		_ = w2.Record(ctx, testRow(i))
	}
	for _, stmt := range []string{
		"ALTER TABLE api_audit_log DISABLE TRIGGER api_audit_log_no_update_delete",
		"DELETE FROM api_audit_log WHERE writer_seq = 3",
		"ALTER TABLE api_audit_log ENABLE TRIGGER api_audit_log_no_update_delete",
	} {
		if _, err := pg2.Owner.Exec(ctx, stmt); err != nil {
			t.Fatal(err)
		}
	}
	if rep, _ := audit.Verify(ctx, pg2.Owner); rep.OK() || rep.Breaks[0].Reason != "gap" || rep.Breaks[0].WriterSeq != 4 {
		t.Fatalf("deleted row not found: %+v", rep)
	}
}

// customer_id is outside the hash (deletion nulls it), but a row moved to
// another customer's log, or nulled while its customer still exists, is
// found through the hashed customer_digest.
func TestVerifyFindsARowMovedBetweenCustomers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, tc := range []struct {
		name, edit string
		reason     string
	}{
		{"moved to another customer", "UPDATE api_audit_log SET customer_id = $2 WHERE writer_seq = 2 AND customer_id = $1", "customer"},
		{"given to a customer", "UPDATE api_audit_log SET customer_id = $2 WHERE writer_seq = 4 AND customer_id IS NULL AND $1::uuid IS NOT NULL", "customer"},
		{"nulled while its customer exists", "UPDATE api_audit_log SET customer_id = NULL WHERE writer_seq = 2 AND customer_id = $1 AND $2::uuid IS NOT NULL", "customer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			pg := testenv.Postgres(t)
			a := testenv.NewCustomer(t, pg.Owner, []byte("p"), []byte("s"))
			b := testenv.NewCustomer(t, pg.Owner, []byte("p"), []byte("s"))
			w := newWriter(t, pg.AppDSN, 1<<20)
			for i := range 5 {
				r := testRow(i)
				if i < 3 {
					r.CustomerID = a.ID
				}
				if err := w.Record(ctx, r); err != nil {
					t.Fatal(err)
				}
			}
			if rep, err := audit.Verify(ctx, pg.Owner); err != nil || !rep.OK() {
				t.Fatalf("before: %+v %v", rep, err)
			}
			if _, err := pg.Owner.Exec(ctx, "ALTER TABLE api_audit_log DISABLE TRIGGER api_audit_log_no_update_delete"); err != nil {
				t.Fatal(err)
			}
			tag, err := pg.Owner.Exec(ctx, tc.edit, a.ID, b.ID)
			if err != nil || tag.RowsAffected() != 1 {
				t.Fatalf("edit: %v %v", tag, err)
			}
			rep, err := audit.Verify(ctx, pg.Owner)
			if err != nil || rep.OK() || rep.Breaks[0].Reason != tc.reason {
				t.Fatalf("not found: %+v %v", rep, err)
			}
		})
	}
}

// Rows written before customer_digest existed (no digest, the v1 hash)
// verify as they did.
func TestRowsWithoutACustomerDigestStillVerify(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	c := testenv.NewCustomer(t, pg.Owner, []byte("p"), []byte("s"))
	ctx := context.Background()
	var prev []byte
	for i := range 3 {
		r := testRow(i)
		r.CustomerID = c.ID
		r.WriterID, r.WriterSeq, r.PrevHash = "legacy", int64(i+1), prev
		r.RowHash = audit.Hash(r) // no CustomerDigest: the v1 hash
		prev = r.RowHash
		if _, err := pg.Owner.Exec(ctx, insertOne, values(r)...); err != nil {
			t.Fatal(err)
		}
	}
	if rep, err := audit.Verify(ctx, pg.Owner); err != nil || !rep.OK() || rep.Rows != 3 {
		t.Fatalf("legacy rows: %+v %v", rep, err)
	}
}

// Deleting a customer nulls its rows' customer_id and keeps the chain.
// Its rows carry a digest salted with the customer's own salt, deleted
// with it: afterwards the customer's id finds none of its rows, neither
// by customer_id nor by recomputing the digest.
func TestCustomerDeletionDoesNotBreakTheChain(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pg := testenv.Postgres(t)
	c := testenv.NewCustomer(t, pg.Owner, []byte("p"), []byte("s"))
	w := newWriter(t, pg.AppDSN, 1<<20)
	recordFor(t, w, c.ID, 3)
	var salt []byte
	if err := pg.Owner.QueryRow(ctx, "SELECT audit_salt FROM customers WHERE id = $1", c.ID).Scan(&salt); err != nil || len(salt) != 32 {
		t.Fatalf("salt %x: %v", salt, err)
	}
	var n int
	if err := pg.Owner.QueryRow(ctx, "SELECT count(*) FROM api_audit_log WHERE customer_digest = $1",
		audit.SaltedCustomerDigest(salt, c.ID)).Scan(&n); err != nil || n != 3 {
		t.Fatalf("%d rows with the salted digest (%v), want 3", n, err)
	}
	if _, err := pg.Owner.Exec(ctx, "DELETE FROM customers WHERE id = $1", c.ID); err != nil {
		t.Fatal(err)
	}
	if err := pg.Owner.QueryRow(ctx, "SELECT count(*) FROM api_audit_log WHERE customer_id = $1 OR customer_digest = $2",
		c.ID, audit.CustomerDigest(c.ID)).Scan(&n); err != nil || n != 0 {
		t.Fatalf("%d rows still found by the deleted customer's id (%v)", n, err)
	}
	if rep, err := audit.Verify(ctx, pg.Owner); err != nil || !rep.OK() || rep.Rows != 3 {
		t.Fatalf("after customer deletion: %+v %v", rep, err)
	}
}

// While the customers table cannot be read (locked by a migration here),
// one batch waits for a salt read and the next ones do not: their rows are
// kept with a digest verify does not check. Once reads work again, new
// rows get their salted digest.
func TestSaltReadsBackOffWhileTheyFail(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pg := testenv.Postgres(t)
	c := testenv.NewCustomer(t, pg.Owner, []byte("p"), []byte("s"))
	w := newWriter(t, pg.AppDSN, 1<<20)
	tx, err := pg.Owner.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "LOCK TABLE customers IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	ids := recordFor(t, w, c.ID, 3)
	if n := w.digests.reads.Load(); n != 1 {
		t.Fatalf("%d salt reads for three rows while they fail, want 1", n)
	}
	_ = tx.Rollback(ctx)
	var unknown int
	if err := pg.Owner.QueryRow(ctx, "SELECT count(*) FROM api_audit_log WHERE request_id = ANY($1) AND customer_digest = $2",
		ids, audit.UnknownCustomer).Scan(&unknown); err != nil || unknown != 3 {
		t.Fatalf("%d of 3 rows with the unknown digest (%v)", unknown, err)
	}
	w.digests.failedUntil.Store(0) // as saltRetry later
	r := testRow(9)
	r.CustomerID = c.ID
	if err := w.Record(ctx, r); err != nil {
		t.Fatal(err)
	}
	var digest []byte
	if err := pg.Owner.QueryRow(ctx, "SELECT customer_digest FROM api_audit_log WHERE request_id = $1", r.RequestID).Scan(&digest); err != nil || len(digest) != 33 {
		t.Fatalf("after the lock: digest %x (%v), want a salted one", digest, err)
	}
	if rep, err := audit.Verify(ctx, pg.Owner); err != nil || !rep.OK() {
		t.Fatalf("verify: %+v %v", rep, err)
	}
}

// customerWithARow makes a customer and records one row of it.
func customerWithARow(t *testing.T, pg *testenv.PG) *testenv.Customer {
	t.Helper()
	c := testenv.NewCustomer(t, pg.Owner, []byte("p"), []byte("s"))
	r := testRow(1)
	r.CustomerID = c.ID
	if err := newWriter(t, pg.AppDSN, 1<<20).Record(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	return c
}

// A customer deleted while verify runs, between its two reads: in a
// snapshot both reads see the same moment; without one, the customer's
// freshly nulled rows would look moved.
func TestVerifyInASnapshotIsNotFooledByADeletionMeanwhile(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, snapshot := range []bool{false, true} {
		pg := testenv.Postgres(t)
		c := customerWithARow(t, pg)
		app := pg.Owner
		var db audit.Querier = pg.Owner
		if snapshot {
			tx, err := audit.Snapshot(ctx, pg.Owner)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = tx.Rollback(ctx) }()
			db = tx
		}
		rep, err := audit.Verify(ctx, &afterFirstQuery{Querier: db, do: func() {
			if _, err := app.Exec(ctx, "DELETE FROM customers WHERE id = $1", c.ID); err != nil {
				t.Error(err)
			}
		}})
		if err != nil || rep.OK() != snapshot {
			t.Fatalf("snapshot %v: %+v %v", snapshot, rep, err)
		}
	}
}

// Verify reads the customers of its snapshot in a transaction of their
// own that ends at once: the walk holds no lock on customers, so a
// migration of customers need not wait for it. Both still see one moment.
func TestVerifyWalkHoldsNoLockOnCustomers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pg := testenv.Postgres(t)
	c := customerWithARow(t, pg)
	tx, err := audit.Snapshot(ctx, pg.Owner)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	customers, err := audit.CustomersAsOf(ctx, tx, pg.Owner)
	if err != nil {
		t.Fatal(err)
	}
	// Deleted after the customers were read and before the walk: the
	// walk sees the moment the customers were read in, so the row is not
	// yet nulled (it would look moved otherwise).
	if _, err := pg.Owner.Exec(ctx, "DELETE FROM customers WHERE id = $1", c.ID); err != nil {
		t.Fatal(err)
	}
	rep, err := audit.VerifyWith(ctx, tx, customers, nil)
	if err != nil || !rep.OK() || rep.Rows != 1 {
		t.Fatalf("verify: %+v %v", rep, err)
	}
	// While the walk's transaction is open, customers can be locked
	// exclusively, as ALTER TABLE does.
	lock, err := pg.Owner.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = lock.Rollback(ctx) }()
	if _, err := lock.Exec(ctx, "SET LOCAL lock_timeout = '5s'"); err != nil {
		t.Fatal(err)
	}
	if _, err := lock.Exec(ctx, "LOCK TABLE customers IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatalf("customers cannot be locked while verify walks: %v", err)
	}
}

// afterFirstQuery runs do before its second query: after verify has read
// the customers, before it reads the rows.
type afterFirstQuery struct {
	audit.Querier
	do      func()
	queries int
}

func (q *afterFirstQuery) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error) {
	if q.queries++; q.queries == 2 {
		q.do()
	}
	return q.Querier.Query(ctx, sql, args...)
}

// A row of a customer whose salt cannot be read (the customer is gone, or
// PostgreSQL is) is kept, with a digest that verify does not check.
func TestRowOfAnUnknownCustomerIsKept(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	pg := testenv.Postgres(t)
	w := newWriter(t, pg.AppDSN, 1<<20)
	r := testRow(1)
	r.CustomerID = "0c0c0c0c-0000-4000-8000-000000000000" // deleted before its row was written
	if err := w.Record(ctx, r); err != nil {
		t.Fatal(err)
	}
	var digest []byte
	if err := pg.Owner.QueryRow(ctx, "SELECT customer_digest FROM api_audit_log WHERE request_id = $1", r.RequestID).Scan(&digest); err != nil ||
		!bytes.Equal(digest, audit.UnknownCustomer) {
		t.Fatalf("digest %x (%v), want the unknown customer's", digest, err)
	}
	if rep, err := audit.Verify(ctx, pg.Owner); err != nil || !rep.OK() || rep.Rows != 1 {
		t.Fatalf("verify: %+v %v", rep, err)
	}
}

// privatePostgres starts a PostgreSQL of the test's own, migrated, so the
// test may stop it.
func privatePostgres(t *testing.T) (appDSN string, owner *pgxpool.Pool, dir string) {
	t.Helper()
	env, dir, owner := testenv.PrivatePostgres(t)
	return env["GUARDIAN_PG_APP_DSN"], owner, dir
}

func TestPostgresOutageSpoolsAndReplaysExactlyOnce(t *testing.T) {
	t.Parallel()
	appDSN, owner, dir := privatePostgres(t)
	w := newWriter(t, appDSN, 64<<20)
	ctx := context.Background()
	const before, during, after = 50, 200, 50
	i := 0
	record := func(n int) {
		for range n {
			if err := w.Record(ctx, testRow(i)); err != nil {
				t.Fatalf("row %d: %v", i, err)
			}
			i++
		}
	}
	record(before)
	if err := testenv.Stop(dir, "postgres"); err != nil {
		t.Fatal(err)
	}
	record(during) // every one durable in the spool, each answered
	if w.spool.empty() {
		t.Fatal("nothing was spooled while PostgreSQL was down")
	}
	if _, err := testenv.Start(dir, "postgres"); err != nil {
		t.Fatal(err)
	}
	owner.Reset() // its connections died with the server
	record(after) // queued behind the spool until it is replayed
	deadline := time.Now().Add(30 * time.Second)
	for !w.spool.empty() || w.spool.isSpooling() {
		if time.Now().After(deadline) {
			t.Fatal("spool never drained")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := count(t, owner); got != before+during+after {
		t.Fatalf("%d rows, want exactly %d", got, before+during+after)
	}
	if rep, err := audit.Verify(ctx, owner); err != nil || !rep.OK() {
		t.Fatalf("chain after replay: %+v %v", rep, err)
	}
}

func TestReplayOfAlreadyStoredRowsAddsNothing(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	w := newWriter(t, pg.AppDSN, 1<<20)
	rows := []*audit.Row{testRow(1), testRow(2)}
	for _, r := range rows {
		if err := w.Record(context.Background(), r); err != nil {
			t.Fatal(err)
		}
	}
	// As if the process died after the commit but before the segment was
	// removed: the same rows are in the spool again, beside one that was
	// never stored. The replay's COPY of the three fails on the first
	// two; the row-by-row insert that follows keeps the third.
	fresh := testRow(3)
	(&chain{id: "replay-test"}).link(fresh)
	w.spool.startSpooling()
	if err := w.spool.append(append(rows, fresh)); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for !w.spool.empty() {
		if time.Now().After(deadline) {
			t.Fatal("spool never drained")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if got := count(t, pg.Owner); got != 3 {
		t.Fatalf("%d rows after replaying two duplicates and a new row, want 3", got)
	}
}

func TestFullSpoolRefusesAndSaysSo(t *testing.T) {
	t.Parallel()
	appDSN, owner, dir := privatePostgres(t)
	w := newWriter(t, appDSN, 2048) // room for a few rows
	if err := testenv.Stop(dir, "postgres"); err != nil {
		t.Fatal(err)
	}
	var err error
	for i := 0; i < 100 && err == nil; i++ {
		err = w.Record(context.Background(), testRow(i))
	}
	if err == nil || !w.Refusing() {
		t.Fatalf("spool of 2 KiB never filled: %v", err)
	}
	// Back: the spool is replayed, requests are served again, and the
	// refused batch's chain positions are not reused (its fate was not
	// known): a new chain carries on, and every chain verifies.
	if _, err := testenv.Start(dir, "postgres"); err != nil {
		t.Fatal(err)
	}
	owner.Reset()
	deadline := time.Now().Add(30 * time.Second)
	for w.Refusing() || w.spool.isSpooling() {
		if time.Now().After(deadline) {
			t.Fatal("still refusing after PostgreSQL came back")
		}
		time.Sleep(20 * time.Millisecond)
	}
	for i := range 5 {
		if err := w.Record(context.Background(), testRow(i)); err != nil {
			t.Fatal(err)
		}
	}
	rep, err := audit.Verify(context.Background(), owner)
	if err != nil || !rep.OK() || rep.Writers < 2 {
		t.Fatalf("verify after refusals: %+v %v", rep, err)
	}
}

// Every column written by either write path (a binary COPY for a batch, a
// prepared INSERT for a lone row) reads back as the row held it, NULLs and
// both address families included, and the chain verifies.
func TestBothWritePathsStoreEveryColumn(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	ctx := context.Background()
	var customer string
	if err := pg.Owner.QueryRow(ctx, "INSERT INTO customers (name) VALUES ('copy') RETURNING id::text").Scan(&customer); err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 11, 29, 1, 2, 3, 456789000, time.UTC)
	rows := []*audit.Row{
		{CustomerID: customer, KeyID: "0b3c8a4e-51d2-4f0e-9a57-3f1c2d4e5f60", OccurredAt: at, SourceIP: "2001:db8::7",
			UserAgent: "ua/1 ünïcode", RequestID: identity.NewRequestID(), Method: "POST", Path: "/api/v1/keys",
			ResourceType: "api_key", ResourceID: "k1", Action: "create", Result: "success", StatusCode: 201, Metadata: `{"scopes":["read"]}`},
		{UserID: "9d6f1e2a-3b4c-4d5e-8f70-8192a3b4c5d6", OccurredAt: at.Add(-time.Hour * 24 * 365 * 30), SourceIP: "",
			UserAgent: "", RequestID: identity.NewRequestID(), Method: "GET", Path: "/settings/keys",
			Action: "auth_failed", Result: "denied", StatusCode: 401, Metadata: `{}`},
		{OccurredAt: at, SourceIP: "198.51.100.4", RequestID: identity.NewRequestID(), Method: "DELETE", Path: "/",
			Action: "delete", Result: "error", StatusCode: 599, Metadata: `{"n":-1.5}`},
	}
	var alone []*audit.Row
	for _, r := range rows {
		cp := *r
		cp.RequestID = identity.NewRequestID()
		alone = append(alone, &cp)
	}
	pool := pg.App(t)
	c := &chain{base: "test", id: "test"}
	var buf []byte
	for _, r := range rows {
		c.link(r)
	}
	if _, err := insert(ctx, pool, &buf, rows); err != nil {
		t.Fatal(err)
	}
	for _, r := range alone {
		c.link(r)
		if _, err := insert(ctx, pool, &buf, []*audit.Row{r}); err != nil {
			t.Fatal(err)
		}
	}
	rows = append(rows, alone...)
	for _, want := range rows {
		var got audit.Row
		var status int16
		var ip *string
		err := pg.Owner.QueryRow(ctx, `SELECT coalesce(customer_id::text,''), coalesce(key_id::text,''), coalesce(user_id::text,''), occurred_at,
			host(source_ip), user_agent, method, path, coalesce(resource_type,''), coalesce(resource_id,''), action, result, status_code, metadata::text,
			writer_id, writer_seq, prev_hash, row_hash, customer_digest FROM api_audit_log WHERE request_id = $1`, want.RequestID).Scan(
			&got.CustomerID, &got.KeyID, &got.UserID, &got.OccurredAt, &ip, &got.UserAgent, &got.Method, &got.Path, &got.ResourceType,
			&got.ResourceID, &got.Action, &got.Result, &status, &got.Metadata, &got.WriterID, &got.WriterSeq, &got.PrevHash, &got.RowHash,
			&got.CustomerDigest)
		if err != nil {
			t.Fatal(err)
		}
		if ip != nil {
			got.SourceIP = *ip
		}
		got.StatusCode, got.RequestID = int(status), want.RequestID
		got.OccurredAt = got.OccurredAt.UTC()
		got.Metadata = strings.ReplaceAll(got.Metadata, " ", "")
		if !reflect.DeepEqual(&got, want) {
			t.Errorf("stored\n%+v\nwant\n%+v", got, *want)
		}
	}
	rep, err := audit.Verify(ctx, pg.Owner)
	if err != nil || !rep.OK() || rep.Rows != int64(len(rows)) {
		t.Fatalf("verify: %+v %v", rep, err)
	}
}

// A row the table would refuse is refused on its own, before it takes a
// chain position, so it cannot fail a group commit or a spool replay.
func TestRowsTheTableWouldRefuseAreRefusedAlone(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	w := newWriter(t, pg.AppDSN, 1<<20)
	for name, spoil := range map[string]func(*audit.Row){
		"key id not a uuid":   func(r *audit.Row) { r.KeyID = "not-a-uuid" },
		"user id with braces": func(r *audit.Row) { r.UserID = "{9d6f1e2a-3b4c-4d5e-8f70-8192a3b4c5d6}" },
		"customer id upper x": func(r *audit.Row) { r.CustomerID = "9d6f1e2a-3b4c-4d5e-8f70-8192a3b4c5dx" },
		"empty request id":    func(r *audit.Row) { r.RequestID = "" },
		"long method":         func(r *audit.Row) { r.Method = "PROPFINDPROPFINDX" },
		"unknown action":      func(r *audit.Row) { r.Action = "erase" },
		"unknown result":      func(r *audit.Row) { r.Result = "maybe" },
		"status 0":            func(r *audit.Row) { r.StatusCode = 0 },
		"status 600":          func(r *audit.Row) { r.StatusCode = 600 },
		"metadata array":      func(r *audit.Row) { r.Metadata = `[1]` },
		"metadata not json":   func(r *audit.Row) { r.Metadata = `{"a":` },
		"NUL in path":         func(r *audit.Row) { r.Path = "/a\x00b" },
		"latin-1 user agent":  func(r *audit.Row) { r.UserAgent = "caf\xe9" },
	} {
		r := testRow(1)
		spoil(r)
		if err := w.Record(context.Background(), r); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := w.Record(context.Background(), testRow(2)); err != nil {
		t.Fatal(err)
	}
	if got := count(t, pg.Owner); got != 1 || w.spool.isSpooling() {
		t.Fatalf("%d rows (want 1), spooling %v", got, w.spool.isSpooling())
	}
	rep, err := audit.Verify(context.Background(), pg.Owner)
	if err != nil || !rep.OK() || rep.Rows != 1 {
		t.Fatalf("verify: %+v %v", rep, err)
	}
}

// A customer deleted between a request and its row's commit (an account
// purge racing the customer's last requests): the row is stored with the
// id, the rows batched with it too, nothing goes to the spool, and
// account-purge's forget_deleted_customers (migration 0011) nulls the id
// afterwards, as the deletion did to the customer's earlier rows; the
// chain still verifies. Before 0011 a foreign key refused such a row.
func TestRowsOfADeletedCustomerAreKeptAndAnonymised(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	ctx := context.Background()
	var live, gone string
	if err := pg.Owner.QueryRow(ctx, "INSERT INTO customers (name) VALUES ('live') RETURNING id::text").Scan(&live); err != nil {
		t.Fatal(err)
	}
	if err := pg.Owner.QueryRow(ctx, "INSERT INTO customers (name) VALUES ('gone') RETURNING id::text").Scan(&gone); err != nil {
		t.Fatal(err)
	}
	app := pg.Owner
	if _, err := app.Exec(ctx, "DELETE FROM customers WHERE id = $1", gone); err != nil {
		t.Fatal(err)
	}
	w := newWriter(t, pg.AppDSN, 1<<20)
	rows := make([]*audit.Row, 40)
	var wg sync.WaitGroup
	errs := make(chan error, len(rows))
	for i := range rows {
		rows[i] = testRow(i)
		rows[i].CustomerID = live
		if i%4 == 0 {
			rows[i].CustomerID = gone
		}
		wg.Add(1)
		go func() { defer wg.Done(); errs <- w.Record(ctx, rows[i]) }()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	// The same through a COPY for certain: a batch of two, one of them the
	// deleted customer's.
	c := &chain{base: "direct", id: "direct"}
	batch := []*audit.Row{testRow(100), testRow(101)}
	batch[0].CustomerID, batch[1].CustomerID = live, gone
	for _, r := range batch {
		c.link(r)
	}
	var buf []byte
	if _, err := insert(ctx, app, &buf, batch); err != nil {
		t.Fatal(err)
	}
	counts := func() (kept, late, orphaned int) {
		t.Helper()
		if err := pg.Owner.QueryRow(ctx, `SELECT count(*) FILTER (WHERE customer_id = $1), count(*) FILTER (WHERE customer_id = $2),
			count(*) FILTER (WHERE customer_id IS NULL) FROM api_audit_log`, live, gone).Scan(&kept, &late, &orphaned); err != nil {
			t.Fatal(err)
		}
		return
	}
	if kept, late, orphaned := counts(); kept != 31 || late != 11 || orphaned != 0 || w.spool.isSpooling() {
		t.Fatalf("stored: %d rows of the customer (want 31), %d of the deleted one (want 11), %d without one (want 0), spooling %v",
			kept, late, orphaned, w.spool.isSpooling())
	}
	var nulled int64
	if err := app.QueryRow(ctx, "SELECT forget_deleted_customers('30 days')").Scan(&nulled); err != nil || nulled != 11 {
		t.Fatalf("forget_deleted_customers: %d rows (want 11), %v", nulled, err)
	}
	if kept, late, orphaned := counts(); kept != 31 || late != 0 || orphaned != 11 {
		t.Fatalf("after forgetting: %d rows of the customer (want 31), %d of the deleted one (want 0), %d without one (want 11)", kept, late, orphaned)
	}
	if rep, err := audit.Verify(ctx, pg.Owner); err != nil || !rep.OK() || rep.Rows != 42 {
		t.Fatalf("verify: %+v %v", rep, err)
	}
	// The deletion is remembered for its interval (30 days at least,
	// migration 0042), then forgotten.
	if _, err := pg.Owner.Exec(ctx, "UPDATE deleted_customers SET deleted_at = deleted_at - interval '31 days'"); err != nil {
		t.Fatal(err)
	}
	if err := app.QueryRow(ctx, "SELECT forget_deleted_customers('30 days')").Scan(&nulled); err != nil || nulled != 0 {
		t.Fatalf("forget_deleted_customers again: %d rows (want 0), %v", nulled, err)
	}
	var remembered int
	if err := pg.Owner.QueryRow(ctx, "SELECT count(*) FROM deleted_customers").Scan(&remembered); err != nil || remembered != 0 {
		t.Fatalf("deleted_customers 31 days on: %d (want 0), %v", remembered, err)
	}
}

// awaitRows waits for n answers on done, each nil, for at most 30 s each
// (the linger tests set an hour: a wait that long is the fault).
func awaitRows(t *testing.T, done <-chan error, n int, what string) {
	t.Helper()
	for range n {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("%s: still waiting after 30 s (for a linger's timer?)", what)
		}
	}
}

// lingeringWriter is a writer of one chain that lingers an hour once busy
// (a batch of one row makes it so), batches of at most maxBatch rows.
func lingeringWriter(t *testing.T, pg *testenv.PG, maxBatch int) *Writer {
	t.Helper()
	w, err := NewWriter(WriterConfig{DSN: pg.AppDSN, SpoolDir: filepath.Join(t.TempDir(), "spool"), Chains: 1,
		MaxBatch: maxBatch, Linger: time.Hour, LingerAfter: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close() })
	return w
}

// A busy chain (its last batch held at least LingerAfter rows) waits for
// more rows before it commits; an idle one commits at once; closing the
// writer ends a wait and writes what waited.
func TestBusyChainLingersForLargerGroupCommits(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	w := lingeringWriter(t, pg, 3)
	ctx := context.Background()
	record := func(rows ...*audit.Row) chan error {
		done := make(chan error, len(rows))
		for _, r := range rows {
			go func() { done <- w.Record(ctx, r) }()
		}
		return done
	}
	awaitRows(t, record(testRow(0)), 1, "a row after no batch (idle)")

	// Busy now: the next row waits for company...
	alone := record(testRow(1))
	select {
	case err := <-alone:
		t.Fatalf("a busy chain committed a lone row at once (%v)", err)
	case <-time.After(300 * time.Millisecond):
	}
	// ...until the batch is full, and the three commit together.
	awaitRows(t, record(testRow(2), testRow(3)), 2, "the rows that filled the batch")
	awaitRows(t, alone, 1, "the row that waited")
	var n, xacts int
	if err := pg.Owner.QueryRow(ctx, "SELECT count(*), count(DISTINCT xmin::text) FILTER (WHERE writer_seq > 1) FROM api_audit_log").Scan(&n, &xacts); err != nil {
		t.Fatal(err)
	}
	if n != 4 || xacts != 1 {
		t.Fatalf("%d rows (want 4); the last three in %d transactions (want 1)", n, xacts)
	}

	// Queued here directly, so that it is certainly queued before Close.
	last := &pending{row: testRow(4), done: make(chan error, 1)}
	w.chains[0].in <- last
	closed := make(chan error, 1)
	go func() { closed <- w.Close() }()
	awaitRows(t, closed, 1, "Close while a row waits")
	awaitRows(t, last.done, 1, "the row waiting when the writer closed")
	if got := count(t, pg.Owner); got != 5 {
		t.Fatalf("%d rows after Close, want 5", got)
	}
}

// Closing the writer (the last config using it replaced) while requests
// still record rows: each returns, stored or refused, none waits forever.
func TestRecordRacingCloseAlwaysReturns(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	w, err := NewWriter(WriterConfig{DSN: pg.AppDSN, SpoolDir: filepath.Join(t.TempDir(), "spool")})
	if err != nil {
		t.Fatal(err)
	}
	const n = 2000
	var wg sync.WaitGroup
	var stored, refused atomic.Int64
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			switch err := w.Record(context.Background(), testRow(i)); {
			case err == nil:
				stored.Add(1)
			case errors.Is(err, errClosed):
				refused.Add(1)
			default:
				t.Errorf("row %d: %v", i, err)
			}
		}()
	}
	time.Sleep(time.Millisecond)
	_ = w.Close()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("Record still waiting 30 s after Close")
	}
	if got := count(t, pg.Owner); got != stored.Load() {
		t.Fatalf("%d rows stored, %d answered as stored (%d refused)", got, stored.Load(), refused.Load())
	}
	if err := w.Record(context.Background(), testRow(n)); !errors.Is(err, errClosed) {
		t.Fatalf("after Close: %v", err)
	}
	t.Logf("%d stored, %d refused", stored.Load(), refused.Load())
}

// A writer unloaded by a reload while an audited request is under way
// (its row announced, its function acting) still takes and commits that
// row; the unload does not wait for it, and the writer closes after it.
func TestDestructWaitsForAnnouncedRows(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	w := newWriter(t, pg.AppDSN, 0)
	if !w.announce() { // a request has begun
		t.Fatal("a live writer refused an announcement")
	}
	if err := w.Destruct(); err != nil {
		t.Fatal(err)
	}
	// A request that has not announced its row yet is refused before it
	// does anything: its row could find the writer closed.
	if w.announce() {
		t.Fatal("an unloaded writer took a new announcement")
	}
	// The request's function has acted; its row comes now.
	if err := w.recordAnnounced(time.Second, testRow(1)); err != nil {
		t.Fatalf("the row of a request under way at the unload: %v", err)
	}
	if got := count(t, pg.Owner); got != 1 {
		t.Fatalf("%d rows stored, want 1", got)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		w.closing.RLock()
		closed := w.closed
		w.closing.RUnlock()
		if closed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the writer did not close after the last announced row arrived")
		}
	}
}

// An unload (a reload of Caddy) does not wait for a row that waits for
// room in a full queue: it used to, up to the row's wait (the audit's
// timeout, 10 s), as the row held the lock Destruct took to stop new
// announcements. The row is still taken once there is room, and written.
func TestDestructDoesNotWaitForARowWaitingForRoom(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	w, err := NewWriter(WriterConfig{DSN: pg.AppDSN, SpoolDir: filepath.Join(t.TempDir(), "spool"), Chains: 1, MaxBatch: 1, Queue: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close() })
	ctx := context.Background()
	// PostgreSQL holds the chain's COPY: the table is locked.
	tx, err := pg.Owner.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "LOCK TABLE api_audit_log IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	c := w.chains[0]
	for i := range 1 + cap(c.in) { // one in the COPY, the queue full
		go func() { _ = w.Record(ctx, testRow(i)) }()
	}
	for deadline := time.Now().Add(10 * time.Second); len(c.in) < cap(c.in); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the queue did not fill")
		}
	}
	if !w.announce() {
		t.Fatal("a live writer refused an announcement")
	}
	waited := make(chan error, 1)
	go func() { waited <- w.recordAnnounced(30*time.Second, testRow(99)) }()
	time.Sleep(100 * time.Millisecond) // the row is waiting for room now

	if err := w.Destruct(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-waited:
		t.Fatalf("the unload waited until the row had its place (%v)", err)
	default:
	}
	if w.announce() {
		t.Fatal("an unloaded writer took a new announcement")
	}
	if err := tx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-waited; err != nil {
		t.Fatalf("the waiting row: %v", err)
	}
}

// An announced row waits at most its bound for a place in a full queue,
// and takes the place once one frees up within it; either way its
// announcement ends.
func TestRecordAnnouncedWithinAFullQueue(t *testing.T) {
	c := &chain{in: make(chan *pending, 1)}
	w := &Writer{chains: []*chain{c}, maxBatch: 1, coming: newComing()}
	filler := &pending{row: testRow(0), done: make(chan error, 1)}
	c.in <- filler

	start := time.Now()
	w.announce()
	err := w.recordAnnounced(50*time.Millisecond, testRow(1))
	if err == nil || !strings.Contains(err.Error(), "queue full") {
		t.Fatalf("recordAnnounced on a full queue: %v", err)
	}
	if waited := time.Since(start); waited < 50*time.Millisecond {
		t.Fatalf("gave up after %s, before its bound", waited)
	}
	if len(c.in) != 1 || <-c.in != filler {
		t.Fatal("the refused row reached the queue")
	}
	if n := w.coming.n.Load(); n != 0 {
		t.Fatalf("%d rows still announced after the refusal, want 0", n)
	}

	// A chain loop stand-in frees the place after a while and answers
	// the row it then takes.
	c.in <- filler
	go func() {
		time.Sleep(20 * time.Millisecond)
		<-c.in
		p := <-c.in
		p.done <- nil
	}()
	w.announce()
	if err := w.recordAnnounced(10*time.Second, testRow(2)); err != nil {
		t.Fatalf("recordAnnounced once the queue had room: %v", err)
	}
	if n := w.coming.n.Load(); n != 0 {
		t.Fatalf("%d rows still announced after the row was queued, want 0", n)
	}
}

// foreignRow is a row a role that may insert audit rows (the edge's own)
// places at a chain position before the writer gets there, linked and
// hashed as the writer would: the strongest such forgery.
func foreignRow(t *testing.T, db *pgxpool.Pool, writer string, seq int64, prev []byte) {
	t.Helper()
	r := testRow(-1)
	r.WriterID, r.WriterSeq, r.PrevHash, r.CustomerDigest = writer, seq, prev, audit.UnknownCustomer
	r.RowHash = audit.Hash(r)
	var stored bool
	if err := db.QueryRow(context.Background(), insertOne, values(r)...).Scan(&stored); err != nil || !stored {
		t.Fatalf("foreign row at %s/%d: %v", writer, seq, err)
	}
}

// A chain position already holding a row this writer did not write is no
// replay: the writer's row is stored as a chain of its own rather than
// skipped (which would lose it), the writer says so and starts a new
// chain, storing it again adds nothing, and verify reports the writer's
// chain displaced at that position, however well the foreign row links.
//
// Not parallel: it counts displaced_rows_total, a process-wide counter that
// TestARowDisplacedOnReplayRestartsItsChain adds to as well.
func TestARowWhosePositionIsTakenIsStoredElsewhere(t *testing.T) {
	pg := testenv.Postgres(t)
	app := pg.App(t)
	ctx := context.Background()
	core, logs := observer.New(zapcore.ErrorLevel)
	w, err := NewWriter(WriterConfig{DSN: pg.AppDSN, SpoolDir: filepath.Join(t.TempDir(), "spool"), Chains: 1, Log: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close() })
	before := promtestutil.ToFloat64(metrics.displaced)
	storedAt := func(r *audit.Row) (string, int64) {
		t.Helper()
		var writer string
		var seq int64
		if err := pg.Owner.QueryRow(ctx, "SELECT writer_id, writer_seq FROM api_audit_log WHERE request_id = $1", r.RequestID).Scan(&writer, &seq); err != nil {
			t.Fatalf("row %s not stored: %v", r.RequestID, err)
		}
		return writer, seq
	}

	// The lone-row path: the writer's next position is taken.
	first := testRow(1)
	if err := w.Record(ctx, first); err != nil {
		t.Fatal(err)
	}
	foreignRow(t, app, first.WriterID, 2, first.RowHash)
	second, third := testRow(2), testRow(3)
	for _, r := range []*audit.Row{second, third} {
		if err := w.Record(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	writer, seq := storedAt(second)
	if from, at, ok := audit.ParseDisplaced(writer); !ok || from != first.WriterID || at != 2 || seq != 1 {
		t.Fatalf("the displaced row is at %s/%d, want a chain of its own named for %s/2", writer, seq, first.WriterID)
	}
	if writer, seq := storedAt(third); writer == first.WriterID || seq != 1 {
		t.Fatalf("the next row is at %s/%d, want the start of a new chain", writer, seq)
	}
	if n := logs.FilterMessageSnippet("did not write").Len(); n != 1 {
		t.Fatalf("%d errors about the taken position, want 1", n)
	}

	// The COPY path: a batch of four, the second's position taken.
	c := &chain{base: testenv.Name("copy"), id: testenv.Name("copy")}
	batch := []*audit.Row{testRow(10), testRow(11), testRow(12), testRow(13)}
	for _, r := range batch {
		c.link(r)
	}
	foreignRow(t, app, c.id, 2, batch[0].RowHash)
	var buf []byte
	moved, err := insert(ctx, app, &buf, batch)
	if err != nil || moved.Rows != 1 || moved.From != c.id || moved.FromSeq != 2 {
		t.Fatalf("insert: %+v %v", moved, err)
	}
	// Stored again (a replay after its commit's answer was lost): nothing
	// is added, nothing is told again.
	if moved, err := insertIgnoringDuplicates(ctx, app, batch); err != nil || moved.Rows != 0 {
		t.Fatalf("replay: %+v %v", moved, err)
	}
	for _, r := range append(batch, first, second, third) {
		if n := countWhere(t, pg.Owner, "request_id = $1", r.RequestID); n != 1 {
			t.Fatalf("row %s stored %d times", r.RequestID, n)
		}
	}
	// A displaced row whose own new place is taken as well goes to a
	// chain with a random name.
	c2 := &chain{base: testenv.Name("again"), id: testenv.Name("again")}
	pair := []*audit.Row{testRow(20), testRow(21)}
	for _, r := range pair {
		c2.link(r)
	}
	foreignRow(t, app, c2.id, 2, pair[0].RowHash)
	named := audit.DisplacedID(c2.id, 2, pair[1].RowHash[:6])
	foreignRow(t, app, named, 1, nil)
	if moved, err := insert(ctx, app, &buf, pair); err != nil || moved.Rows != 1 {
		t.Fatalf("insert with the new place taken: %+v %v", moved, err)
	}
	if writer, seq := storedAt(pair[1]); writer == named || seq != 1 {
		t.Fatalf("the row is at %s/%d, want the start of a randomly named chain", writer, seq)
	} else if from, at, ok := audit.ParseDisplaced(writer); !ok || from != c2.id || at != 2 {
		t.Fatalf("the randomly named chain %s does not name %s/2", writer, c2.id)
	}
	for _, r := range append(batch, first, second, third, pair[0], pair[1]) {
		if n := countWhere(t, pg.Owner, "request_id = $1", r.RequestID); n != 1 {
			t.Fatalf("row %s stored %d times", r.RequestID, n)
		}
	}

	// The writer's (insert, called directly here, leaves telling to it).
	if got := promtestutil.ToFloat64(metrics.displaced) - before; got != 1 {
		t.Fatalf("displaced_rows_total grew by %v, want 1", got)
	}

	rep, err := audit.Verify(ctx, pg.Owner)
	if err != nil {
		t.Fatal(err)
	}
	want := []audit.Break{{WriterID: first.WriterID, WriterSeq: 2, Reason: "displaced"}, {WriterID: c.id, WriterSeq: 2, Reason: "displaced"},
		{WriterID: c2.id, WriterSeq: 2, Reason: "displaced"}}
	slices.SortFunc(rep.Breaks, func(a, b audit.Break) int { return strings.Compare(a.WriterID, b.WriterID) })
	slices.SortFunc(want, func(a, b audit.Break) int { return strings.Compare(a.WriterID, b.WriterID) })
	if !reflect.DeepEqual(rep.Breaks, want) {
		t.Fatalf("verify: %v, want %v", rep.Breaks, want)
	}
}

// A row that the spool's replay finds displaced restarts its chain too:
// the writer's next rows are in a new chain that verify checks whole.
func TestARowDisplacedOnReplayRestartsItsChain(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	app := pg.App(t)
	ctx := context.Background()
	w := newWriter(t, pg.AppDSN, 1<<20)
	first := testRow(1)
	if err := w.Record(ctx, first); err != nil {
		t.Fatal(err)
	}
	foreignRow(t, app, first.WriterID, 2, first.RowHash)
	// The chain's next row, spooled (as while PostgreSQL was away). The
	// chain's goroutine is idle: it handed first back and waits for rows.
	second := testRow(2)
	w.chains[0].link(second)
	w.spool.startSpooling()
	if err := w.spool.append([]*audit.Row{second}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for !w.spool.empty() || w.spool.isSpooling() {
		if time.Now().After(deadline) {
			t.Fatal("spool never drained")
		}
		time.Sleep(20 * time.Millisecond)
	}
	third := testRow(3)
	if err := w.Record(ctx, third); err != nil {
		t.Fatal(err)
	}
	if third.WriterID == first.WriterID || third.WriterSeq != 1 {
		t.Fatalf("the row after the replay is at %s/%d, want the start of a new chain", third.WriterID, third.WriterSeq)
	}
	if n := countWhere(t, pg.Owner, "request_id = $1 AND writer_id <> $2", second.RequestID, first.WriterID); n != 1 {
		t.Fatalf("the displaced row stored %d times in a chain of its own, want 1", n)
	}
	rep, err := audit.Verify(ctx, pg.Owner)
	if err != nil {
		t.Fatal(err)
	}
	if want := []audit.Break{{WriterID: first.WriterID, WriterSeq: 2, Reason: "displaced"}}; !reflect.DeepEqual(rep.Breaks, want) {
		t.Fatalf("verify: %v, want %v", rep.Breaks, want)
	}
}

func countWhere(t *testing.T, db *pgxpool.Pool, where string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := db.QueryRow(context.Background(), "SELECT count(*) FROM api_audit_log WHERE "+where, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// observedWriter is a writer with one chain whose errors t can read.
func observedWriter(t *testing.T, dsn string) (*Writer, *observer.ObservedLogs) {
	t.Helper()
	core, logs := observer.New(zapcore.ErrorLevel)
	w, err := NewWriter(WriterConfig{DSN: dsn, SpoolDir: filepath.Join(t.TempDir(), "spool"), Chains: 1, Log: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close() })
	return w, logs
}

// spoolRow puts row in w's spool at the chain's next place, as while
// PostgreSQL was away.
func spoolRow(t *testing.T, w *Writer, row *audit.Row) {
	t.Helper()
	w.chains[0].link(row)
	w.spool.startSpooling()
	if err := w.spool.append([]*audit.Row{row}); err != nil {
		t.Fatal(err)
	}
}

// TestAReplayFailingWhilePostgresAnswersIsCountedAndLogged: a replay that
// fails for a reason of its own (here a grant lost: the writer signs in
// as a role that may not write the log; equally a segment unreadable)
// fails again at every tick while the spool fills. Each failure is
// counted, and the error is logged once a minute, not at every tick. (A
// spooled row the table would refuse is damage, dropped by spool.each.)
//
// Not parallel: it counts replay_errors_total, a process-wide counter.
func TestAReplayFailingWhilePostgresAnswersIsCountedAndLogged(t *testing.T) {
	pg := testenv.Postgres(t)
	w, logs := observedWriter(t, pg.FunctionDSNs["GUARDIAN_PG_DSN_HEALTHZ"])
	before := promtestutil.ToFloat64(metrics.replayErrors)
	spoolRow(t, w, testRow(1))
	said := func() int { return logs.FilterMessageSnippet("cannot be replayed").Len() }
	deadline := time.Now().Add(10 * time.Second)
	for promtestutil.ToFloat64(metrics.replayErrors)-before < 3 {
		if time.Now().After(deadline) {
			t.Fatalf("%v failed replays counted, want 3 or more (logged %d)", promtestutil.ToFloat64(metrics.replayErrors)-before, said())
		}
		time.Sleep(20 * time.Millisecond)
	}
	if n := said(); n != 1 {
		t.Fatalf("three failed replays logged %d times, want once", n)
	}
	if e := logs.FilterMessageSnippet("cannot be replayed").All()[0].ContextMap()["error"]; !strings.Contains(fmt.Sprint(e), "permission denied") {
		t.Fatalf("the log does not say what failed: %v", e)
	}
	// A minute on, it is said again.
	w.lastReplayWarn.Store(mono.Nanos(time.Now().Add(-time.Minute)))
	for said() < 2 {
		if time.Now().After(deadline.Add(10 * time.Second)) {
			t.Fatal("a failure that lasts is not logged again a minute later")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestAReplayWhilePostgresIsAwayIsNotAnError: waiting for PostgreSQL is
// what the spool is for, and was said when spooling began.
//
// Not parallel: it counts replay_errors_total, a process-wide counter.
func TestAReplayWhilePostgresIsAwayIsNotAnError(t *testing.T) {
	w, logs := observedWriter(t, "postgres://guardian@127.0.0.1:1/guardian?connect_timeout=1")
	before := promtestutil.ToFloat64(metrics.replayErrors)
	spoolRow(t, w, testRow(1))
	time.Sleep(2 * time.Second) // four ticks
	if n := promtestutil.ToFloat64(metrics.replayErrors) - before; n != 0 || logs.Len() != 0 {
		t.Fatalf("%v replay errors counted, logged %v", n, logs.All())
	}
	if w.spool.empty() {
		t.Fatal("the spooled row went somewhere")
	}
}

// TestAReplayRefusedAtSignInIsAnError: PostgreSQL that answers a
// connection with a refusal (here a wrong password; equally a pg_hba line
// or CONNECT revoked) is not away: the spool would wait for ever.
//
// Not parallel: it counts replay_errors_total, a process-wide counter.
func TestAReplayRefusedAtSignInIsAnError(t *testing.T) {
	pg := testenv.Postgres(t)
	u, err := url.Parse(pg.AppDSN)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(u.User.Username(), "not-the-password")
	w, logs := observedWriter(t, u.String())
	before := promtestutil.ToFloat64(metrics.replayErrors)
	spoolRow(t, w, testRow(1))
	deadline := time.Now().Add(10 * time.Second)
	for promtestutil.ToFloat64(metrics.replayErrors) == before {
		if time.Now().After(deadline) {
			t.Fatalf("a refused sign-in was taken for PostgreSQL being away (logged %v)", logs.All())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// A PostgreSQL too slow for the hand-back (spool.handBack) would hold
// every chain for handBackWait at each pass: once one is given up, the
// next pass that finds a row open does not wait for it under the lock,
// until the pause is over. The writer here runs no goroutine of its own,
// so the passes are the test's.
func TestAHandBackGivenUpPausesTheNext(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	ctx := context.Background()
	db, err := pgxpool.New(ctx, pg.AppDSN)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(db.Close)
	sp, err := openSpool(filepath.Join(t.TempDir(), "spool"), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sp.close() })
	c := &chain{in: make(chan *pending, 1), base: "pause-0"}
	c.id = c.base
	w := &Writer{db: db, spool: sp, digests: newDigests(), chains: []*chain{c}, maxBatch: 1000, coming: newComing(), log: zap.NewNop()}
	// Rows numbered 100 and up take PostgreSQL 3 s each: more than the
	// hand-back's 2 s, less than a sealed segment's 10 s.
	if _, err := pg.Owner.Exec(ctx, `
		CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF (NEW.metadata->>'n')::int >= 100 THEN PERFORM pg_sleep(3); END IF;
			RETURN NEW;
		END $$;
		CREATE TRIGGER slow_row BEFORE INSERT ON api_audit_log FOR EACH ROW EXECUTE FUNCTION slow_row()`); err != nil {
		t.Fatal(err)
	}
	// A pass replays the sealed segment; a chain spools another row while
	// it does, and the hand-back finds that row open.
	pass := func(first, during int) error {
		spoolRow(t, w, testRow(first))
		spooled := make(chan struct{})
		go func() {
			defer close(spooled)
			time.Sleep(time.Second)
			spoolRow(t, w, testRow(during))
		}()
		err := w.replayOnce(ctx)
		<-spooled
		return err
	}
	before := promtestutil.ToFloat64(metrics.handBackTimeouts)
	if err := pass(100, 101); !errors.Is(err, errAway) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a hand-back slower than its wait: %v, want PostgreSQL away past the deadline", err)
	}
	// (Other tests' writers may count too: at least this one.)
	if n := promtestutil.ToFloat64(metrics.handBackTimeouts) - before; n < 1 || w.handBackPause.Load() != int64(firstHandBackPause) {
		t.Fatalf("%v hand-backs given up counted (want 1 or more), pause %s", n, time.Duration(w.handBackPause.Load()))
	}
	// Paused: row 103 is left open for a later pass, not replayed while
	// the chains wait.
	if err := pass(102, 103); err != nil {
		t.Fatalf("a pass while hand-backs are paused: %v", err)
	}
	if p := time.Duration(w.handBackPause.Load()); p != firstHandBackPause || !w.spool.isSpooling() {
		t.Fatalf("pause %s (want %s: no hand-back given up since), spooling %v (want true): the pass held the chains for the open row", p, firstHandBackPause, w.spool.isSpooling())
	}
	if got := count(t, pg.Owner); got != 3 {
		t.Fatalf("%d rows stored, want 3 (100 to 102; 103 is still spooled)", got)
	}
	// Each hand-back given up doubles the pause, up to a minute.
	for _, want := range []time.Duration{20 * time.Second, 40 * time.Second, time.Minute, time.Minute} {
		w.handBackGivenUp()
		if got := time.Duration(w.handBackPause.Load()); got != want {
			t.Fatalf("pause %s, want %s", got, want)
		}
	}
	// Once the pause is over, the spool is handed back.
	w.handBackAt.Store(0)
	if err := w.replayOnce(ctx); err != nil {
		t.Fatal(err)
	}
	if got := count(t, pg.Owner); got != 4 || w.spool.isSpooling() || w.handBackPause.Load() != 0 {
		t.Fatalf("%d rows stored (want 4), spooling %v, pause %s: not handed back", got, w.spool.isSpooling(), time.Duration(w.handBackPause.Load()))
	}
}

func TestUnreachableTellsAnAbsentPostgresFromAnAnswer(t *testing.T) {
	for name, c := range map[string]struct {
		err  error
		want bool
	}{
		"connection refused":              {fmt.Errorf("copy: %w", &net.OpError{Op: "dial", Net: "tcp", Err: syscall.ECONNREFUSED}), true},
		"no connection to be had":         {refusedConnect(t), true},
		"a certificate refused":           {fmt.Errorf("connect: %w", &tls.CertificateVerificationError{Err: errors.New("x509: certificate signed by unknown authority")}), false},
		"connection closed mid-answer":    {fmt.Errorf("receive: %w", io.ErrUnexpectedEOF), true},
		"server shutting down":            {&pgconn.PgError{Code: "57P01"}, true},
		"server starting up":              {&pgconn.PgError{Code: "57P03"}, true},
		"connection failure":              {&pgconn.PgError{Code: "08006"}, true},
		"a row the table refuses":         {fmt.Errorf("insert: %w", &pgconn.PgError{Code: "23514"}), false},
		"a grant lost":                    {&pgconn.PgError{Code: "42501"}, false},
		"a statement that took too long":  {&pgconn.PgError{Code: "57014"}, false},
		"the replay's own time limit hit": {context.DeadlineExceeded, false},
		"a spool file it cannot read":     {&os.PathError{Op: "open", Path: "spool/000001", Err: syscall.EACCES}, false},
	} {
		if got := unreachable(c.err); got != c.want {
			t.Errorf("%s: unreachable %v, want %v", name, got, c.want)
		}
	}
}

// The queues are saturated once they are half full and the rows queued
// and announced would fill them; a queue merely busy with many requests
// under way is not.
func TestSaturated(t *testing.T) {
	for _, tc := range []struct {
		name              string
		queued, announced int
		saturated         bool
	}{
		{"empty", 0, 0, false},
		{"many under way, queues near empty", 1, 50, false},
		{"half full, the rest under way", 4, 4, true},
		{"half full, room for those under way", 4, 3, false},
		{"full", 8, 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := &chain{in: make(chan *pending, 4)}, &chain{in: make(chan *pending, 4)}
			w := &Writer{chains: []*chain{a, b}, maxBatch: 1, coming: newComing()}
			for i := range tc.queued {
				(map[bool]*chain{true: a, false: b})[i%2 == 0].in <- &pending{}
			}
			for range tc.announced {
				w.announce()
			}
			if got := w.Saturated(); got != tc.saturated {
				t.Fatalf("Saturated() = %v, want %v", got, tc.saturated)
			}
		})
	}
}

// A busy writer's row goes to the chain with the most room, so that it
// waits for none while any chain has a place.
func TestPickFindsTheChainWithRoom(t *testing.T) {
	a, b, c := &chain{in: make(chan *pending, 2)}, &chain{in: make(chan *pending, 2)}, &chain{in: make(chan *pending, 2)}
	w := &Writer{chains: []*chain{a, b, c}, maxBatch: 1, coming: newComing()}
	a.in <- &pending{}
	a.in <- &pending{}
	b.in <- &pending{}
	b.in <- &pending{}
	c.in <- &pending{}
	for range 6 {
		if got := w.pick(); got != c {
			t.Fatal("picked a full chain while another had room")
		}
	}
}

// refusedConnect is pgx's error for a connection to a port nothing
// listens on.
func refusedConnect(t *testing.T) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := pgx.Connect(ctx, fmt.Sprintf("postgres://guardian@127.0.0.1:%d/guardian?connect_timeout=2", testenv.FreePort(t)))
	if err == nil {
		t.Fatal("connected to a free port")
	}
	return err
}

// A spool whose count of bytes went wrong (a segment removed by hand, a
// failed write cut back only in part) is found drained by what is on
// disk, not by the count: the replayer hands writing back to PostgreSQL
// instead of looping on it for ever.
func TestASpoolCountGoneWrongStillEndsSpooling(t *testing.T) {
	t.Parallel()
	pg := testenv.Postgres(t)
	w := newWriter(t, pg.AppDSN, 1<<20)
	// Spooling, with no segment on disk but bytes counted: what removing
	// the only segment by hand leaves.
	w.spool.mu.Lock()
	w.spool.spooling, w.spool.bytes = true, 462
	w.spool.mu.Unlock()
	for deadline := time.Now().Add(10 * time.Second); w.spool.isSpooling(); time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("still spooling 10 s on with no segment on disk (count %d bytes)", w.spool.size())
		}
	}
	if n := w.spool.size(); n != 0 {
		t.Fatalf("the spool counts %d bytes with none on disk", n)
	}
	// And rows go to PostgreSQL again.
	r := testRow(2)
	if err := w.Record(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := pg.Owner.QueryRow(context.Background(), "SELECT count(*) FROM api_audit_log WHERE request_id = $1", r.RequestID).Scan(&n); err != nil || n != 1 {
		t.Fatalf("the next row: %d stored (%v), want 1", n, err)
	}
}

// A writer closed with its spool full (a reload moved spool_dir) takes
// the spool_full gauge back to 0: nothing refuses requests any more. Not
// parallel: the gauge is the process's.
// While two writers are open (the old one closing after a reload), one's
// close leaves the gauge at 1 while the other still refuses.
func TestClosingAFullWriterClearsTheGauge(t *testing.T) {
	full := func() *Writer {
		w, err := NewWriter(WriterConfig{DSN: "postgres://nobody@127.0.0.1:1/none?connect_timeout=1", SpoolDir: filepath.Join(t.TempDir(), "spool"), MaxSpool: 2048, Chains: 1})
		if err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 100 && !w.Refusing(); i++ {
			_ = w.Record(context.Background(), testRow(i))
		}
		if !w.Refusing() || testutil.ToFloat64(metrics.spoolFull) != 1 {
			t.Fatalf("a spool of 2 KiB with PostgreSQL away: refusing %v, gauge %v", w.Refusing(), testutil.ToFloat64(metrics.spoolFull))
		}
		return w
	}
	old, cur := full(), full()
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	if g := testutil.ToFloat64(metrics.spoolFull); g != 1 || !cur.Refusing() {
		t.Fatalf("spool_full %v after the old full writer closed, while the other refuses (%v)", g, cur.Refusing())
	}
	if err := cur.Close(); err != nil {
		t.Fatal(err)
	}
	if g := testutil.ToFloat64(metrics.spoolFull); g != 0 {
		t.Fatalf("spool_full %v after both full writers closed", g)
	}
}

// A writer closed with answered rows still in its spool (PostgreSQL away,
// then a reload that moved spool_dir, or a stop) says so at ERROR, with
// the directory: no other writer replays them, and the next writer's
// gauge counts only its own directory.
func TestAWriterClosedWithRowsLeftSaysWhere(t *testing.T) {
	t.Parallel()
	w, logs := observedWriter(t, "postgres://guardian:x@127.0.0.1:1/guardian?connect_timeout=1")
	spoolRow(t, w, testRow(1))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	said := logs.FilterMessageSnippet("audit spool closed with answered rows").All()
	if len(said) != 1 || said[0].ContextMap()["spool_dir"] != w.spool.dir || said[0].ContextMap()["bytes"].(int64) <= 0 {
		t.Fatalf("closing with rows left logged %v", logs.All())
	}
	empty, elogs := observedWriter(t, "postgres://guardian:x@127.0.0.1:1/guardian?connect_timeout=1")
	if err := empty.Close(); err != nil {
		t.Fatal(err)
	}
	if n := elogs.FilterMessageSnippet("audit spool closed").Len(); n != 0 {
		t.Fatalf("an empty spool's close logged %d errors", n)
	}
}
