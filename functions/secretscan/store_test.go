package main

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/glassmkr/guardian/shared/apikey"
	shaudit "github.com/glassmkr/guardian/shared/audit"
	"github.com/glassmkr/guardian/shared/testenv"
)

// A revocation whose transaction fails after its audit rows were sent
// may have committed (the error can be the commit's own answer lost), so
// its chain positions are never used again: the next revocation starts a
// new generation of the chain, and verify holds both.
func TestChainRestartsAfterAnUncertainTransaction(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{stopped: true})
	c, _ := f.customer()
	keys := []string{c.AccountKey(t, "write"), c.AccountKey(t, "write"), c.AccountKey(t, "write")}
	ctx := context.Background()
	revokeOne := func(key string, then func(context.Context, pgx.Tx, []match) error) error {
		meta, err := shaudit.Canonical(map[string]any{"reason": RevokedReason})
		if err != nil {
			t.Fatal(err)
		}
		_, err = revoke(ctx, f.pool, f.h.chain, []candidate{{hash: f.h.hasher.Sum(key), meta: meta}},
			requestInfo{ClientIP: "192.0.2.1", RequestID: testRequestID(key), Path: Route}, then)
		return err
	}
	if err := revokeOne(keys[0], nil); err != nil {
		t.Fatal(err)
	}
	first := f.h.chain.id
	lost := errors.New("the commit's answer was lost")
	if err := revokeOne(keys[1], func(context.Context, pgx.Tx, []match) error { return lost }); !errors.Is(err, lost) {
		t.Fatalf("err %v", err)
	}
	if f.revokedReason(keys[1]) != "" {
		t.Fatal("the failed transaction revoked its key")
	}
	if err := revokeOne(keys[2], nil); err != nil {
		t.Fatal(err)
	}
	var writers []string
	rows, err := f.pg.Owner.Query(ctx, "SELECT writer_id || ':' || writer_seq FROM api_audit_log ORDER BY id")
	if err != nil {
		t.Fatal(err)
	}
	if writers, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		t.Fatal(err)
	}
	if len(writers) != 2 || writers[0] != first+":1" || writers[1] != first+".1:1" {
		t.Fatalf("chain positions %v, want %s:1 then a new generation's first", writers, first)
	}
	if rep, err := shaudit.Verify(ctx, f.pg.Owner); err != nil || !rep.OK() || rep.Rows != 2 || rep.Writers != 2 {
		t.Fatalf("verify: %+v %v", rep, err)
	}
}

// A report whose key's row is locked for long (an operator's open
// transaction) holds up no other report: the audit chain is taken only
// once the keys are revoked, so a report of another customer's key goes
// through while the first waits, and the first then completes.
func TestAStuckRevocationHoldsUpNoOther(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{stopped: true})
	c1, _ := f.customer()
	c2, _ := f.customer()
	stuck, other := c1.AccountKey(t, "write"), c2.AccountKey(t, "write")
	ctx := context.Background()
	meta, err := shaudit.Canonical(map[string]any{"reason": RevokedReason})
	if err != nil {
		t.Fatal(err)
	}
	revokeOne := func(key string) error {
		_, err := revoke(ctx, f.pool, f.h.chain, []candidate{{hash: f.h.hasher.Sum(key), meta: meta}},
			requestInfo{ClientIP: "192.0.2.1", RequestID: testRequestID(key), Path: Route}, nil)
		return err
	}
	h := apikey.Hash(f.pepper, stuck)
	held, heldPID := testenv.Hold(t, f.pg.Owner, "SELECT 1 FROM api_keys WHERE key_hash = $1 FOR UPDATE", h[:])
	first := make(chan error, 1)
	go func() { first <- revokeOne(stuck) }()
	if _, err, finished := testenv.BlockedBy(t, f.pg.Owner, heldPID, first); finished {
		t.Fatalf("the first report did not wait for the key's row: %v", err)
	}
	second := make(chan error, 1)
	go func() { second <- revokeOne(other) }()
	select {
	case err := <-second:
		if err != nil || f.revokedReason(other) != RevokedReason {
			t.Fatalf("the second report: %v, its key revoked as %q", err, f.revokedReason(other))
		}
	case <-time.After(20 * time.Second):
		_ = held.Rollback(ctx)
		t.Fatal("the second report waited for the first one's key")
	}
	if err := held.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-first; err != nil || f.revokedReason(stuck) != RevokedReason {
		t.Fatalf("the first report once its key's row was free: %v, revoked as %q", err, f.revokedReason(stuck))
	}
	if rep, err := shaudit.Verify(ctx, f.pg.Owner); err != nil || !rep.OK() || rep.Rows != 2 {
		t.Fatalf("verify: %+v %v", rep, err)
	}
}

func testRequestID(key string) string { return "req-" + key[len(key)-8:] }

// A report of a key that another report is revoking at that moment waits
// for it, then reads the key revoked: found again at a place of its own,
// its row written and its place kept (migration 0046). Read as it was
// before the other's commit, the key would be neither revoked by this
// report nor found again, and its place would be lost.
func TestAReportWaitsForAnotherRevokingItsKey(t *testing.T) {
	t.Parallel()
	f := newFixture(t, fixtureOpts{})
	c, _ := f.customer()
	key := c.AccountKey(t, "write")
	h := apikey.Hash(f.pepper, key)
	firstPlace := placeDigest(location{URL: "https://github.com/octo/app/blob/a/one.env", Source: "content"})
	held, heldPID := testenv.Hold(t, f.pg.Owner, "SELECT count(*) FROM revoke_reported_keys(ARRAY[$1::bytea], ARRAY[$1::bytea], ARRAY[$2::bytea])", h[:], firstPlace[:])
	second := make(chan answer, 1)
	go func() {
		second <- f.signed(payload(t, item{key, "guardian_account_key", "https://github.com/fork/app/blob/a/two.env", "content"}))
	}()
	if _, a, finished := testenv.BlockedBy(t, f.pg.Owner, heldPID, second); finished {
		t.Fatalf("the second report did not wait for the first: %d %s", a.status, a.raw)
	}
	if err := held.Commit(context.Background()); err != nil {
		t.Fatal(err)
	}
	a := <-second
	if a.status != 200 || len(a.labels) != 1 || a.labels[0].Label != TruePositive {
		t.Fatalf("the second report: %d %s", a.status, a.raw)
	}
	if n := f.count("SELECT count(*) FROM api_audit_log WHERE customer_id = $1 AND metadata->>'already_revoked' = 'true' AND metadata->>'url' = 'https://github.com/fork/app/blob/a/two.env'", c.ID); n != 1 {
		t.Fatalf("%d rows of the key found again at the second report's place, want 1", n)
	}
	if n := f.count("SELECT count(*) FROM leak_places WHERE key_id = (SELECT id FROM api_keys WHERE key_hash = $1)", h[:]); n != 2 {
		t.Fatalf("%d places kept, want both reports'", n)
	}
}
