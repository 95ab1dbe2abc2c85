package chbackup

import (
	"strings"
	"testing"
)

// Statements as ClickHouse's SHOW CREATE TABLE prints them: current
// versions one clause a line, 19.x and 20.x on one line, 18.16 without
// TTL. stripTableTTL must drop the table TTL, keep everything else as it
// was, and refuse what it cannot delimit.
func TestStripTableTTL(t *testing.T) {
	t.Parallel()
	const cols = "CREATE TABLE guardian.snapshots\n(\n    `customer_id` String,\n    `server_id` String,\n    `ts` DateTime,\n" +
		"    `retention_days` UInt16,\n    `payload` String\n)\nENGINE = MergeTree\nPARTITION BY toYYYYMMDD(ts)\nORDER BY (customer_id, server_id, ts)"
	cases := []struct {
		name, in, want string
	}{
		{"Guardian's retention TTL, then SETTINGS",
			cols + "\nTTL ts + toIntervalDay(retention_days)\nSETTINGS index_granularity = 8192",
			cols + "\nSETTINGS index_granularity = 8192"},
		{"TTL last",
			cols + "\nTTL ts + toIntervalDay(90)",
			cols},
		{"an explicit DELETE",
			cols + "\nTTL ts + toIntervalDay(90) DELETE\nSETTINGS index_granularity = 8192",
			cols + "\nSETTINGS index_granularity = 8192"},
		{"several TTL expressions over lines",
			cols + "\nTTL ts + toIntervalMonth(1) RECOMPRESS CODEC(ZSTD(17)),\n ts + toIntervalYear(1) RECOMPRESS CODEC(LZ4HC(10))\nSETTINGS index_granularity = 8192",
			cols + "\nSETTINGS index_granularity = 8192"},
		{"moves to disks and volumes, then a delete",
			cols + "\nTTL ts + toIntervalDay(2) TO DISK 'jbod1', ts + toIntervalDay(6) TO VOLUME 'external', ts + toIntervalDay(8) DELETE\n" +
				"SETTINGS storage_policy = 'jbods_with_external', index_granularity = 8192",
			cols + "\nSETTINGS storage_policy = 'jbods_with_external', index_granularity = 8192"},
		{"WHERE and GROUP BY ... SET",
			cols + "\nTTL ts + toIntervalMonth(1) WHERE retention_days = 7, ts + toIntervalYear(1) GROUP BY customer_id SET payload = any(payload)\n" +
				"SETTINGS merge_with_ttl_timeout = 0, index_granularity = 8192",
			cols + "\nSETTINGS merge_with_ttl_timeout = 0, index_granularity = 8192"},
		{"settings over lines and a COMMENT after them",
			cols + "\nTTL ts + toIntervalDay(90)\nSETTINGS index_granularity = 8192,\n    min_bytes_for_wide_part = 123\nCOMMENT 'keeps TTL rows'",
			cols + "\nSETTINGS index_granularity = 8192,\n    min_bytes_for_wide_part = 123\nCOMMENT 'keeps TTL rows'"},
		{"a COMMENT right after the TTL",
			cols + "\nTTL ts + toIntervalDay(90)\nCOMMENT 'snapshots'",
			cols + "\nCOMMENT 'snapshots'"},
		{"on one line, as 19.x and 20.x print it",
			"CREATE TABLE guardian.alert_history (`customer_id` String, `ts` DateTime, `state` String) ENGINE = MergeTree " +
				"PARTITION BY toYYYYMMDD(ts) ORDER BY (customer_id, ts) TTL ts + toIntervalDay(365) SETTINGS index_granularity = 8192",
			"CREATE TABLE guardian.alert_history (`customer_id` String, `ts` DateTime, `state` String) ENGINE = MergeTree " +
				"PARTITION BY toYYYYMMDD(ts) ORDER BY (customer_id, ts) SETTINGS index_granularity = 8192"},
		{"column TTLs stay",
			"CREATE TABLE guardian.t\n(\n    `d` DateTime,\n    `v` String TTL d + toIntervalDay(1),\n    `w` Int32 TTL d + toIntervalDay(2)\n)\n" +
				"ENGINE = MergeTree\nORDER BY d\nTTL d + toIntervalMonth(1)\nSETTINGS index_granularity = 8192",
			"CREATE TABLE guardian.t\n(\n    `d` DateTime,\n    `v` String TTL d + toIntervalDay(1),\n    `w` Int32 TTL d + toIntervalDay(2)\n)\n" +
				"ENGINE = MergeTree\nORDER BY d\nSETTINGS index_granularity = 8192"},
		{"a replicated engine's arguments",
			cols[:strings.Index(cols, "ENGINE")] + "ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/snapshots', '{replica}')\nORDER BY ts\nTTL ts + toIntervalDay(7)\nSETTINGS index_granularity = 8192",
			cols[:strings.Index(cols, "ENGINE")] + "ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/snapshots', '{replica}')\nORDER BY ts\nSETTINGS index_granularity = 8192"},
	}
	unchanged := []struct{ name, in string }{
		{"ClickHouse 18.16", "CREATE TABLE t_1.snapshots ( customer_id String,  server_id String,  ts DateTime,  retention_days UInt16,  payload String) " +
			"ENGINE = MergeTree PARTITION BY toYYYYMMDD(ts) ORDER BY (customer_id, server_id, ts) SETTINGS index_granularity = 8192"},
		{"no table TTL, column TTLs", "CREATE TABLE guardian.t\n(\n    `d` DateTime,\n    `v` String TTL d + toIntervalDay(1)\n)\nENGINE = MergeTree\nORDER BY d\nSETTINGS index_granularity = 8192"},
		{"TTL in a literal and a quoted name", "CREATE TABLE guardian.t\n(\n    `TTL` String DEFAULT 'TTL 1'\n)\nENGINE = MergeTree\nORDER BY `TTL`\nCOMMENT 'TTL ts'"},
	}
	refused := []struct{ name, in, want string }{
		{"a column named ttl in a key and a TTL", "CREATE TABLE guardian.t (`ttl` DateTime) ENGINE = MergeTree ORDER BY ttl\nTTL ttl + toIntervalDay(1)", "more than one TTL"},
		{"a column named ttl after BY", "CREATE TABLE guardian.t (`ttl` DateTime) ENGINE = MergeTree ORDER BY ttl SETTINGS index_granularity = 8192", "does not start a clause"},
		{"a column named ttl after an operator", "CREATE TABLE guardian.t (`ttl` DateTime) ENGINE = MergeTree ORDER BY a + ttl", "does not start a clause"},
		{"a column named settings in the TTL", cols + "\nTTL settings + toIntervalDay(1)\nSETTINGS index_granularity = 8192", "not a settings clause"},
		{"a column named comment in the TTL", cols + "\nTTL comment + toIntervalDay(1)", "not a comment clause"},
		{"a clause after the TTL out of order", "CREATE TABLE guardian.t (`d` Date) ENGINE = MergeTree TTL d + toIntervalDay(1) ORDER BY d", "ORDER clause after its TTL"},
		{"no engine", "CREATE TABLE guardian.t (`d` Date) TTL d", "no engine"},
		{"a second statement", cols + "\nTTL ts + toIntervalDay(1); DROP TABLE x", "second statement"},
	}
	for _, c := range cases {
		got, err := stripTableTTL(c.in)
		if err != nil || got != c.want {
			t.Errorf("%s:\n got %q, %v\nwant %q", c.name, got, err, c.want)
		}
		if again, err := stripTableTTL(got); err != nil || again != got {
			t.Errorf("%s: stripping twice: %q, %v", c.name, again, err)
		}
		// The expression is the clause's text after TTL, whole: ALTER
		// TABLE … MODIFY TTL puts it back after a restore.
		_, expr, err := splitTableTTL(c.in)
		if err != nil || expr == "" || !strings.Contains(c.in, "TTL "+expr) || strings.Contains(expr, "SETTINGS") ||
			strings.Contains(expr, "COMMENT") || strings.TrimSpace(expr) != expr {
			t.Errorf("%s: expression %q, %v", c.name, expr, err)
		}
		if back := strings.Replace(c.in, "TTL "+expr, "", 1); len(back)+len(expr)+4 != len(c.in) {
			t.Errorf("%s: expression %q is not the clause's text", c.name, expr)
		}
	}
	for _, c := range unchanged {
		if got, err := stripTableTTL(c.in); err != nil || got != c.in {
			t.Errorf("%s: %q, %v; want it unchanged", c.name, got, err)
		}
		if _, expr, err := splitTableTTL(c.in); err != nil || expr != "" {
			t.Errorf("%s: expression %q, %v; want none", c.name, expr, err)
		}
	}
	for _, c := range refused {
		if got, err := stripTableTTL(c.in); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %q, %v; want refused with %q", c.name, got, err, c.want)
		}
	}
}

