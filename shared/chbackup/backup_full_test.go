package chbackup

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fullTarget mounts a tmpfs at target 0's directory, lets it hold what
// setup puts there, and then no more entries (its inode limit set to what
// it uses): a backup host's disk that is full.
func (f *fixture) fullTarget(t *testing.T, setup func(root string)) {
	t.Helper()
	root := f.root[0]
	if err := os.MkdirAll(root, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", root).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs to fill (needs root): %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", root).Run() })
	setup(root)
	var st syscall.Statfs_t
	if err := syscall.Statfs(root, &st); err != nil {
		t.Fatal(err)
	}
	used := st.Files - st.Ffree
	if out, err := exec.Command("mount", "-o", fmt.Sprintf("remount,nr_inodes=%d", used), root).CombinedOutput(); err != nil {
		t.Skipf("cannot limit the tmpfs to the entries it holds: %v %s", err, out)
	}
	if err := os.Mkdir(filepath.Join(root, "probe"), 0o700); err == nil {
		t.Fatal("the full target still takes entries")
	}
}

// plantExpired plants a set days old holding n files.
func (f *fixture) plantExpired(t *testing.T, days, n int) string {
	t.Helper()
	at := f.cfg.now().AddDate(0, 0, -days)
	name := at.Format(setLayout)
	f.plantSet(t, name, at)
	for i := range n {
		if err := os.WriteFile(filepath.Join(f.root[0], name, "snapshots", fmt.Sprint(i)), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chtimes(filepath.Join(f.root[0], name), at, at); err != nil {
		t.Fatal(err)
	}
	return name
}

// A backup host's disk full of expired sets and an interrupted run's
// leftover: the run removes the leftover first, which makes room for the
// new set's directory, so the clock check runs, the older expired set is
// pruned, and the new set fits.
func TestAFullDiskIsRelievedByLeftoversAndPruning(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1)
	var expired, leftover string
	f.fullTarget(t, func(root string) {
		// The newest set left is kept, however old (the last good one):
		// the older one is what pruning may remove.
		expired = f.plantExpired(t, 41, 300)
		f.plantExpired(t, 40, 1)
		leftover = f.cfg.now().Add(-time.Hour).Format(setLayout) + partialSuffix
		if err := os.Mkdir(filepath.Join(root, leftover), 0o700); err != nil {
			t.Fatal(err)
		}
	})
	f.tick.Add(1)
	info, err := Backup(context.Background(), f.cfg)
	if err != nil {
		t.Fatalf("backup: %v (target: %s; pruned %v)", err, info.Targets[0].Error, info.Targets[0].Pruned)
	}
	if f.exists(expired) || f.exists(leftover) || !f.exists(info.Name) {
		t.Fatalf("after the run: expired set there %v, leftover there %v, new set there %v", f.exists(expired), f.exists(leftover), f.exists(info.Name))
	}
}

// Full with nothing a run may remove without the clock check: the run
// fails at the target saying so, and prunes nothing (by a clock it could
// not check, pruning could remove the newest sets).
func TestAFullDiskWithoutLeftoversFailsAndPrunesNothing(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1)
	var expired string
	f.fullTarget(t, func(string) {
		expired = f.plantExpired(t, 41, 10)
		f.plantExpired(t, 40, 1)
	})
	f.tick.Add(1)
	_, err := Backup(context.Background(), f.cfg)
	if err == nil || !strings.Contains(err.Error(), "a full disk?") {
		t.Fatalf("backup to a full disk: %v", err)
	}
	if !f.exists(expired) {
		t.Fatal("a set was pruned without the clock check")
	}
}
