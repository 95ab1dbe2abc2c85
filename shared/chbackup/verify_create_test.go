package chbackup

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
)

// Statements as SHOW CREATE TABLE prints them, and the scratch table's
// statement made from each: current versions one clause a line (with
// column TTLs, codecs, comments, indexes, a table TTL, settings), 19.x and
// 20.x on one line, 18.16 on one line without backquotes or TTL.
func TestScratchCreate(t *testing.T) {
	t.Parallel()
	const s = "CREATE TABLE `restore_verify_x`.`snapshots`"
	cases := []struct {
		name, db, table, in, want string
	}{
		{"current ClickHouse: Guardian's snapshots with their retention TTL", "guardian", "",
			"CREATE TABLE guardian.snapshots\n(\n    `customer_id` UUID,\n    `server_id` String,\n    `ts` DateTime,\n" +
				"    `received_at` DateTime,\n    `collector_version` String,\n    `retention_days` UInt16,\n    `payload` String\n)\n" +
				"ENGINE = MergeTree\nPARTITION BY toYYYYMMDD(ts)\nORDER BY (customer_id, server_id, ts)\n" +
				"TTL ts + toIntervalDay(retention_days)\nSETTINGS index_granularity = 8192",
			s + "\n(\n    `customer_id` UUID,\n    `server_id` String,\n    `ts` DateTime,\n" +
				"    `received_at` DateTime,\n    `collector_version` String,\n    `retention_days` UInt16,\n    `payload` String\n)\n" +
				"ENGINE = MergeTree\nPARTITION BY toYYYYMMDD(ts)\nORDER BY (customer_id, server_id, ts)\n" +
				"SETTINGS index_granularity = 8192"},
		{"current ClickHouse: column TTLs, codecs, comments, an index, a table TTL and COMMENT", "guardian", "",
			"CREATE TABLE guardian.snapshots\n(\n    `customer_id` UUID COMMENT 'the customer, as in PostgreSQL',\n" +
				"    `ts` DateTime CODEC(Delta(4), ZSTD(1)),\n    `retention_days` UInt16 DEFAULT 90 COMMENT 'days; TTL reads it',\n" +
				"    `payload` String TTL ts + toIntervalDay(30) CODEC(ZSTD(3)) COMMENT 'JSON, as sent',\n" +
				"    `note` String DEFAULT '' TTL ts + toIntervalDay(7),\n" +
				"    INDEX payload_tokens payload TYPE tokenbf_v1(512, 3, 0) GRANULARITY 4\n)\n" +
				"ENGINE = ReplacingMergeTree\nPARTITION BY toYYYYMMDD(ts)\nPRIMARY KEY (customer_id, ts)\nORDER BY (customer_id, ts, retention_days)\n" +
				"TTL ts + toIntervalDay(retention_days) DELETE, ts + toIntervalDay(1) RECOMPRESS CODEC(ZSTD(17))\n" +
				"SETTINGS index_granularity = 8192, min_bytes_for_wide_part = 0,\n    merge_with_ttl_timeout = 3600\nCOMMENT 'one row a snapshot'",
			s + "\n(\n    `customer_id` UUID COMMENT 'the customer, as in PostgreSQL',\n" +
				"    `ts` DateTime CODEC(Delta(4), ZSTD(1)),\n    `retention_days` UInt16 DEFAULT 90 COMMENT 'days; TTL reads it',\n" +
				"    `payload` String TTL ts + toIntervalDay(30) CODEC(ZSTD(3)) COMMENT 'JSON, as sent',\n" +
				"    `note` String DEFAULT '' TTL ts + toIntervalDay(7),\n" +
				"    INDEX payload_tokens payload TYPE tokenbf_v1(512, 3, 0) GRANULARITY 4\n)\n" +
				"ENGINE = ReplacingMergeTree\nPARTITION BY toYYYYMMDD(ts)\nPRIMARY KEY (customer_id, ts)\nORDER BY (customer_id, ts, retention_days)\n" +
				"SETTINGS index_granularity = 8192, min_bytes_for_wide_part = 0,\n    merge_with_ttl_timeout = 3600\nCOMMENT 'one row a snapshot'"},
		{"current ClickHouse: no table TTL, nothing after ORDER BY", "guardian", "schema_migrations",
			"CREATE TABLE guardian.schema_migrations\n(\n    `version` UInt32,\n    `name` String\n)\nENGINE = MergeTree\nORDER BY version",
			"CREATE TABLE `restore_verify_x`.`schema_migrations`\n(\n    `version` UInt32,\n    `name` String\n)\nENGINE = MergeTree\nORDER BY version"},
		{"identifiers always quoted", "guardian", "",
			"CREATE TABLE `guardian`.`snapshots`\n(\n    `ts` DateTime\n)\nENGINE = MergeTree\nORDER BY `ts`\nTTL `ts` + toIntervalDay(90)\nSETTINGS index_granularity = 8192",
			s + "\n(\n    `ts` DateTime\n)\nENGINE = MergeTree\nORDER BY `ts`\nSETTINGS index_granularity = 8192"},
		{"identifiers in double quotes", "guardian", "",
			"CREATE TABLE \"guardian\".\"snapshots\"\n(\n    \"ts\" DateTime\n)\nENGINE = MergeTree\nORDER BY \"ts\"\nTTL \"ts\" + toIntervalDay(90)",
			s + "\n(\n    \"ts\" DateTime\n)\nENGINE = MergeTree\nORDER BY \"ts\""},
		{"a database name that needs quotes", "guardian-eu", "",
			"CREATE TABLE `guardian-eu`.snapshots\n(\n    `ts` DateTime\n)\nENGINE = MergeTree\nORDER BY ts",
			s + "\n(\n    `ts` DateTime\n)\nENGINE = MergeTree\nORDER BY ts"},
		{"the table's UUID, where shown", "guardian", "",
			"CREATE TABLE guardian.snapshots UUID '0abcdef0-1234-4567-89ab-0123456789ab'\n(\n    `ts` DateTime\n)\nENGINE = MergeTree\nORDER BY ts",
			s + "\n(\n    `ts` DateTime\n)\nENGINE = MergeTree\nORDER BY ts"},
		{"whitespace of any kind after the name", "guardian", "",
			"CREATE TABLE guardian.snapshots\r\n\t(`ts` DateTime) ENGINE = MergeTree ORDER BY ts",
			s + "\r\n\t(`ts` DateTime) ENGINE = MergeTree ORDER BY ts"},
		{"19.x and 20.x, on one line", "guardian", "",
			"CREATE TABLE guardian.snapshots (`customer_id` String, `ts` DateTime, `retention_days` UInt16) ENGINE = MergeTree " +
				"PARTITION BY toYYYYMMDD(ts) ORDER BY (customer_id, ts) TTL ts + toIntervalDay(retention_days) SETTINGS index_granularity = 8192",
			s + " (`customer_id` String, `ts` DateTime, `retention_days` UInt16) ENGINE = MergeTree " +
				"PARTITION BY toYYYYMMDD(ts) ORDER BY (customer_id, ts) SETTINGS index_granularity = 8192"},
		{"ClickHouse 18.16", "guardian", "",
			"CREATE TABLE guardian.snapshots ( customer_id String,  server_id String,  ts DateTime,  received_at DateTime,  " +
				"collector_version String,  retention_days UInt16,  payload String COMMENT 'JSON') ENGINE = MergeTree " +
				"PARTITION BY toYYYYMMDD(ts) ORDER BY (customer_id, server_id, ts) SETTINGS index_granularity = 8192",
			s + " ( customer_id String,  server_id String,  ts DateTime,  received_at DateTime,  " +
				"collector_version String,  retention_days UInt16,  payload String COMMENT 'JSON') ENGINE = MergeTree " +
				"PARTITION BY toYYYYMMDD(ts) ORDER BY (customer_id, server_id, ts) SETTINGS index_granularity = 8192"},
		{"ClickHouse 18.16, the old MergeTree syntax", "guardian", "",
			"CREATE TABLE guardian.snapshots ( d Date,  x UInt64) ENGINE = MergeTree(d, x, 8192)",
			s + " ( d Date,  x UInt64) ENGINE = MergeTree(d, x, 8192)"},
	}
	for _, c := range cases {
		if c.table == "" {
			c.table = "snapshots"
		}
		got, err := scratchCreate(TableManifest{Name: c.table, Create: c.in}, c.db, "restore_verify_x")
		if err != nil || got != c.want {
			t.Errorf("%s:\n got %q, %v\nwant %q", c.name, got, err, c.want)
		}
	}
}

