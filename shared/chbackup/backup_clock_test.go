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
// does not exist: the run fails after its targets were prepared, which
// it checks.
func (f *fixture) failingBackup(t *testing.T) SetInfo {
	t.Helper()
	cfg := f.cfg
	cfg.ClickHouse.Database = "no_such_database"
	f.tick.Add(1)
	info, err := Backup(context.Background(), cfg)
	if err == nil || !strings.Contains(err.Error(), "no MergeTree table") {
		t.Fatalf("backup of a missing database: %v", err)
	}
	if got := info.Targets[0].Error; got != "set not completed" {
		t.Fatalf("the failing run failed at the target: %s", got)
	}
	return info
}

// A run whose clock disagrees with the backup host's by more than the
// tolerance, either way, fails at that target naming both times, and
// leaves the target exactly as it was: nothing pruned (a clock a day
// ahead would prune a set 28.5 days old as expired), nothing written.
func TestAClockTheBackupHostDisagreesWithTouchesNothing(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1)
	var sets []string
	for range 2 {
		sets = append(sets, f.backup(t).Name)
	}
	now := f.cfg.now()
	almostExpired := now.Add(-28*24*time.Hour - 12*time.Hour)
	f.plantSet(t, almostExpired.Format(setLayout), almostExpired)
	expired := now.AddDate(0, 0, -40)
	f.plantSet(t, expired.Format(setLayout), expired)
	before := listing(t, f.root[0])

	for _, c := range []struct {
		name   string
		offset time.Duration
		want   string
	}{
		{"a day ahead", 24 * time.Hour, "ahead of the backup host's"},
		{"a day behind", -24 * time.Hour, "behind the backup host's"},
		{"a month ahead", 31 * 24 * time.Hour, "ahead of the backup host's"},
		{"two hours ahead", 2 * time.Hour, "ahead of the backup host's"},
	} {
		t.Run(c.name, func(t *testing.T) {
			off := f.cfg.now().Add(c.offset)
			cfg := f.cfg
			cfg.clock = func() time.Time { return off }
			info, err := Backup(context.Background(), cfg)
			if err == nil || !strings.Contains(err.Error(), "clocks disagree") || !strings.Contains(err.Error(), c.want) ||
				!strings.Contains(err.Error(), off.Format(time.RFC3339)) || !strings.Contains(err.Error(), "nothing was pruned or written") {
				t.Fatalf("backup by a clock %s: %v", c.name, err)
			}
			if info.Targets[0].OK || len(info.Targets[0].Pruned) != 0 || !strings.Contains(info.Targets[0].Error, "clocks disagree") {
				t.Errorf("target: %+v", info.Targets[0])
			}
			if after := listing(t, f.root[0]); !slices.Equal(after, before) {
				t.Errorf("the target changed:\n%v\nwant\n%v", after, before)
			}
			if got := f.latest(t, 0); got != sets[1] {
				t.Errorf("LATEST %q, want %q", got, sets[1])
			}
		})
	}

	// On the right clock again, the run prunes the expired set only.
	info := f.backup(t)
	if want := []string{expired.Format(setLayout)}; !slices.Equal(info.Targets[0].Pruned, want) {
		t.Errorf("pruned %v, want %v", info.Targets[0].Pruned, want)
	}
}

// After both clocks ran ahead together (one bad NTP source), a set is
// named and dated ahead. Once the clocks are right again, runs go on: the
// set is kept while it is the last good set, LATEST's, through a failing
// run too, and pruned by the first run that completes a newer one.
func TestASetOfClocksThatRanAheadTogetherGoesOnceANewerSetExists(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1)
	first := f.backup(t)
	now := f.cfg.now()
	aheadAt := now.Add(72 * time.Hour)
	ahead := aheadAt.Format(setLayout)
	f.plantSet(t, ahead, aheadAt)
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

// A set this host's clock alone named a year ahead (before the clocks
// were compared; the backup host dates it yesterday) goes the same way.
func TestASetNamedAheadGoesOnceANewerSetExists(t *testing.T) {
	t.Parallel()
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
}

// Without LATEST the newest set is kept: a set named ahead sorts last but
// is not the newest, and goes. When every set is named ahead, the one the
// backup host dates last stays, whatever its name.
func TestWithoutLatestASetNamedAheadIsNotTheNewest(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1)
	first := f.backup(t)
	now := f.cfg.now()
	farAt := now.AddDate(0, 2, 0)
	far := farAt.Format(setLayout)
	f.plantSet(t, far, farAt)
	if err := os.Remove(filepath.Join(f.root[0], latestName)); err != nil {
		t.Fatal(err)
	}
	if info := f.failingBackup(t); !slices.Equal(info.Targets[0].Pruned, []string{far}) || !f.exists(first.Name) {
		t.Fatalf("pruned %v, want only %s; %s kept: %v", info.Targets[0].Pruned, far, first.Name, f.exists(first.Name))
	}

	// Only sets named ahead, and no LATEST: the one made last stays (here
	// named the nearer ahead, by a clock less far ahead), the other goes.
	if err := os.RemoveAll(filepath.Join(f.root[0], first.Name)); err != nil {
		t.Fatal(err)
	}
	nearAt := now.AddDate(0, 1, 0)
	near := nearAt.Format(setLayout)
	f.plantSet(t, far, now.Add(24*time.Hour))
	f.plantSet(t, near, now.Add(48*time.Hour))
	if info := f.failingBackup(t); !slices.Equal(info.Targets[0].Pruned, []string{far}) || !f.exists(near) {
		t.Fatalf("pruned %v, want only %s; %s kept: %v", info.Targets[0].Pruned, far, near, f.exists(near))
	}
	// The only set, named ahead, and no LATEST: it is the last good one.
	if info := f.failingBackup(t); len(info.Targets[0].Pruned) != 0 || !f.exists(near) {
		t.Fatalf("the only set was pruned: %v", info.Targets[0].Pruned)
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
