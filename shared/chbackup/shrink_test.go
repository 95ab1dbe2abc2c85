package chbackup

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A new set replaces LATEST unasked unless a table is gone, emptied, or
// down to less than half and ShrinkRows fewer rows.
func TestShrinkage(t *testing.T) {
	set := func(name string, rows map[string][]uint64) Manifest {
		m := Manifest{Set: name}
		for table, blobs := range rows {
			tm := TableManifest{Name: table}
			for _, n := range blobs {
				tm.Blobs = append(tm.Blobs, Blob{Rows: n})
			}
			m.Tables = append(m.Tables, tm)
		}
		return m
	}
	prev := set("P", map[string][]uint64{"snapshots": {6000, 4000}, "events": {30}, "schema_migrations": {12}, "empty": nil, "alerts": {1500}})
	same := map[string][]uint64{"snapshots": {10000}, "events": {30}, "schema_migrations": {12}, "alerts": {1500}}
	with := func(table string, rows []uint64) map[string][]uint64 {
		out := map[string][]uint64{}
		for k, v := range same {
			out[k] = v
		}
		if rows == nil {
			delete(out, table)
		} else {
			out[table] = rows
		}
		return out
	}
	cases := []struct {
		name string
		next map[string][]uint64
		want string // in the reason; "" for none
	}{
		{"the same", same, ""},
		{"a day's retention", with("snapshots", []uint64{9000}), ""},
		{"half and more, but few rows", with("events", []uint64{3}), ""},
		{"a small table emptied", with("events", []uint64{}), ""},
		{"a small table gone", with("schema_migrations", nil), ""},
		{"half and many rows", with("snapshots", []uint64{4999}), "table snapshots holds 4999 rows, 10000 in P"},
		{"just half", with("snapshots", []uint64{5000}), ""},
		{"less than half, fewer than ShrinkRows less", with("alerts", []uint64{600}), ""},
		{"emptied", with("alerts", []uint64{}), "table alerts holds 0 rows, 1500 in P"},
		{"gone", with("snapshots", nil), "table snapshots is gone (10000 rows in P)"},
		{"one new", with("new", []uint64{1}), ""},
	}
	for _, tc := range cases {
		got := shrinkage(prev, set("N", tc.next))
		if (got == "") != (tc.want == "") || !strings.Contains(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}

// A set of a shrunken database is held from LATEST, but no longer than
// sets are kept: once the set LATEST names is that old, the new one takes
// its place (the posture's deletion promise wins; a purge is a shrink),
// and the run still says why.
func TestAShrunkSetIsHeldNoLongerThanSetsAreKept(t *testing.T) {
	f := newFixture(t, 1)
	first := f.backup(t)
	f.exec(t, "TRUNCATE TABLE "+f.cfg.ClickHouse.Database+".snapshots")

	held := f.backup(t)
	latest := func() string {
		b, err := os.ReadFile(filepath.Join(f.root[0], latestName))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	if len(held.Shrunk) != 1 || held.Targets[0].OK || !strings.Contains(held.Targets[0].Held, "snapshots holds 0 rows, 1000 in "+first.Name) || latest() != first.Name {
		t.Fatalf("held: %+v, LATEST %s", held, latest())
	}

	// The set LATEST names made 29 days ago.
	old := f.cfg.now().AddDate(0, 0, -29).Format(setLayout)
	if err := os.Rename(filepath.Join(f.root[0], first.Name), filepath.Join(f.root[0], old)); err != nil {
		t.Fatal(err)
	}
	mf := filepath.Join(f.root[0], old, manifestName)
	b, err := os.ReadFile(mf)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(mf, []byte(strings.Replace(string(b), first.Name, old, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.root[0], latestName), []byte(old+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	moved := f.backup(t)
	if len(moved.Shrunk) != 1 || !strings.Contains(moved.Shrunk[0], "LATEST moved all the same") || !moved.Targets[0].OK || latest() != moved.Name {
		t.Fatalf("moved: %+v, LATEST %s", moved, latest())
	}
	if _, err := os.Stat(filepath.Join(f.root[0], old)); !os.IsNotExist(err) {
		t.Errorf("the old set was kept past its time (%v)", err)
	}
}