// What SHOW CREATE TABLE does not print for db.table, and what checkCreate
// refuses, is refused on many lines as on one.
func TestScratchCreateRefuses(t *testing.T) {
	t.Parallel()
	const cols = "\n(\n    `p` String\n)\n"
	for _, c := range []struct{ name, in, want string }{
		{"another table", "CREATE TABLE guardian.other" + cols + "ENGINE = MergeTree\nORDER BY p", "does not name guardian.snapshots"},
		{"another database", "CREATE TABLE other.snapshots" + cols + "ENGINE = MergeTree\nORDER BY p", "does not name"},
		{"a longer name", "CREATE TABLE guardian.snapshots_old" + cols + "ENGINE = MergeTree\nORDER BY p", "does not name"},
		{"a name with more parts", "CREATE TABLE guardian.snapshots.x" + cols + "ENGINE = MergeTree\nORDER BY p", "does not name"},
		{"no database", "CREATE TABLE snapshots" + cols + "ENGINE = MergeTree\nORDER BY p", "does not name"},
		{"IF NOT EXISTS", "CREATE TABLE IF NOT EXISTS guardian.snapshots" + cols + "ENGINE = MergeTree\nORDER BY p", "does not name"},
		{"ON CLUSTER", "CREATE TABLE guardian.snapshots ON CLUSTER c" + cols + "ENGINE = MergeTree\nORDER BY p", "does not name"},
		{"a UUID that is not one", "CREATE TABLE guardian.snapshots UUID 'x'" + cols + "ENGINE = MergeTree\nORDER BY p", "does not name"},
		{"a column list away from the name", "CREATE TABLE guardian.snapshots\nENGINE = MergeTree\nORDER BY p\n(p String)", "does not name"},
		{"a temporary table", "CREATE TEMPORARY TABLE guardian.snapshots" + cols + "ENGINE = MergeTree\nORDER BY p", "not a CREATE TABLE"},
		{"ATTACH", "ATTACH TABLE guardian.snapshots" + cols + "ENGINE = MergeTree\nORDER BY p", "not a CREATE TABLE"},
		{"leading whitespace", "\nCREATE TABLE guardian.snapshots" + cols + "ENGINE = MergeTree\nORDER BY p", "not a CREATE TABLE"},
		{"another engine", "CREATE TABLE guardian.snapshots" + cols + "ENGINE = URL('http://attacker/', TSV)", "engine"},
		{"two engines", "CREATE TABLE guardian.snapshots" + cols + "ENGINE = MergeTree\nORDER BY p\nENGINE = File(TSV)", "engine"},
		{"no engine", "CREATE TABLE guardian.snapshots" + cols, "engine"},
		{"AS SELECT", "CREATE TABLE guardian.snapshots" + cols + "ENGINE = MergeTree\nORDER BY p\nAS\nSELECT payload FROM guardian.snapshots", "query"},
		{"AS another table", "CREATE TABLE guardian.snapshots" + cols + "ENGINE = MergeTree\nORDER BY p\nAS guardian.other", "AS"},
		{"a subquery in a default", "CREATE TABLE guardian.snapshots\n(\n    `p` String DEFAULT (\n        SELECT any(payload)\n        FROM guardian.snapshots\n    )\n)\nENGINE = MergeTree\nORDER BY p", "query"},
		{"a line comment", "CREATE TABLE guardian.snapshots" + cols + "ENGINE = MergeTree\nORDER BY p -- '\nENGINE = URL('http://attacker/', TSV)", "comment"},
		{"a block comment", "CREATE TABLE guardian.snapshots" + cols + "/* ' */\nENGINE = MergeTree\nORDER BY p", "comment"},
		{"a second statement", "CREATE TABLE guardian.snapshots" + cols + "ENGINE = MergeTree\nORDER BY p;\nDROP TABLE guardian.snapshots", "second statement"},
		{"a subquery, names in double quotes", "CREATE TABLE \"guardian\".\"snapshots\"\n(\n    \"p\" String DEFAULT (SELECT 1)\n)\nENGINE = MergeTree\nORDER BY \"p\"", "query"},
		{"a TTL it cannot delimit", "CREATE TABLE guardian.snapshots\n(\n    `ttl` DateTime\n)\nENGINE = MergeTree\nORDER BY ttl\nTTL ttl + toIntervalDay(1)", "more than one TTL"},
	} {
		got, err := scratchCreate(TableManifest{Name: "snapshots", Create: c.in}, "guardian", "restore_verify_x")
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %q, %v; want refused with %q", c.name, got, err, c.want)
		} else if strings.Contains(err.Error(), "attacker") {
			t.Errorf("%s: the error quotes the statement: %v", c.name, err)
		}
	}
}

