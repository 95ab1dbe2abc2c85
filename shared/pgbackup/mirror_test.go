package pgbackup

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/glassmkr/guardian/shared/chbackup"
	"github.com/glassmkr/guardian/shared/testenv"
)

// tree reads every regular file under dir (slash paths to contents).
func tree(t *testing.T, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		rel, _ := filepath.Rel(dir, p)
		out[filepath.ToSlash(rel)] = string(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func write(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for rel, body := range files {
		p := filepath.Join(dir, filepath.FromSlash(rel))
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o640); err != nil {
			t.Fatal(err)
		}
	}
}

// copyHost is a real sshd standing for the backup host, and the copy's
// directory on it.
type copyHost struct {
	srv    *testenv.SFTP
	target chbackup.Target
}

func newCopyHost(t *testing.T) *copyHost {
	t.Helper()
	srv := testenv.SFTPServer(t)
	target, err := chbackup.ParseTarget(srv.Target("pgbackrest"))
	if err != nil {
		t.Fatal(err)
	}
	return &copyHost{srv, target}
}

// fetcher opens a session to the host, closed with t, and looks up the
// owner fetched files get: what fetchSettled and fetch take.
func (h *copyHost) fetcher(t *testing.T) (*chbackup.Session, *osUser) {
	t.Helper()
	s, err := chbackup.DialSession(context.Background(), h.srv.KeyPath, h.srv.KnownHosts, h.target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	owner, err := lookupOwner("root")
	if err != nil {
		t.Fatal(err)
	}
	return s, owner
}

// smallRepository is a repository-shaped tree with one backup: its
// backup.info says "info v1".
func smallRepository(t *testing.T) string {
	t.Helper()
	repo := t.TempDir()
	write(t, repo, map[string]string{
		"backup/guardian/backup.info":                      "info v1",
		"backup/guardian/20261122-030000F/backup.manifest": "manifest F1",
		"archive/guardian/archive.info":                    "archive v1",
	})
	return repo
}

// mirror runs Mirror of repo to the host over a session of its own.
func (h *copyHost) mirror(t *testing.T, repo string, check func(string) bool) (MirrorReport, error) {
	t.Helper()
	ctx := context.Background()
	s, err := chbackup.DialSession(ctx, h.srv.KeyPath, h.srv.KnownHosts, h.target)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	return Mirror(ctx, repo, s, h.target.String(), check)
}

// TestMirrorKeepsARestorableCopy mirrors a repository-shaped tree to a
// real sshd, changes it as pgBackRest does (a new backup and WAL, rewritten
// .info files, an expired backup) and mirrors again.
func TestMirrorKeepsARestorableCopy(t *testing.T) {
	t.Parallel()
	host := newCopyHost(t)
	target := host.target
	repo := t.TempDir()
	write(t, repo, map[string]string{
		"backup/guardian/backup.info":                                                            "info v1",
		"backup/guardian/backup.info.copy":                                                       "info v1",
		"backup/guardian/20261122-030000F/backup.manifest":                                       "manifest F1",
		"backup/guardian/20261122-030000F/pg_data/base/1.zst":                                    strings.Repeat("a", 300_000),
		"backup/guardian/20261129-030000F/backup.manifest":                                       "manifest F2",
		"archive/guardian/archive.info":                                                          "archive v1",
		"archive/guardian/15-1/0000000100000000/000000010000000000000001-abc.zst":                "wal 1",
		"archive/guardian/15-1/0000000100000000/000000010000000000000002-def.zst.pgbackrest.tmp": "being written",
	})
	var check func(string) bool
	mirror := func() MirrorReport {
		t.Helper()
		rep, err := host.mirror(t, repo, check)
		if err != nil {
			t.Fatal(err)
		}
		return rep
	}
	same := func(what string) {
		t.Helper()
		want := tree(t, repo)
		delete(want, "archive/guardian/15-1/0000000100000000/000000010000000000000002-def.zst.pgbackrest.tmp")
		got := tree(t, target.Path)
		if len(got) != len(want) {
			t.Fatalf("%s: the copy holds %d files, the repository %d: %v", what, len(got), len(want), keys(got))
		}
		for rel, body := range want {
			if got[rel] != body {
				t.Fatalf("%s: %s differs in the copy", what, rel)
			}
		}
	}
	if rep := mirror(); rep.Uploaded != 7 || rep.Deleted != 0 {
		t.Fatalf("first mirror: %+v", rep)
	}
	same("first mirror")

	// Nothing changed: only the .info files go again.
	if rep := mirror(); rep.Uploaded != 3 || rep.Bytes > 100 {
		t.Fatalf("unchanged repository: %+v", rep)
	}

	// A differential backup, new WAL, the .info files rewritten (same
	// length), the older full backup expired, and a temporary file an
	// interrupted run left on the target.
	if err := os.RemoveAll(filepath.Join(repo, "backup/guardian/20261122-030000F")); err != nil {
		t.Fatal(err)
	}
	write(t, repo, map[string]string{
		"backup/guardian/backup.info":                                             "info v2",
		"backup/guardian/backup.info.copy":                                        "info v2",
		"backup/guardian/20261129-030000F_20261130-020000D/backup.manifest":       "manifest D1",
		"archive/guardian/15-1/0000000100000000/000000010000000000000003-123.zst": "wal 3",
	})
	write(t, target.Path, map[string]string{"backup/guardian/" + chbackup.TempPrefix + "backup.info-1a2b3c": "half"})
	rep := mirror()
	if rep.Deleted != 3 { // the expired backup's two files and the temporary file
		t.Fatalf("after an expiry: %+v", rep)
	}
	same("after an expiry")
	if _, err := os.Stat(filepath.Join(target.Path, "backup/guardian/20261122-030000F")); !os.IsNotExist(err) {
		t.Errorf("the expired backup's directory stayed on the target (%v)", err)
	}
	if !bytes.Contains([]byte(tree(t, target.Path)["backup/guardian/backup.info"]), []byte("v2")) {
		t.Error("a rewritten .info file of the same length was not sent")
	}

	// The backup host damages a file, keeping its size: a plain mirror
	// does not notice; one that reads it back sends it again.
	damaged := "backup/guardian/20261129-030000F/backup.manifest"
	write(t, target.Path, map[string]string{damaged: "manifest F?"})
	if rep := mirror(); rep.Compared != 0 || len(rep.Repaired) != 0 {
		t.Fatalf("without a check: %+v", rep)
	}
	check = CheckShare(0, 1) // every file
	rep = mirror()
	if rep.Compared != 4 || len(rep.Repaired) != 1 || rep.Repaired[0] != damaged || rep.Uploaded != 4 {
		t.Fatalf("reading the copy back: %+v", rep) // 4 data files compared, 1 repaired; 3 .info files and the repair sent
	}
	same("after a repair")
	if rep := mirror(); rep.Compared != 4 || len(rep.Repaired) != 0 {
		t.Fatalf("after the repair: %+v", rep)
	}
}

// CheckShare picks every file in exactly one day of days, and none when
// days is 0.
func TestCheckShare(t *testing.T) {
	names := []string{"a", "backup/guardian/backup.info", "archive/guardian/15-1/x.zst", "b/c/d"}
	for _, days := range []int{1, 3, 7} {
		for _, n := range names {
			hits := 0
			for day := range 2 * days {
				if CheckShare(day, days)(n) {
					hits++
				}
			}
			if hits != 2 {
				t.Errorf("days %d: %s picked %d times in %d days, want 2", days, n, hits, 2*days)
			}
		}
	}
	if CheckShare(5, 0)("a") {
		t.Error("days 0 picked a file")
	}
}

// Mirror never empties a copy: not from a directory that is not a
// repository (a rebuilt host, a mount that failed), nor from a stanza
// created anew that holds no backup while the copy does.
func TestMirrorRefusesToEmptyTheCopy(t *testing.T) {
	t.Parallel()
	host := newCopyHost(t)
	target := host.target
	copied := map[string]string{
		"backup/guardian/backup.info":                      "info v1",
		"backup/guardian/20261122-030000F/backup.manifest": "manifest F1",
		"archive/guardian/archive.info":                    "archive v1",
	}
	write(t, target.Path, copied)
	mirror := func(repo string) error {
		t.Helper()
		_, err := host.mirror(t, repo, nil)
		return err
	}
	fresh := t.TempDir()
	write(t, fresh, map[string]string{"backup/guardian/backup.info": "info new", "archive/guardian/archive.info": "archive new"})
	for name, repo := range map[string]string{"an empty directory": t.TempDir(), "a stanza without backups": fresh} {
		if err := mirror(repo); err == nil || !strings.Contains(err.Error(), "left as it is") {
			t.Fatalf("%s: %v", name, err)
		}
		got := tree(t, target.Path)
		if len(got) != len(copied) {
			t.Fatalf("%s: the copy changed: %v", name, keys(got))
		}
		for rel, body := range copied {
			if got[rel] != body {
				t.Fatalf("%s: %s changed in the copy", name, rel)
			}
		}
	}
	// Nor once the new stanza has a backup of its own: the copy's are
	// another cluster's history, which the mirror would delete.
	write(t, fresh, map[string]string{"backup/guardian/20261129-030000F/backup.manifest": "manifest F2"})
	if err := mirror(fresh); err == nil || !strings.Contains(err.Error(), "share none") {
		t.Fatalf("a new stanza's first backup over an old copy: %v", err)
	}
	if got := tree(t, target.Path); got["backup/guardian/20261122-030000F/backup.manifest"] != "manifest F1" || got["backup/guardian/backup.info"] != "info v1" {
		t.Fatalf("the old copy changed: %v", keys(got))
	}
	// The operator moves the old copy aside; the mirror starts a new one.
	if err := os.Rename(target.Path, target.Path+".old"); err != nil {
		t.Fatal(err)
	}
	if err := mirror(fresh); err != nil {
		t.Fatal(err)
	}
	if got := tree(t, target.Path); got["backup/guardian/20261129-030000F/backup.manifest"] != "manifest F2" {
		t.Fatalf("the new copy: %v", keys(got))
	}
}

func keys(m map[string]string) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// A backup the repository expired, and its WAL, go from the copy before
// the new one is sent: when the new one cannot be (a backup host's full
// disk), the copy still frees its room instead of staying stuck, and stays
// restorable (the .info files are not sent before the backups they name).
// A backup a run cut short left without its manifest goes too.
func TestMirrorDeletesExpiredBackupsBeforeUploading(t *testing.T) {
	t.Parallel()
	host := newCopyHost(t)
	target := host.target
	repo := t.TempDir()
	write(t, repo, map[string]string{
		"backup/guardian/backup.info":                                           "info v1",
		"backup/guardian/20261115-030000F/backup.manifest":                      "manifest F0",
		"backup/guardian/20261115-030000F_20261116-030000D/backup.manifest":     "manifest D0",
		"backup/guardian/20261122-030000F/backup.manifest":                      "manifest F1",
		"backup/guardian/20261122-030000F/pg_data/base/1.zst":                   "F1 data",
		"archive/guardian/archive.info":                                         "archive v1",
		"archive/guardian/15-1/0000000100000000/000000010000000000000001-a.zst": "wal 1",
	})
	mirror := func() (MirrorReport, error) {
		t.Helper()
		return host.mirror(t, repo, nil)
	}
	if _, err := mirror(); err != nil {
		t.Fatal(err)
	}

	// F0 and its differential expire; F2 is made, and cannot be sent: a
	// file stands where its directory would go.
	if err := os.RemoveAll(filepath.Join(repo, "backup/guardian/20261115-030000F")); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(filepath.Join(repo, "backup/guardian/20261115-030000F_20261116-030000D")); err != nil {
		t.Fatal(err)
	}
	write(t, repo, map[string]string{
		"backup/guardian/backup.info":                         "info v2",
		"backup/guardian/20261129-030000F/backup.manifest":    "manifest F2",
		"backup/guardian/20261129-030000F/pg_data/base/1.zst": "F2 data",
	})
	write(t, target.Path, map[string]string{"backup/guardian/20261129-030000F/pg_data": "in the way"})
	// WAL 1 expires with them, WAL 2 is new; and a run cut short had
	// already removed the differential's manifest from the copy.
	if err := os.Remove(filepath.Join(repo, "archive/guardian/15-1/0000000100000000/000000010000000000000001-a.zst")); err != nil {
		t.Fatal(err)
	}
	write(t, repo, map[string]string{"archive/guardian/15-1/0000000100000000/000000010000000000000002-b.zst": "wal 2"})
	write(t, target.Path, map[string]string{"backup/guardian/20261115-030000F_20261116-030000D/pg_data/PG_VERSION": "15"})
	if err := os.Remove(filepath.Join(target.Path, "backup/guardian/20261115-030000F_20261116-030000D/backup.manifest")); err != nil {
		t.Fatal(err)
	}
	rep, err := mirror()
	if err == nil {
		t.Fatalf("the new backup was sent through a file in its way: %+v", rep)
	}
	got := tree(t, target.Path)
	for _, gone := range []string{"backup/guardian/20261115-030000F/backup.manifest", "backup/guardian/20261115-030000F_20261116-030000D/pg_data/PG_VERSION",
		"archive/guardian/15-1/0000000100000000/000000010000000000000001-a.zst"} {
		if _, ok := got[gone]; ok {
			t.Errorf("%s stayed on the copy though the upload after it failed", gone)
		}
	}
	if got["backup/guardian/20261122-030000F/pg_data/base/1.zst"] != "F1 data" || got["backup/guardian/backup.info"] != "info v1" {
		t.Errorf("the copy's live backup or its .info changed: %v", keys(got))
	}
	// A manifest goes after its backup's files: none over files missing.
	if _, ok := got["backup/guardian/20261129-030000F/backup.manifest"]; ok {
		t.Error("the new backup's manifest was sent though its files were not")
	}

	if err := os.Remove(filepath.Join(target.Path, "backup/guardian/20261129-030000F/pg_data")); err != nil {
		t.Fatal(err)
	}
	if _, err := mirror(); err != nil {
		t.Fatal(err)
	}
	if got := tree(t, target.Path); got["backup/guardian/20261129-030000F/backup.manifest"] != "manifest F2" || got["backup/guardian/backup.info"] != "info v2" {
		t.Errorf("the next run did not catch up: %v", keys(got))
	}
	if _, err := os.Stat(filepath.Join(target.Path, "backup/guardian/20261115-030000F")); !os.IsNotExist(err) {
		t.Errorf("the expired backup's directory stayed (%v)", err)
	}
}

// expiredEarly picks what the repository expired before its oldest backup:
// older backups' files (manifest or not, manifests last) and older WAL of
// an archive id the repository holds; nothing newer, nothing it holds,
// nothing of another stanza's or archive id's.
func TestExpiredEarly(t *testing.T) {
	local := map[string]int64{
		"backup/guardian/backup.info":                                           1,
		"backup/guardian/20261122-030000F/backup.manifest":                      1,
		"backup/guardian/20261122-030000F_20261123-030000D/backup.manifest":     1,
		"archive/guardian/15-1/0000000100000000/000000010000000000000005-a.zst": 1,
		"archive/guardian/15-1/0000000100000000/000000010000000000000006-b.zst": 1,
	}
	remote := map[string]int64{
		"backup/guardian/backup.info":                                           1,
		"backup/guardian/20261115-030000F/backup.manifest":                      1,
		"backup/guardian/20261115-030000F/backup.manifest.copy":                 1,
		"backup/guardian/20261115-030000F/pg_data/base/1.zst":                   1,
		"backup/guardian/20261115-030000F_20261116-030000I/pg_data/PG_VERSION":  1,
		"backup/guardian/20261122-030000F/backup.manifest":                      1,
		"backup/guardian/20261122-030000F_20261122-090000I/backup.manifest":     1, // newer than the oldest, not the repository's: left for the end
		"backup/guardian/20261101-030000F.tmp/x":                                1, // not a label
		"backup/other/20261101-030000F/backup.manifest":                         1, // a stanza the repository has no backup of
		"archive/guardian/15-1/0000000100000000/000000010000000000000004-z.zst": 1,
		"archive/guardian/15-1/0000000100000000/000000010000000000000005-a.zst": 1,
		"archive/guardian/15-1/0000000100000000/000000010000000000000007-c.zst": 1,
		"archive/guardian/14-1/0000000100000000/000000010000000000000001-q.zst": 1, // an archive id the repository does not hold
		"archive/guardian/15-1/0000000100000000/00000002.history":               1,
	}
	got := expiredEarly(local, remote)
	want := []string{
		"archive/guardian/15-1/0000000100000000/000000010000000000000004-z.zst",
		"backup/guardian/20261115-030000F/pg_data/base/1.zst",
		"backup/guardian/20261115-030000F_20261116-030000I/pg_data/PG_VERSION",
		"backup/guardian/20261115-030000F/backup.manifest",
		"backup/guardian/20261115-030000F/backup.manifest.copy",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// Whatever the backup host lists, expiredEarly deletes only what the
// repository does not hold, under a backup label that sorts before the
// repository's oldest of its stanza or a WAL segment before its oldest of
// its archive id, manifests last: never a file of a backup the repository
// still has, nor anything the rules do not name.
func FuzzExpiredEarly(f *testing.F) {
	f.Add("backup/guardian/20261122-030000F/backup.manifest\narchive/guardian/15-1/0000000100000000/000000010000000000000005-a.zst",
		"backup/guardian/20261115-030000F/backup.manifest\nbackup/guardian/20261115-030000F/pg_data/x\narchive/guardian/15-1/0000000100000000/000000010000000000000004-z.zst\nbackup/guardian/20261122-030000F_20261123-030000D/backup.manifest")
	f.Add("backup/a/20261122-030000F/backup.manifest", "backup/b/20261101-030000F/backup.manifest\nbackup/a/x/backup.manifest\nbackup/a/20261101-030000F")
	f.Add("backup/a/z/backup.manifest\nbackup/a/20261122-030000F/backup.manifest", "backup/a/20261101-030000F/backup.manifest\nbackup/a/20261101-030000F/backup.manifest/")
	f.Fuzz(func(t *testing.T, localList, remoteList string) {
		local, remote := map[string]int64{}, map[string]int64{}
		for _, rel := range strings.Split(localList, "\n") {
			local[rel] = 1
		}
		for _, rel := range strings.Split(remoteList, "\n") {
			remote[rel] = 1
		}
		oldest := map[string]string{}
		for _, set := range backupSets(local) {
			p := strings.Split(set, "/")
			if o, ok := oldest[p[1]]; !ok || p[2] < o {
				oldest[p[1]] = p[2]
			}
		}
		got := expiredEarly(local, remote)
		seenManifest := false
		for _, rel := range got {
			if _, ok := remote[rel]; !ok {
				t.Fatalf("deletes %q, which the copy does not list", rel)
			}
			if _, ok := local[rel]; ok {
				t.Fatalf("deletes %q, which the repository holds", rel)
			}
			p := strings.Split(rel, "/")
			switch {
			case len(p) >= 4 && p[0] == "backup":
				o, ok := oldest[p[1]]
				if !ok || p[2] >= o || !backupLabel.MatchString(p[2]) {
					t.Fatalf("deletes %q; the repository's oldest backup of %s is %q", rel, p[1], o)
				}
			case len(p) == 5 && p[0] == "archive":
				if !walSegment.MatchString(p[4]) {
					t.Fatalf("deletes %q, not a WAL segment", rel)
				}
				held := false
				for l := range local {
					lp := strings.Split(l, "/")
					if len(lp) == 5 && lp[0] == "archive" && lp[1] == p[1] && lp[2] == p[2] && walSegment.MatchString(lp[4]) {
						held = true
						if lp[4][:24] <= p[4][:24] {
							t.Fatalf("deletes %q; the repository holds %q", rel, l)
						}
					}
				}
				if !held {
					t.Fatalf("deletes %q of an archive id the repository holds no WAL of", rel)
				}
			default:
				t.Fatalf("deletes %q", rel)
			}
			m := path.Base(rel) == "backup.manifest" || path.Base(rel) == "backup.manifest.copy"
			if seenManifest && !m {
				t.Fatalf("deletes %q after a manifest", rel)
			}
			seenManifest = seenManifest || m
		}
	})
}

// A fetch of the copy across a mirror run (which adds a backup and then
// rewrites backup.info) is done again from the start; a copy that changes
// during every fetch is an error, not a copy half of one state and half
// of another.
func TestAFetchAcrossAMirrorRunIsDoneAgain(t *testing.T) {
	t.Parallel()
	host, repo := newCopyHost(t), smallRepository(t)
	if _, err := host.mirror(t, repo, nil); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	s, owner := host.fetcher(t)
	var err error
	dir := filepath.Join(t.TempDir(), "repo")
	fetches := 0
	mirrorRun := func(version int) {
		t.Helper()
		write(t, repo, map[string]string{
			"backup/guardian/backup.info": fmt.Sprintf("info v%d", version),
			fmt.Sprintf("backup/guardian/20261129-0%d0000F/backup.manifest", version): "manifest",
		})
		if _, err := host.mirror(t, repo, nil); err != nil {
			t.Fatal(err)
		}
	}
	err = fetchSettled(ctx, s, dir, func() error {
		fetches++
		err := fetch(ctx, s, dir, owner)
		if fetches == 1 {
			mirrorRun(2) // finishes while the first fetch is "under way"
		}
		return err
	})
	if err != nil || fetches != 2 {
		t.Fatalf("%d fetches, %v; want 2 and no error", fetches, err)
	}
	got := tree(t, dir)
	if got["backup/guardian/backup.info"] != "info v2" || got["backup/guardian/20261129-020000F/backup.manifest"] == "" {
		t.Fatalf("the fetched copy is not the one after the mirror run: %v", keys(got))
	}

	fetches = 0
	err = fetchSettled(ctx, s, filepath.Join(t.TempDir(), "repo"), func() error {
		fetches++
		mirrorRun(2 + fetches)
		return nil
	})
	if err == nil || fetches != fetchTries || !strings.Contains(err.Error(), "changed during each") {
		t.Fatalf("a copy changing during every fetch: %d fetches, %v", fetches, err)
	}
}

// A mirror run marks the copy while it runs (runMark). A fetch waits for
// a run under way to end; one that a run began during, and that ended
// before the run wrote the .info files, is done again. A mark past its
// deadline (a killed run's) holds nothing back, and none is fetched.
func TestAFetchWaitsForAMirrorRunUnderWay(t *testing.T) {
	t.Parallel()
	host, repo := newCopyHost(t), smallRepository(t)
	mark := filepath.Join(host.target.Path, runMark)
	if _, err := host.mirror(t, repo, nil); err != nil {
		t.Fatal(err)
	}
	// check is called for the files the copy holds already, mid-run.
	seen := false
	if _, err := host.mirror(t, repo, func(string) bool {
		_, err := os.Stat(mark)
		seen = seen || err == nil
		return false
	}); err != nil {
		t.Fatal(err)
	}
	if !seen {
		t.Fatal("no mark on the copy while the run changed it")
	}
	if _, err := os.Stat(mark); !os.IsNotExist(err) {
		t.Fatalf("the run left its mark (%v)", err)
	}

	ctx := context.Background()
	s, owner := host.fetcher(t)
	var err error
	markUntil := func(deadline time.Time) {
		t.Helper()
		write(t, host.target.Path, map[string]string{runMark: strconv.FormatInt(deadline.Unix(), 10) + "\n"})
	}

	// A killed run's mark, past its deadline and the grace, holds nothing
	// back, and is not fetched.
	markUntil(time.Now().Add(-markGrace - time.Minute))
	fetches := 0
	dir := filepath.Join(t.TempDir(), "repo")
	err = fetchSettled(ctx, s, dir, func() error {
		fetches++
		return fetch(ctx, s, dir, owner)
	})
	if err != nil || fetches != 1 {
		t.Fatalf("with a lapsed mark: %d fetches, %v; want one and no error", fetches, err)
	}
	if got := tree(t, dir); got["backup/guardian/backup.info"] != "info v1" || got[runMark] != "" {
		t.Fatalf("the fetched copy: %v", keys(got))
	}

	// A run that begins during the fetch and is still under way at its
	// end (nothing changed yet that the .info files show).
	fetches = 0
	dir = filepath.Join(t.TempDir(), "repo")
	err = fetchSettled(ctx, s, dir, func() error {
		fetches++
		if fetches > 1 {
			if _, err := os.Stat(mark); err == nil {
				t.Error("fetched again while the run was under way")
			}
		}
		err := fetch(ctx, s, dir, owner)
		if fetches == 1 {
			// The run begins as the fetch ends, and ends a little later.
			markUntil(time.Now().Add(time.Hour))
			go func() {
				time.Sleep(3 * time.Second)
				_ = os.Remove(mark)
			}()
		}
		return err
	})
	if err != nil || fetches != 2 {
		t.Fatalf("a fetch a run began during: %d fetches, %v; want 2 and no error", fetches, err)
	}

	// A run that does not end within the fetch's own deadline.
	markUntil(time.Now().Add(time.Hour))
	short, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	fetches = 0
	err = fetchSettled(short, s, filepath.Join(t.TempDir(), "repo"), func() error { fetches++; return nil })
	if err == nil || fetches != 0 || !strings.Contains(err.Error(), "waiting for a mirror run") {
		t.Fatalf("a run under way past the fetch's deadline: %d fetches, %v", fetches, err)
	}
	// Nor, however long the fetch may take, past markWait.
	if err := waitNoRun(ctx, s, 500*time.Millisecond); err == nil || !strings.Contains(err.Error(), "remove the mark if no run is under way") {
		t.Fatalf("a mark that stays: %v", err)
	}
}