// Whatever statement the backup host's manifest holds, a table TTL split
// off it is one clause: the statement left has no table TTL (splitting
// again finds none), and the clause makes a single statement of ALTER
// TABLE … MODIFY TTL, which a restore runs on the live server.
func FuzzSplitTableTTL(f *testing.F) {
	for _, s := range []string{
		"CREATE TABLE g.t (`ts` DateTime) ENGINE = MergeTree ORDER BY ts\nTTL ts + toIntervalDay(90)\nSETTINGS index_granularity = 8192",
		"CREATE TABLE g.t (`ts` DateTime) ENGINE = MergeTree ORDER BY ts TTL ts + toIntervalDay(1) DELETE COMMENT 'x'",
		"CREATE TABLE g.t (`ts` DateTime) ENGINE = MergeTree ORDER BY ts TTL ts + 1; DROP DATABASE g",
		"CREATE TABLE g.t (`ts` DateTime) ENGINE = MergeTree ORDER BY ts TTL (ts + 1",
		"CREATE TABLE g.t (`ts` DateTime) ENGINE = MergeTree ORDER BY ts TTL ts + 1 -- x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, stmt string) {
		stripped, expr, err := splitTableTTL(stmt)
		if err != nil || expr == "" {
			return
		}
		if again, more, err := splitTableTTL(stripped); err != nil || more != "" || again != stripped {
			t.Fatalf("%q: the statement left still splits: %q %q %v", stmt, again, more, err)
		}
		if _, err := sqlTokens("ALTER TABLE t MODIFY TTL " + expr); err != nil {
			t.Fatalf("%q: the TTL clause %q is not one clause: %v", stmt, expr, err)
		}
		// The clause is cut out whole, nothing else: put back where the
		// two part, TTL and the expression rebuild the statement, space
		// aside.
		common := 0
		for common < len(stmt) && common < len(stripped) && stmt[common] == stripped[common] {
			common++
		}
		noSpace := func(s string) string {
			return strings.Map(func(r rune) rune {
				if strings.ContainsRune(sqlSpace, r) {
					return -1
				}
				return r
			}, s)
		}
		all, head := noSpace(stmt), noSpace(stmt[:common])
		if len(all) < len(head)+3 || !strings.EqualFold(all[len(head):len(head)+3], "TTL") ||
			all[len(head)+3:] != noSpace(expr)+noSpace(stripped[common:]) {
			t.Fatalf("%q split into %q and TTL %q", stmt, stripped, expr)
		}
		// What a restore runs is no more than what was checked.
		if checkCreate(stmt) == nil && checkCreate(stripped) != nil {
			t.Fatalf("%q passes the check, its statement without TTL %q does not", stmt, stripped)
		}
	})
}