// currentCreate is db.table's statement as current ClickHouse versions'
// SHOW CREATE TABLE prints it (one clause a line, backquoted columns, a
// table TTL where Guardian gives one), made from what 18.16 reports of the
// table; payload columns get a comment.
func currentCreate(t *testing.T, f *fixture, db, table string) string {
	t.Helper()
	cols, err := rows[struct{ Name, Type string }](context.Background(), f.ch,
		"SELECT name AS Name, type AS Type FROM system.columns WHERE database = "+quoteString(db)+" AND table = "+quoteString(table))
	if err != nil {
		t.Fatal(err)
	}
	keys, err := one[struct{ Partition, Sorting string }](context.Background(), f.ch,
		"SELECT partition_key AS Partition, sorting_key AS Sorting FROM system.tables WHERE database = "+quoteString(db)+" AND name = "+quoteString(table))
	if err != nil {
		t.Fatal(err)
	}
	name := db
	if !validIdent(db) {
		name = quoteIdent(db)
	}
	var b strings.Builder
	b.WriteString("CREATE TABLE " + name + "." + table + "\n(\n")
	ttl := ""
	for i, c := range cols {
		if i > 0 {
			b.WriteString(",\n")
		}
		b.WriteString("    `" + c.Name + "` " + c.Type)
		switch c.Name {
		case "payload":
			b.WriteString(" COMMENT 'JSON, as the collector sent it'")
		case "retention_days":
			ttl = "ts + toIntervalDay(retention_days)"
		case "ts":
			if ttl == "" {
				ttl = "ts + toIntervalDay(365)"
			}
		}
	}
	b.WriteString("\n)\nENGINE = MergeTree\n")
	if keys.Partition != "" {
		b.WriteString("PARTITION BY " + keys.Partition + "\n")
	}
	if strings.Contains(keys.Sorting, ",") {
		keys.Sorting = "(" + keys.Sorting + ")"
	}
	b.WriteString("ORDER BY " + keys.Sorting + "\n")
	if ttl != "" {
		b.WriteString("TTL " + ttl + "\n")
	}
	b.WriteString("SETTINGS index_granularity = 8192")
	return b.String()
}

