package chbackup

import (
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
	prev := set("P", map[string][]uint64{"snapshots": {6000, 4000}, "events": {30}, "schema_migrations": {12}, "empty": nil})
	cases := []struct {
		name string
		next map[string][]uint64
		want string // in the reason; "" for none
	}{
		{"the same", map[string][]uint64{"snapshots": {10000}, "events": {30}, "schema_migrations": {12}, "empty": nil}, ""},
		{"a day's retention", map[string][]uint64{"snapshots": {9000}, "events": {25}, "schema_migrations": {12}}, ""},
		{"half and more, but few rows", map[string][]uint64{"snapshots": {10000}, "events": {3}, "schema_migrations": {12}}, ""},
		{"half and many rows", map[string][]uint64{"snapshots": {4999}, "events": {30}, "schema_migrations": {12}}, "table snapshots holds 4999 rows, 10000 in P"},
		{"just half", map[string][]uint64{"snapshots": {5000}, "events": {30}, "schema_migrations": {12}}, ""},
		{"emptied, though small", map[string][]uint64{"snapshots": {10000}, "events": nil, "schema_migrations": {12}}, "table events holds 0 rows, 30 in P"},
		{"gone", map[string][]uint64{"snapshots": {10000}, "events": {30}}, "table schema_migrations is gone (12 rows in P)"},
		{"a table emptied before, and one new", map[string][]uint64{"snapshots": {10000}, "events": {30}, "schema_migrations": {12}, "new": {1}}, ""},
	}
	for _, tc := range cases {
		got := shrinkage(prev, set("N", tc.next))
		if (got == "") != (tc.want == "") || !strings.Contains(got, tc.want) {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
}
