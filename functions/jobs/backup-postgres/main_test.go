package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/glassmkr/guardian/shared/chbackup"
	"github.com/glassmkr/guardian/shared/job"
	"github.com/glassmkr/guardian/shared/pgbackup"
	"github.com/glassmkr/guardian/shared/pgbackup/pgbackuptest"
	"github.com/glassmkr/guardian/shared/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

func TestScheduledKind(t *testing.T) {
	utc := func(s string) time.Time {
		v, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	sunday := utc("2026-11-22T03:00:00Z") // the last Sunday's full
	cases := []struct {
		name     string
		now      time.Time
		lastFull time.Time
		want     string
	}{
		{"a weekday with a full backup takes a diff", utc("2026-11-25T02:00:00Z"), sunday, pgbackup.Diff},
		{"a Sunday takes a full", utc("2026-11-29T03:00:00Z"), sunday, pgbackup.Full},
		{"a weekday without any full backup takes a full", utc("2026-11-25T02:00:00Z"), time.Time{}, pgbackup.Full},
		{"Sunday is judged in UTC, not local time", utc("2026-11-28T23:30:00-02:00"), sunday, pgbackup.Full},
		{"Saturday's run, 23 h short of a week, is a diff", utc("2026-11-28T02:00:00Z"), sunday, pgbackup.Diff},
		{"Saturday late UTC is still a diff", utc("2026-11-28T23:59:59Z"), utc("2026-11-22T00:00:01Z"), pgbackup.Diff},
		{"a local Monday that is still Sunday in UTC takes a full", utc("2026-11-30T00:00:01+05:00"), sunday, pgbackup.Full},
		{"Monday in UTC is a diff again", utc("2026-11-30T02:00:00Z"), utc("2026-11-29T03:00:00Z"), pgbackup.Diff},
		{"Monday after a missed Sunday takes the full", utc("2026-11-30T02:00:00Z"), sunday, pgbackup.Full},
		{"any day a week after the last full takes one", utc("2026-12-02T02:00:00Z"), utc("2026-11-25T01:00:00Z"), pgbackup.Full},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := scheduledKind(tc.now, tc.lastFull); got != tc.want {
				t.Errorf("scheduledKind(%s, %s) = %s, want %s", tc.now, tc.lastFull, got, tc.want)
			}
		})
	}
}