// A set taken from a current ClickHouse holds its multi-line statements
// (a proxy answers SHOW CREATE TABLE as such a server does): every table
// is created in the scratch database from them, without the table TTL,
// and verifies.
func TestVerifyLoadsACurrentServersStatements(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1)
	db := f.cfg.ClickHouse.Database
	tables, err := rows[struct{ Name string }](context.Background(), f.ch,
		"SELECT name AS Name FROM system.tables WHERE database = "+quoteString(db)+" AND engine = 'MergeTree'")
	if err != nil {
		t.Fatal(err)
	}
	shown := map[string]string{}
	for _, tb := range tables {
		shown[tb.Name] = currentCreate(t, f, db, tb.Name)
	}
	if !strings.Contains(shown["snapshots"], "\nTTL ts + toIntervalDay(retention_days)\n") {
		t.Fatalf("the snapshots table shown as %q", shown["snapshots"])
	}
	p := newCHProxy(t, f.cfg.HTTPURL, func(q string) (string, bool) {
		rest, ok := strings.CutPrefix(q, "SHOW CREATE TABLE "+quoteIdent(db)+".")
		if !ok {
			return "", false
		}
		name, _, _ := strings.Cut(strings.TrimPrefix(rest, "`"), "`")
		stmt, ok := shown[name]
		if !ok {
			return "", false
		}
		b, _ := json.Marshal(map[string]string{"statement": stmt})
		return string(b) + "\n", true
	})
	cfg := f.cfg
	cfg.HTTPURL = p.url
	f.tick.Add(1)
	info, err := Backup(context.Background(), cfg)
	if err != nil {
		t.Fatalf("backup: %v", err)
	}
	m := f.manifest(t, 0, info.Name)
	for _, tm := range m.Tables {
		if tm.Create != shown[tm.Name] {
			t.Fatalf("the manifest holds %q for %s, the server showed %q", tm.Create, tm.Name, shown[tm.Name])
		}
	}

	before := scratchDatabases(t, f)
	rep, err := VerifyLatest(context.Background(), cfg, f.id)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if tv := rep.Targets[0]; tv.Tables != len(m.Tables) || tv.Rows != info.Rows || tv.Rows < 1000 {
		t.Errorf("verified %+v, the set has %d tables, %d rows", tv, len(m.Tables), info.Rows)
	}
	dbs := p.statements("CREATE DATABASE ")
	if len(dbs) != 1 {
		t.Fatalf("created %q", dbs)
	}
	scratch := strings.TrimPrefix(dbs[0], "CREATE DATABASE ")
	creates := p.tableCreates()
	if len(creates) != len(m.Tables) {
		t.Fatalf("%d tables created, the set has %d", len(creates), len(m.Tables))
	}
	for i, tm := range m.Tables {
		want := "CREATE TABLE " + scratch + "." + quoteIdent(tm.Name) + tm.Create[strings.Index(tm.Create, "\n("):]
		if ttl := strings.Index(want, "\nTTL "); ttl >= 0 {
			want = want[:ttl] + want[strings.Index(want, "\nSETTINGS "):]
		}
		if creates[i] != want {
			t.Errorf("table %s created with\n%s\nwant\n%s", tm.Name, creates[i], want)
		}
	}
	if after := scratchDatabases(t, f); after != before {
		t.Errorf("scratch databases: %d before, %d after", before, after)
	}
}

