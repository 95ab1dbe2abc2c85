package migrate

import (
	"reflect"
	"testing"
)

func TestStatements(t *testing.T) {
	cases := []struct {
		name string
		in   string
		want []string
	}{
		{"comments and blank lines are dropped", "-- a comment\n\nCREATE TABLE a (x Int8);\n", []string{"CREATE TABLE a (x Int8)"}},
		{"statements split at line-ending semicolons", "CREATE TABLE a (\n  x Int8\n);\nCREATE TABLE b (y Int8);", []string{"CREATE TABLE a (\n  x Int8\n)", "CREATE TABLE b (y Int8)"}},
		{"a trailing statement without semicolon is kept", "SELECT 1", []string{"SELECT 1"}},
		{"empty input gives nothing", "\n-- only\n", nil},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := statements(tc.in); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestEmbeddedMigrationsAreOrderedAndNamed(t *testing.T) {
	for _, dir := range []string{"postgres", "clickhouse"} {
		ms, err := load(dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(ms) == 0 {
			t.Fatalf("no %s migrations embedded", dir)
		}
		for i, m := range ms {
			if m.Version != i+1 {
				t.Errorf("%s: migration %d is %s: versions must be 1, 2, 3... without gaps", dir, i, m.Name)
			}
			if len(m.Checksum) != 64 {
				t.Errorf("%s: bad checksum", m.Name)
			}
		}
	}
}

func TestParseVersion(t *testing.T) {
	cases := []struct {
		in      string
		want    Version
		ttl     bool
		wantErr bool
	}{
		{"18.16.1", Version{18, 16}, false, false},
		{"19.5.4.22", Version{19, 5}, false, false},
		{"19.6.2.11", Version{19, 6}, true, false},
		{"24.8.4.13", Version{24, 8}, true, false},
		{" 23.3 ", Version{23, 3}, true, false},
		{"", Version{}, false, true},
		{"eighteen.16", Version{}, false, true},
		{"18", Version{}, false, true},
		{"-1.2", Version{}, false, true},
	}
	for _, tc := range cases {
		v, err := ParseVersion(tc.in)
		if (err != nil) != tc.wantErr {
			t.Errorf("ParseVersion(%q) err = %v", tc.in, err)
			continue
		}
		if err == nil && (v != tc.want || v.SupportsTTL() != tc.ttl) {
			t.Errorf("ParseVersion(%q) = %v ttl=%v", tc.in, v, v.SupportsTTL())
		}
	}
}

func TestTTLStatementsCoverTheRetentionTable(t *testing.T) {
	want := map[string]string{
		"snapshots":     "ALTER TABLE g.snapshots MODIFY TTL ts + toIntervalDay(retention_days)",
		"alert_history": "ALTER TABLE g.alert_history MODIFY TTL ts + toIntervalDay(365)",
		"analyses":      "ALTER TABLE g.analyses MODIFY TTL ts + toIntervalDay(90)",
		"notifications": "ALTER TABLE g.notifications MODIFY TTL ts + toIntervalDay(90)",
	}
	for table, stmt := range want {
		if got := TTLStatement("g", table); got != stmt {
			t.Errorf("%s: %q", table, got)
		}
	}
	if len(TTLRules) != len(want) {
		t.Errorf("TTL rules for %d tables, want %d", len(TTLRules), len(want))
	}
}
