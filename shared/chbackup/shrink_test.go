package chbackup

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// A new set replaces LATEST unasked unless a table is gone, emptied, or
// down to less than half and ShrinkRows fewer rows.
func TestShrinkage(t *testing.T) {
	t.Parallel()
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
// sets are kept: once the set LATEST names is that old, LATEST moves on to
// the newest set (the posture's deletion promise wins; a purge is a
// shrink), at the start of the next run, so even a run that then fails
// moves it.
func TestAShrunkSetIsHeldNoLongerThanSetsAreKept(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1)
	first := f.backup(t)
	f.exec(t, "TRUNCATE TABLE "+f.cfg.ClickHouse.Database+".snapshots")

	held := f.backup(t)
	if len(held.Shrunk) != 1 || held.Targets[0].OK || !strings.Contains(held.Targets[0].Held, "snapshots holds 0 rows, 1000 in "+first.Name) || f.latest(t, 0) != first.Name {
		t.Fatalf("held: %+v, LATEST %s", held, f.latest(t, 0))
	}

	old := f.age(t, first.Name, 29)
	broken := f.cfg
	broken.HTTPURL = "http://127.0.0.1:1"
	f.tick.Add(1)
	info, err := Backup(context.Background(), broken)
	if err == nil {
		t.Fatal("a backup without ClickHouse succeeded")
	}
	if f.latest(t, 0) != held.Name || !strings.Contains(info.Targets[0].Moved, "as old as sets are kept") {
		t.Fatalf("a failed run after a month held: LATEST %s, %+v", f.latest(t, 0), info.Targets[0])
	}
	if _, err := os.Stat(filepath.Join(f.root[0], old)); !os.IsNotExist(err) {
		t.Errorf("the held set was kept past its time (%v)", err)
	}
}

// Without a newer set to move to, the shrunken run's own set takes the
// place of a LATEST as old as sets are kept, and says why.
func TestAShrunkSetReplacesALatestAsOldAsSetsAreKept(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1)
	first := f.backup(t)
	old := f.age(t, first.Name, 29)
	f.exec(t, "TRUNCATE TABLE "+f.cfg.ClickHouse.Database+".snapshots")
	moved := f.backup(t)
	if len(moved.Shrunk) != 0 || !moved.Targets[0].OK || !strings.Contains(moved.Targets[0].Moved, "moved all the same") || f.latest(t, 0) != moved.Name {
		t.Fatalf("moved: %+v, LATEST %s", moved, f.latest(t, 0))
	}
	if _, err := os.Stat(filepath.Join(f.root[0], old)); !os.IsNotExist(err) {
		t.Errorf("the old set was kept past its time (%v)", err)
	}
}

// age renames set, which LATEST names, at the first target as if made
// days ago, and returns its new name.
func (f *fixture) age(t *testing.T, set string, days int) string {
	t.Helper()
	old := f.cfg.now().AddDate(0, 0, -days).Format(setLayout)
	if err := os.Rename(filepath.Join(f.root[0], set), filepath.Join(f.root[0], old)); err != nil {
		t.Fatal(err)
	}
	mf := filepath.Join(f.root[0], old, manifestName)
	b, err := os.ReadFile(mf)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(mf, []byte(strings.Replace(string(b), set, old, 1)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(f.root[0], latestName), []byte(old+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return old
}

// A held LATEST as old as sets are kept that cannot be moved (the backup
// host refuses the write) keeps the set it names, fails the target
// saying so, and still prunes the other expired sets; the next run that
// can write moves it.
func TestAHeldLatestThatCannotMoveKeepsItsSet(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1)
	first := f.backup(t)
	f.exec(t, "TRUNCATE TABLE "+f.cfg.ClickHouse.Database+".snapshots")
	held := f.backup(t)
	if held.Targets[0].Held == "" {
		t.Fatalf("not held: %+v", held.Targets[0])
	}
	// An expired set LATEST does not name, which pruning must still take.
	other := f.cfg.now().AddDate(0, 0, -40).Format(setLayout)
	if err := os.Mkdir(filepath.Join(f.root[0], other), 0o700); err != nil {
		t.Fatal(err)
	}
	old := f.age(t, first.Name, 29)
	latest := filepath.Join(f.root[0], latestName)
	// Tests run as root, whom permissions do not stop; an immutable file
	// cannot be replaced by rename(2), even by root.
	if out, err := exec.Command("chattr", "+i", latest).CombinedOutput(); err != nil {
		t.Skipf("chattr +i (a file system without attributes?): %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("chattr", "-i", latest).Run() })

	f.tick.Add(1)
	info, err := Backup(context.Background(), f.cfg)
	if err == nil || !strings.Contains(err.Error(), "move "+latestName+" from "+old) {
		t.Fatalf("a LATEST that cannot move: %v", err)
	}
	if f.latest(t, 0) != old || info.Targets[0].OK || info.Targets[0].Moved != "" {
		t.Fatalf("LATEST %s, %+v", f.latest(t, 0), info.Targets[0])
	}
	if _, err := os.Stat(filepath.Join(f.root[0], old, manifestName)); err != nil {
		t.Errorf("the set LATEST still names is gone: %v", err)
	}
	if _, err := os.Stat(filepath.Join(f.root[0], other)); !os.IsNotExist(err) {
		t.Errorf("the other expired set was kept (%v)", err)
	}

	if out, err := exec.Command("chattr", "-i", latest).CombinedOutput(); err != nil {
		t.Fatalf("chattr -i: %v: %s", err, out)
	}
	f.tick.Add(1)
	info, err = Backup(context.Background(), f.cfg)
	if err != nil || !strings.Contains(info.Targets[0].Moved, "as old as sets are kept") || f.latest(t, 0) == old {
		t.Fatalf("the run after: %v, LATEST %s, %+v", err, f.latest(t, 0), info.Targets[0])
	}
	if _, err := os.Stat(filepath.Join(f.root[0], old)); !os.IsNotExist(err) {
		t.Errorf("the held set was kept past its time (%v)", err)
	}
}