// Whatever a manifest on the backup host holds, a statement scratchCreate
// makes creates the table in the scratch database and nowhere else: it
// begins with that name, and the rest is the manifest's own text after its
// name, which the check passed (a TTL clause taken out).
func FuzzScratchCreate(f *testing.F) {
	f.Add("guardian", "snapshots", "CREATE TABLE guardian.snapshots (`ts` DateTime) ENGINE = MergeTree ORDER BY ts TTL ts + toIntervalDay(90) SETTINGS index_granularity = 8192")
	f.Add("guardian", "t", "CREATE TABLE `guardian`.`t` UUID '0b3c8a4e-51d2-4f0e-9a57-3f1c2d4e5f60' (`x` UInt8) ENGINE = MergeTree ORDER BY x")
	f.Add("g-x", "a`b", "CREATE TABLE `g-x`.`a\\`b` (`x` UInt8) ENGINE = MergeTree ORDER BY x")
	f.Add("guardian", "t", "CREATE TABLE guardian.t2 (`x` UInt8) ENGINE = MergeTree ORDER BY x")
	f.Add("guardian", "t", "CREATE TABLE guardian.t (`x` UInt8) ENGINE = MergeTree ORDER BY x; CREATE TABLE guardian.t (`x` UInt8) ENGINE = MergeTree ORDER BY x")
	const scratch = "restore_verify_0123abcd_1796090268_0123456789ab"
	f.Fuzz(func(t *testing.T, db, table, stmt string) {
		create, err := scratchCreate(TableManifest{Name: table, Create: stmt}, db, scratch)
		if err != nil {
			return
		}
		head := "CREATE TABLE " + quoteIdent(scratch) + "." + quoteIdent(table)
		rest, ok := strings.CutPrefix(create, head)
		if !ok || !strings.HasPrefix(strings.TrimLeft(rest, " \t\r\n"), "(") {
			t.Fatalf("%q of %s.%s became %q, not a table of %s", stmt, db, table, create, scratch)
		}
		if checkCreate(stmt) != nil || checkCreate(create) != nil {
			t.Fatalf("%q became %q, past the check", stmt, create)
		}
		// The rest is the manifest's text after its name, the TTL aside.
		noTTL, err := stripTableTTL(stmt)
		if err != nil || !strings.HasSuffix(noTTL, rest) {
			t.Fatalf("%q became %q, whose body is not the manifest's (%v)", stmt, create, err)
		}
	})
}
