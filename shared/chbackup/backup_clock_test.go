package chbackup

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// plantSet makes a set directory at target 0 named name, which the backup
// host (the directory's modification time) dates at made.
func (f *fixture) plantSet(t *testing.T, name string, made time.Time) {
	t.Helper()
	dir := filepath.Join(f.root[0], name)
	if err := os.MkdirAll(filepath.Join(dir, "snapshots"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(dir, made, made); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) setLatest(t *testing.T, name string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(f.root[0], latestName), []byte(name+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) exists(name string) bool {
	_, err := os.Stat(filepath.Join(f.root[0], name))
	return err == nil
}

// failingBackup runs Backup at the next minute against a database that
// does not exist: the run fails after its targets were prepared.
func (f *fixture) failingBackup(t *testing.T) SetInfo {
	t.Helper()
	cfg := f.cfg
	cfg.ClickHouse.Database = "no_such_database"
	f.tick.Add(1)
	info, err := Backup(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "no MergeTree table") {
		t.Fatalf("backup of a missing database: %v", err)
	}
	return info
}

// A set a clock that ran ahead named a year on (made yesterday, says the
// backup host) would never be pruned by its name: it is kept while it is
// the last good set, LATEST's, through a failing run too, and pruned by
// the first run that completes a newer one.
func TestASetNamedAheadGoesOnceANewerSetExists(t *testing.T) {
	f := newFixture(t, 1)
	first := f.backup(t)
	now := f.cfg.now()
	ahead := now.AddDate(1, 0, 0).Format(setLayout)
	f.plantSet(t, ahead, now.Add(-24*time.Hour))
	f.setLatest(t, ahead)

	if info := f.failingBackup(t); len(info.Targets[0].Pruned) != 0 || !f.exists(ahead) || !f.exists(first.Name) {
		t.Fatalf("a failing run pruned %v; the set LATEST names must stay", info.Targets[0].Pruned)
	}
	next := f.backup(t)
	if !slices.Equal(next.Targets[0].Pruned, []string{ahead}) || f.exists(ahead) {
		t.Errorf("pruned %v, want the set named ahead, %s", next.Targets[0].Pruned, ahead)
	}
	if got := f.latest(t, 0); got != next.Name || !f.exists(first.Name) {
		t.Errorf("LATEST %q (want %q); earlier set kept: %v", got, next.Name, f.exists(first.Name))
	}
}

// Without LATEST the newest set is kept: a set named ahead sorts last but
// is not the newest, and goes; when it is the only set, it stays.
func TestWithoutLatestASetNamedAheadIsNotTheNewest(t *testing.T) {
	f := newFixture(t, 1)
	first := f.backup(t)
	now := f.cfg.now()
	ahead := now.AddDate(0, 2, 0).Format(setLayout)
	f.plantSet(t, ahead, now.Add(-time.Hour))
	if err := os.Remove(filepath.Join(f.root[0], latestName)); err != nil {
		t.Fatal(err)
	}
	if info := f.failingBackup(t); !slices.Equal(info.Targets[0].Pruned, []string{ahead}) || !f.exists(first.Name) {
		t.Fatalf("pruned %v, want only %s; %s kept: %v", info.Targets[0].Pruned, ahead, first.Name, f.exists(first.Name))
	}

	// The only set, named ahead, and no LATEST: it is the last good one.
	if err := os.RemoveAll(filepath.Join(f.root[0], first.Name)); err != nil {
		t.Fatal(err)
	}
	f.plantSet(t, ahead, now.Add(-time.Hour))
	if info := f.failingBackup(t); len(info.Targets[0].Pruned) != 0 || !f.exists(ahead) {
		t.Fatalf("the only set was pruned: %v", info.Targets[0].Pruned)
	}
}

// A clock behind the sets (stepped back two days; the backup host dates
// the sets after it too) must not prune them as "named in the future" nor
// write a set that sorts before LATEST's: the run fails, naming the
// clock, and the target is left exactly as it was, expired sets included.
func TestAClockBehindTheSetsTouchesNothing(t *testing.T) {
	f := newFixture(t, 1)
	var sets []string
	for range 3 {
		info := f.backup(t)
		made, _ := time.Parse(setLayout, info.Name)
		if err := os.Chtimes(filepath.Join(f.root[0], info.Name), made, made); err != nil {
			t.Fatal(err)
		}
		sets = append(sets, info.Name)
	}
	behind := f.cfg.now().Add(-48 * time.Hour)
	expired := behind.AddDate(0, 0, -40)
	f.plantSet(t, expired.Format(setLayout), expired)
	before := listing(t, f.root[0])

	cfg := f.cfg
	cfg.clock = func() time.Time { return behind }
	info, err := Backup(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "clock") || !strings.Contains(err.Error(), "behind") {
		t.Fatalf("backup by a clock two days behind: %v", err)
	}
	if info.Targets[0].OK || len(info.Targets[0].Pruned) != 0 {
		t.Errorf("target: %+v", info.Targets[0])
	}
	if after := listing(t, f.root[0]); !slices.Equal(after, before) {
		t.Errorf("the target changed:\n%v\nwant\n%v", after, before)
	}
	if got := f.latest(t, 0); got != sets[2] {
		t.Errorf("LATEST %q, want %q", got, sets[2])
	}

	// prune alone leaves them too: the backup host dates them ahead.
	r, err := dialFixture(t, f)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if pruned, err := prune(r, behind, behind.AddDate(0, 0, -60), ""); err != nil || len(pruned) != 0 {
		t.Errorf("prune by the clock behind: %v, %v", pruned, err)
	}
}

func listing(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}