// TestJobTakesFullThenDiff runs the job twice through job.Execute on a
// real archiving cluster: without an argument on a fresh repository it
// must take a full backup (on any weekday), then `diff` takes a diff.
func TestJobTakesFullThenDiff(t *testing.T) {
	c := pgbackuptest.Start(t, 1)
	// repo1 is also copied to a directory of a real sshd (the backup host).
	srv := testenv.SFTPServer(t)
	target := srv.Target("pgbackrest")
	extra := map[string]string{job.EnvLockDir: t.TempDir(),
		pgbackup.EnvSFTPTargets: target, chbackup.EnvSSHKey: srv.KeyPath, chbackup.EnvKnownHosts: srv.KnownHosts}
	wednesday := func() time.Time { return time.Date(2026, 11, 25, 3, 0, 0, 0, time.UTC) }
	for _, tc := range []struct {
		args []string
		want string
	}{{nil, pgbackup.Full}, {[]string{"diff"}, pgbackup.Diff}} {
		var out, errOut bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		res := job.Execute(ctx, spec(tc.args, wednesday), c.Lookup(extra), &out, &errOut)
		cancel()
		var line map[string]any
		if err := json.Unmarshal(out.Bytes(), &line); err != nil {
			t.Fatalf("result line %q: %v", out.String(), err)
		}
		if res.Status != job.StatusOK || line["status"] != "ok" || line["job"] != "backup-postgres" {
			t.Fatalf("args %v: %s\n%s", tc.args, out.String(), errOut.String())
		}
		label, _ := line["label"].(string)
		if line["type"] != tc.want || label == "" || line["size_bytes"].(float64) <= 0 || line["backup_ms"] == nil {
			t.Errorf("args %v: %s", tc.args, out.String())
		}
		if tc.want == pgbackup.Diff && !strings.HasSuffix(label, "D") {
			t.Errorf("diff label %q", label)
		}
		for _, r := range c.Config.Repos {
			if strings.Contains(out.String()+errOut.String(), r.CipherPass) {
				t.Fatal("the result leaks a passphrase")
			}
		}
		mirrors, _ := line["mirrors"].([]any)
		if len(mirrors) != 1 {
			t.Fatalf("args %v: mirrors %v", tc.args, line["mirrors"])
		}
		if local, remote := files(t, c.Config.Repos[0].Path), files(t, filepath.Join(srv.Root, "pgbackrest")); !maps.Equal(local, remote) {
			t.Fatalf("args %v: the copy on the backup host differs from repo1:\nrepo1 %v\ncopy  %v", tc.args, local, remote)
		}
	}

	// `mirror`: WAL archived after the last backup reaches the backup host
	// without a backup, as the job backup-postgres-mirror.
	before := files(t, c.Config.Repos[0].Path)
	c.Superuser(t, "postgres", "CREATE TABLE mirror_canary (x int)", "INSERT INTO mirror_canary VALUES (1)", "SELECT pg_switch_wal()")
	for deadline := time.Now().Add(time.Minute); maps.Equal(before, files(t, c.Config.Repos[0].Path)); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no WAL archived within a minute of pg_switch_wal")
		}
	}
	var out, errOut bytes.Buffer
	res := job.Execute(context.Background(), spec([]string{"mirror"}, wednesday), c.Lookup(extra), &out, &errOut)
	var line map[string]any
	if err := json.Unmarshal(out.Bytes(), &line); err != nil || res.Status != job.StatusOK || line["job"] != "backup-postgres-mirror" || line["label"] != nil {
		t.Fatalf("mirror: %s %v\n%s", out.String(), err, errOut.String())
	}
	if local, remote := files(t, c.Config.Repos[0].Path), files(t, filepath.Join(srv.Root, "pgbackrest")); !maps.Equal(local, remote) || maps.Equal(local, before) {
		t.Fatalf("after mirror: the copy differs from repo1, or nothing new was archived:\nrepo1 %v\ncopy  %v", local, remote)
	}
	// Without a backup host there is nothing to mirror to: an error.
	noTargets := maps.Clone(extra)
	delete(noTargets, pgbackup.EnvSFTPTargets)
	out.Reset()
	if res := job.Execute(context.Background(), spec([]string{"mirror"}, wednesday), c.Lookup(noTargets), &out, io.Discard); res.Status != job.StatusError || !strings.Contains(res.Err, pgbackup.EnvSFTPTargets) {
		t.Fatalf("mirror without targets: %s %s", res.Status, out.String())
	}

	// A backup host whose key is not the pinned one: the backup is taken,
	// the run is red (its copy off the host is stale), nothing is sent.
	other := testenv.SFTPServer(t)
	extra[chbackup.EnvKnownHosts] = other.KnownHosts
	out.Reset()
	errOut.Reset()
	sent := files(t, filepath.Join(srv.Root, "pgbackrest"))
	res = job.Execute(context.Background(), spec([]string{"diff"}, wednesday), c.Lookup(extra), &out, &errOut)
	if res.Status != job.StatusRed || !strings.Contains(out.String(), "not up to date") || !strings.Contains(out.String(), `"type":"diff"`) {
		t.Fatalf("mirror to an unpinned host: %s %s\n%s", res.Status, out.String(), errOut.String())
	}
	if after := files(t, filepath.Join(srv.Root, "pgbackrest")); !maps.Equal(after, sent) {
		t.Fatalf("files reached a host whose key is not the pinned one:\nbefore %v\nafter  %v", sent, after)
	}
	if local := files(t, c.Config.Repos[0].Path); maps.Equal(local, sent) {
		t.Fatal("the diff backup did not reach repo1 either")
	}
}

