package main

import (
	"context"
	"errors"
	"testing"

	"github.com/jackc/pgx/v5"

	shaudit "github.com/glassmkr/guardian/shared/audit"
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

func testRequestID(key string) string { return "req-" + key[len(key)-8:] }
