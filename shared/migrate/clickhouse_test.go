package migrate_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/glassmkr/guardian/shared/migrate"
	"github.com/glassmkr/guardian/shared/testenv"
)

func TestClickHouseMigrationsCreateTablesOnceAndDetectTTL(t *testing.T) {
	t.Parallel()
	ch := testenv.ClickHouse(t)
	ctx := context.Background()

	for table := range migrate.TTLRules {
		var n uint64
		if err := ch.Conn.QueryRow(ctx, "SELECT count() FROM system.tables WHERE database = ? AND name = ?", ch.Database, table).Scan(&n); err != nil || n != 1 {
			t.Fatalf("table %s: count %d, err %v", table, n, err)
		}
	}
	again, err := migrate.ClickHouse(ctx, ch.Conn, ch.Database)
	if err != nil || len(again) != 0 {
		t.Fatalf("second run applied %v, err %v", again, err)
	}

	v, err := migrate.ServerVersion(ctx, ch.Conn)
	if err != nil {
		t.Fatal(err)
	}
	var create string
	if err := ch.Conn.QueryRow(ctx, "SELECT create_table_query FROM system.tables WHERE database = ? AND name = 'snapshots'", ch.Database).Scan(&create); err != nil {
		t.Fatal(err)
	}
	if has := migrate.HasTTL(create); has != v.SupportsTTL() {
		t.Fatalf("server %v (TTL support %v) but snapshots has TTL: %v\n%s", v, v.SupportsTTL(), has, create)
	}
}

func TestClickHouseSnapshotRoundTrip(t *testing.T) {
	t.Parallel()
	ch := testenv.ClickHouse(t)
	ctx := context.Background()
	batch, err := ch.Conn.PrepareBatch(ctx, "INSERT INTO "+ch.Database+".snapshots (customer_id, server_id, ts, received_at, collector_version, retention_days, payload)")
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC().Truncate(time.Second)
	if err := batch.Append("c1", "s1", now, now, "0.9.1", uint16(90), `{"cpu":{"load1":0.5}}`); err != nil {
		t.Fatal(err)
	}
	if err := batch.Send(); err != nil {
		t.Fatal(err)
	}
	var payload string
	var days uint16
	if err := ch.Conn.QueryRow(ctx, "SELECT payload, retention_days FROM "+ch.Database+".snapshots WHERE server_id = 's1'").Scan(&payload, &days); err != nil {
		t.Fatal(err)
	}
	if payload != `{"cpu":{"load1":0.5}}` || days != 90 {
		t.Fatalf("read back %q, %d", payload, days)
	}
}

func TestClickHouseRejectsABadDatabaseName(t *testing.T) {
	t.Parallel()
	ch := testenv.ClickHouse(t)
	// The last two ClickHouse would take as written, running more than
	// the name: refused before anything is sent.
	for _, name := range []string{"", "a-b", "x; DROP DATABASE y", "1abc", "g ENGINE = Memory", "g_ok COMMENT 'x'"} {
		if _, err := migrate.ClickHouse(context.Background(), ch.Conn, name); err == nil || !strings.Contains(err.Error(), "invalid database name") {
			t.Errorf("database name %q: got %v, want it refused as invalid", name, err)
		}
	}
	var n uint64
	if err := ch.Conn.QueryRow(context.Background(), "SELECT count() FROM system.databases WHERE name IN ('g', 'g_ok')").Scan(&n); err != nil || n != 0 {
		t.Errorf("%d databases made from refused names (err %v)", n, err)
	}
}