// TestAFailedRepositoryDoesNotStopTheOther: with the second repository
// unwritable (an off-site mount gone: its directory is a file now), the
// run fails naming repo2, and repo1 still gets its backup (asynchronous
// archiving keeps its WAL coming). Once repo2 is back, both are backed up,
// each with the kind its own backups call for.
func TestAFailedRepositoryDoesNotStopTheOther(t *testing.T) {
	c := pgbackuptest.Start(t, 2)
	extra := map[string]string{job.EnvLockDir: t.TempDir(),
		pgbackup.EnvArchiveAsync: "1", pgbackup.EnvSpoolPath: filepath.Join(c.Work, "spool")}
	repo2 := c.Config.Repos[1].Path
	if err := os.Rename(repo2, repo2+".away"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(repo2, []byte("not a directory"), 0o644); err != nil {
		t.Fatal(err)
	}
	wednesday := func() time.Time { return time.Date(2026, 11, 25, 2, 0, 0, 0, time.UTC) }
	run := func() (job.Result, map[string]any, string) {
		t.Helper()
		var out, errOut bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		res := job.Execute(ctx, spec(nil, wednesday), c.Lookup(extra), &out, &errOut)
		var line map[string]any
		if err := json.Unmarshal(out.Bytes(), &line); err != nil {
			t.Fatalf("result line %q: %v", out.String(), err)
		}
		return res, line, out.String() + errOut.String()
	}
	res, line, text := run()
	if res.Status != job.StatusError || !strings.Contains(res.Err, "repo2") || strings.Contains(res.Err, "repo1") || line["failed_repos"] != float64(1) {
		t.Fatalf("with repo2 gone: %s %q\n%s", res.Status, res.Err, text)
	}
	backups, _ := line["backups"].([]any)
	if len(backups) != 1 || backups[0].(map[string]any)["repo"] != float64(1) || line["type"] != pgbackup.Full {
		t.Fatalf("with repo2 gone, repo1's backup: %v\n%s", line["backups"], text)
	}

	if err := os.Remove(repo2); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(repo2+".away", repo2); err != nil {
		t.Fatal(err)
	}
	res, line, text = run()
	if res.Status != job.StatusOK {
		t.Fatalf("with repo2 back: %s %q\n%s", res.Status, res.Err, text)
	}
	// Each repository's kind is its own: repo1 has its full and takes a
	// diff, repo2, back without one, takes a full.
	backups, _ = line["backups"].([]any)
	if len(backups) != 2 {
		t.Fatalf("with repo2 back: backups %v", line["backups"])
	}
	for _, b := range backups {
		b := b.(map[string]any)
		if want := map[float64]string{1: pgbackup.Diff, 2: pgbackup.Full}[b["repo"].(float64)]; b["type"] != want {
			t.Errorf("with repo2 back: repo%v took a %v backup, want %s", b["repo"], b["type"], want)
		}
	}
}

// files lists the regular files under dir with their sizes, leaving out
// pgBackRest's temporary files (written while WAL arrives).
func files(t *testing.T, dir string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() || strings.HasSuffix(d.Name(), ".tmp") {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out[rel] = info.Size()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestJobRejectsAnUnknownKind(t *testing.T) {
	var out, errOut bytes.Buffer
	lockDir := t.TempDir()
	lookup := func(k string) (string, bool) {
		if k == job.EnvLockDir {
			return lockDir, true
		}
		return "", false
	}
	res := job.Execute(context.Background(), spec([]string{"weekly"}, time.Now), lookup, &out, &errOut)
	if res.Status != job.StatusError || !strings.Contains(res.Err, "usage") {
		t.Fatalf("%+v", res)
	}
}

// pgBackRest finishes with exit 0 when it found page checksum errors and
// only marks the backup: the job turns that mark into a red run.
func TestChecksumErrorsMakeTheRunRed(t *testing.T) {
	clean := []pgbackup.BackupInfo{{Label: "20261129-020000F", Repo: 1}}
	if err := checksumErrors(clean); err != nil {
		t.Fatalf("a clean backup: %v", err)
	}
	damaged := append(clean, pgbackup.BackupInfo{Label: "20261129-020000F", Repo: 2, Error: true})
	err := checksumErrors(damaged)
	if !errors.Is(err, job.ErrRed) || !strings.Contains(err.Error(), "repo2") || strings.Contains(err.Error(), "repo1") {
		t.Fatalf("a backup with checksum errors: %v, want red naming repo2 only", err)
	}
}

// A copy repaired by reading it back makes the run red, naming the
// target and the files; one with nothing repaired does not.
func TestARepairedCopyMakesTheRunRed(t *testing.T) {
	if err := repaired([]pgbackup.MirrorReport{{Target: "b@h:22/x", Compared: 40}}); err != nil {
		t.Fatalf("nothing repaired: %v", err)
	}
	err := repaired([]pgbackup.MirrorReport{{Target: "b@h:22/x", Compared: 40}, {Target: "c@h:22/y", Compared: 40, Repaired: []string{"archive/guardian/15-1/w1.zst"}}})
	if !errors.Is(err, job.ErrRed) || !strings.Contains(err.Error(), "c@h:22/y") || strings.Contains(err.Error(), "b@h:22/x") || !strings.Contains(err.Error(), "w1.zst") {
		t.Fatalf("a repaired copy: %v", err)
	}
}
