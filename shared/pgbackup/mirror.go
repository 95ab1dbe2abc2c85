package pgbackup

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/pkg/sftp"

	"github.com/glassmkr/guardian/shared/chbackup"
)

// EnvSFTPTargets lists the SFTP directories (user@host:port/path, comma-
// separated) that hold a copy of repo1: backup-postgres writes them
// (Mirror), restore-verify checks them (VerifyCopy). The SFTP key and the
// pinned host keys are chbackup's EnvSSHKey and EnvKnownHosts.
const EnvSFTPTargets = "GUARDIAN_PGBACKREST_SFTP_TARGETS"

// ParseTargets reads an EnvSFTPTargets value.
func ParseTargets(list string) ([]chbackup.Target, error) {
	var out []chbackup.Target
	for i, item := range strings.Split(list, ",") {
		if strings.TrimSpace(item) == "" {
			continue
		}
		t, err := chbackup.ParseTarget(item)
		if err != nil {
			return nil, fmt.Errorf("%s: entry %d: %w", EnvSFTPTargets, i+1, err)
		}
		out = append(out, t)
	}
	return out, nil
}

// MirrorReport is what Mirror did on one target.
type MirrorReport struct {
	Target   string `json:"target"`
	Files    int    `json:"files"`    // files the repository holds
	Uploaded int    `json:"uploaded"` // files sent this run
	Bytes    int64  `json:"bytes"`    // bytes sent this run
	Deleted  int    `json:"deleted"`  // files removed from the target
	// Compared counts the copies read back and compared with the
	// repository's files (Check); Repaired those that differed and were
	// sent again.
	Compared int      `json:"compared,omitempty"`
	Repaired []string `json:"repaired,omitempty"`
}

// CheckShare picks the files whose copies a run reads back: those of
// share day out of every days (by the hash of their name), so that a
// daily run compares the whole copy once in days runs. days 0: none.
func CheckShare(day, days int) func(rel string) bool {
	if days <= 0 {
		return func(string) bool { return false }
	}
	return func(rel string) bool {
		h := fnv.New32a()
		_, _ = h.Write([]byte(rel))
		return int(h.Sum32()%uint32(days)) == day%days
	}
}

// Mirror makes the directory s's target names a copy of the repository in
// dir, over SFTP: pgBackRest 2.45 (Debian 12) cannot write to the backup
// host itself, and the repository is encrypted already, so its files are
// shipped as they are. Repository files are written once (backups, WAL
// segments, manifests) except the .info files, which pgBackRest rewrites;
// so a file is sent when the target lacks it or holds another size, and
// the .info files every time. A copy of the same size that was damaged
// on the backup host would never be sent again, so the files check picks
// are read back and compared byte for byte, and sent again if they
// differ (MirrorReport.Repaired).
//
// The order keeps the copy restorable whenever a run stops: what expired
// before the repository's oldest backup (its backups, its WAL) is deleted
// first (room for the new files on a full disk: expiredEarly), then new
// files, the .info files (which name the backups) after them, and only
// then the rest of what expired (an old archive id, temporary files). Every file is written under a temporary name and
// renamed into place. While it runs, the copy holds the run's mark
// (runMark), which a fetch of the copy waits for.
func Mirror(ctx context.Context, dir string, s *chbackup.Session, target string, check func(rel string) bool) (MirrorReport, error) {
	rep := MirrorReport{Target: target}
	local, err := localFiles(dir)
	if err != nil {
		return rep, err
	}
	rep.Files = len(local)
	if !isRepository(local) {
		// An empty or foreign directory (a rebuilt host, a mount that
		// failed): copying it would empty the copy.
		return rep, fmt.Errorf("mirror %s: %s holds no pgBackRest stanza (backup.info and archive.info); the copy is left as it is", target, dir)
	}
	c := s.Client()
	root := s.Root()
	if err := c.MkdirAll(root); err != nil {
		return rep, fmt.Errorf("mirror %s: %w", target, err)
	}
	// Until the run ends, the copy says a run is under way (runMark), so
	// that a fetch waits; a run that refuses the repository below
	// removes a killed run's mark too.
	unmark, err := markRun(ctx, s)
	if err != nil {
		return rep, fmt.Errorf("mirror %s: %w", target, err)
	}
	defer unmark()
	remote := map[string]int64{}
	var remoteDirs []string
	w := c.Walk(root)
	for w.Step() {
		if err := w.Err(); err != nil {
			return rep, fmt.Errorf("mirror %s: list: %w", target, err)
		}
		rel := strings.TrimPrefix(strings.TrimPrefix(w.Path(), root), "/")
		if rel == "" || rel == runMark {
			continue
		}
		if w.Stat().IsDir() {
			remoteDirs = append(remoteDirs, rel)
			continue
		}
		remote[rel] = w.Stat().Size()
	}
	if len(backupSets(local)) == 0 && len(backupSets(remote)) > 0 {
		// A stanza created anew (the app host rebuilt): its .info files
		// would replace the copy's and its backups be deleted, though they
		// may be all that is left.
		return rep, fmt.Errorf("mirror %s: the repository holds no backup but its copy does; the copy is left as it is (restore from it, or move it aside)", target)
	}
	if sets := backupSets(remote); len(sets) > 0 && !sharesAny(sets, backupSets(local)) {
		// The same after the rebuilt host's first backup: the copy's sets
		// are another cluster's history, not expired ones. (A copy kept up
		// every 15 minutes always holds the repository's newest set but
		// one, which expiry never removes first.) The .info files are
		// encrypted, so the cluster's system id cannot be compared.
		return rep, fmt.Errorf("mirror %s: the copy's %d backups share none with the repository's (a stanza created anew on a rebuilt host?); the copy is left as it is (restore from it, or move it aside)", target, len(sets))
	}

	// What the repository expired before its oldest backup goes first: on
	// a backup host whose disk is full, the new backup's upload would fail
	// before it was ever deleted, and the copy would stay stuck (and keep
	// it past the posture's 30 days). The copy stays restorable: its newest
	// backups are still the repository's, pgBackRest expires a full backup
	// with the backups that depend on it, and the WAL before the
	// repository's oldest segment is no backup's it still holds.
	for _, rel := range expiredEarly(local, remote) {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		if err := c.Remove(path.Join(root, rel)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return rep, fmt.Errorf("mirror %s: remove %s: %w", target, rel, err)
		}
		delete(remote, rel)
		rep.Deleted++
	}

	names := make([]string, 0, len(local))
	for rel := range local {
		names = append(names, rel)
	}
	sort.Strings(names)
	// Data first, then each backup's manifest (which says the backup is
	// complete, as in pgBackRest's own repository: a run cut short must
	// not leave a manifest over missing files, which would count as a
	// backup the copy shares with the repository), then the .copy of each
	// .info file, then the .info file. Only the .info files are rewritten.
	rank := func(rel string) int {
		switch b := path.Base(rel); {
		case b == "backup.manifest" || b == "backup.manifest.copy":
			return 1
		case strings.HasSuffix(rel, ".info.copy"):
			return 2
		case strings.HasSuffix(rel, ".info"):
			return 3
		}
		return 0
	}
	sort.SliceStable(names, func(i, j int) bool { return rank(names[i]) < rank(names[j]) })
	made := map[string]bool{}
	for _, rel := range names {
		if err := ctx.Err(); err != nil {
			return rep, err
		}
		if size, ok := remote[rel]; ok && size == local[rel] && rank(rel) < 2 {
			if check == nil || !check(rel) {
				continue
			}
			same, err := sameContent(ctx, c, filepath.Join(dir, filepath.FromSlash(rel)), path.Join(root, rel))
			if err != nil {
				return rep, fmt.Errorf("mirror %s: compare %s: %w", target, rel, err)
			}
			rep.Compared++
			if same {
				continue
			}
			rep.Repaired = append(rep.Repaired, rel)
		}
		if d := path.Dir(rel); d != "." && !made[d] {
			if err := c.MkdirAll(path.Join(root, d)); err != nil {
				return rep, fmt.Errorf("mirror %s: %w", target, err)
			}
			made[d] = true
		}
		n, err := putFile(s, filepath.Join(dir, filepath.FromSlash(rel)), path.Join(root, rel))
		if err != nil {
			return rep, fmt.Errorf("mirror %s: %s: %w", target, rel, err)
		}
		rep.Uploaded++
		rep.Bytes += n
	}

	// What the repository no longer holds (expired backups and their WAL),
	// and what an interrupted run left under a temporary name.
	for rel := range remote {
		if _, ok := local[rel]; ok {
			continue
		}
		if err := c.Remove(path.Join(root, rel)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return rep, fmt.Errorf("mirror %s: remove %s: %w", target, rel, err)
		}
		rep.Deleted++
	}
	// Directories left empty, deepest first; one that is not empty stays.
	slices.SortFunc(remoteDirs, func(a, b string) int { return strings.Count(b, "/") - strings.Count(a, "/") })
	for _, d := range remoteDirs {
		if _, err := os.Stat(filepath.Join(dir, filepath.FromSlash(d))); err != nil {
			_ = c.RemoveDirectory(path.Join(root, d))
		}
	}
	return rep, nil
}

// backupLabel is a pgBackRest backup label: a full backup's, or a
// differential's or incremental's (its full's label, then its own).
var backupLabel = regexp.MustCompile(`^[0-9]{8}-[0-9]{6}F(_[0-9]{8}-[0-9]{6}[DI])?$`)

// walSegment is an archived WAL segment's file name: its 24 hex digits
// (timeline, log, segment), then its checksum.
var walSegment = regexp.MustCompile(`^[0-9A-F]{24}-`)

// expiredEarly lists the files of the copy (remote) that the repository
// (local) expired before its oldest backup: every file under a backup
// directory whose label sorts before the oldest the repository holds (of
// the same stanza), with or without its manifest (a run cut short may have
// removed that first), and each WAL segment of an archive id the
// repository also holds that sorts before the repository's oldest there.
// Manifests come last, so that a run cut short leaves a backup that is
// still recognisably one, not files of no backup.
func expiredEarly(local, remote map[string]int64) []string {
	oldest := map[string]string{} // stanza -> its oldest backup label
	for _, set := range backupSets(local) {
		parts := strings.Split(set, "/")
		if o, ok := oldest[parts[1]]; !ok || parts[2] < o {
			oldest[parts[1]] = parts[2]
		}
	}
	firstWAL := map[string]string{} // archive/<stanza>/<archive id> -> its oldest segment
	for rel := range local {
		parts := strings.Split(rel, "/")
		if len(parts) == 5 && parts[0] == "archive" && walSegment.MatchString(parts[4]) {
			id, seg := strings.Join(parts[:3], "/"), parts[4][:24]
			if f, ok := firstWAL[id]; !ok || seg < f {
				firstWAL[id] = seg
			}
		}
	}
	var out []string
	for rel := range remote {
		if _, ok := local[rel]; ok {
			continue
		}
		parts := strings.Split(rel, "/")
		switch {
		case len(parts) >= 4 && parts[0] == "backup" && backupLabel.MatchString(parts[2]):
			if o, ok := oldest[parts[1]]; ok && parts[2] < o {
				out = append(out, rel)
			}
		case len(parts) == 5 && parts[0] == "archive" && walSegment.MatchString(parts[4]):
			if f, ok := firstWAL[strings.Join(parts[:3], "/")]; ok && parts[4][:24] < f {
				out = append(out, rel)
			}
		}
	}
	manifest := func(rel string) bool {
		b := path.Base(rel)
		return b == "backup.manifest" || b == "backup.manifest.copy"
	}
	slices.SortFunc(out, func(a, b string) int {
		if ma, mb := manifest(a), manifest(b); ma != mb {
			if ma {
				return 1
			}
			return -1
		}
		return strings.Compare(a, b)
	})
	return out
}

// isRepository reports whether files (slash paths) hold a pgBackRest
// stanza: backup/<stanza>/backup.info and archive/<stanza>/archive.info.
func isRepository(files map[string]int64) bool {
	var backup, archive bool
	for rel := range files {
		parts := strings.Split(rel, "/")
		if len(parts) != 3 {
			continue
		}
		backup = backup || (parts[0] == "backup" && parts[2] == "backup.info")
		archive = archive || (parts[0] == "archive" && parts[2] == "archive.info")
	}
	return backup && archive
}

// sharesAny reports whether a and b have an element in common.
func sharesAny(a, b []string) bool {
	for _, x := range a {
		if slices.Contains(b, x) {
			return true
		}
	}
	return false
}

// backupSets returns the backup directories (backup/<stanza>/<label>)
// that hold a manifest.
func backupSets(files map[string]int64) []string {
	var out []string
	for rel := range files {
		if parts := strings.Split(rel, "/"); len(parts) == 4 && parts[0] == "backup" && parts[3] == "backup.manifest" {
			out = append(out, path.Dir(rel))
		}
	}
	return out
}

// localFiles lists the regular files under dir (slash-separated paths)
// with their sizes; pgBackRest's temporary files are left out.
func localFiles(dir string) (map[string]int64, error) {
	out := map[string]int64{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() || strings.HasSuffix(d.Name(), ".tmp") {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		out[filepath.ToSlash(rel)] = info.Size()
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("mirror: read repository %s: %w", dir, err)
	}
	return out, nil
}

// sameContent reports whether the remote file holds the local file's
// bytes.
func sameContent(ctx context.Context, c *sftp.Client, local, remote string) (bool, error) {
	lf, err := os.Open(local)
	if err != nil {
		return false, err
	}
	defer lf.Close()
	rf, err := c.Open(remote)
	if err != nil {
		return false, err
	}
	defer rf.Close()
	a, b := make([]byte, 1<<20), make([]byte, 1<<20)
	for {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		n, errA := io.ReadFull(lf, a)
		m, errB := io.ReadFull(rf, b)
		if errA != nil && errA != io.EOF && errA != io.ErrUnexpectedEOF {
			return false, errA
		}
		if errB != nil && errB != io.EOF && errB != io.ErrUnexpectedEOF {
			return false, errB
		}
		if n != m || !bytes.Equal(a[:n], b[:m]) {
			return false, nil
		}
		if errA != nil || errB != nil { // both ended (n == m)
			return errA != nil && errB != nil, nil
		}
	}
}

func putFile(s *chbackup.Session, local, remote string) (int64, error) {
	f, err := os.Open(local)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	return s.Put(remote, f)
}

// VerifyCopy proves that the copy of repo1 on a backup host restores, as
// VerifyRestore proves it for the repository itself: the copy is fetched
// over s into a new directory under scratchDir and checked there with a
// pgBackRest config, log and lock directory of its own (the real ones,
// which archive-push reads, are left alone), then removed. The report's
// one repository is the copy, with repo1's passphrase.
func VerifyCopy(ctx context.Context, cfg Config, s *chbackup.Session, scratchDir, check string) (RestoreReport, error) {
	if scratchDir == "" {
		scratchDir = os.TempDir()
	}
	if len(cfg.Repos) == 0 {
		return RestoreReport{}, errors.New("pgbackup: no repository configured")
	}
	owner, err := lookupOwner(cfg.User)
	if err != nil {
		return RestoreReport{}, err
	}
	dir, err := os.MkdirTemp(scratchDir, "pgbackrest-copy-")
	if err != nil {
		return RestoreReport{}, fmt.Errorf("pgbackup: scratch dir: %w", err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o750); err != nil {
		return RestoreReport{}, fmt.Errorf("pgbackup: scratch dir: %w", err)
	}
	if err := owner.chown(dir); err != nil {
		return RestoreReport{}, err
	}
	repo := filepath.Join(dir, "repo")
	if err := fetchSettled(ctx, s, repo, func() error { return fetch(ctx, s, repo, owner) }); err != nil {
		// The host, the link or the scratch disk failing is an error, not
		// a verdict on the backup: red is for what the restore proves.
		return RestoreReport{}, fmt.Errorf("pgbackup: fetch the copy from the backup host: %w", err)
	}
	c := cfg
	c.Repos = []Repo{{Index: 1, Path: repo, CipherPass: cfg.Repos[0].CipherPass}}
	c.ConfigPath = filepath.Join(dir, "pgbackrest.conf")
	c.LogPath = filepath.Join(dir, "log")
	c.LockPath = filepath.Join(dir, "lock")
	c.ArchiveAsync = false
	return VerifyRestore(ctx, c, scratchDir, check)
}

// fetchTries bounds the fetches of a copy that a mirror run changes each
// time.
const fetchTries = 3

// fetchSettled runs get, a fetch of the copy into dir, again (dir emptied
// first) while a mirror run changed the copy during it, up to fetchTries
// times. The mirror (every 15 minutes) deletes expired backups, adds new
// files and writes the .info files last: a fetch walking the tree
// meanwhile can hold a backup.info that names files it missed, or fail on
// a file deleted after it was listed, and the restore of a sound copy
// would then fail. A run that finished during the fetch changed the .info
// files; one under way at either end (deletions done, .info files not yet
// written) left its mark (runMark). A fetch waits for a run under way to
// end first, for markWait at most.
func fetchSettled(ctx context.Context, s *chbackup.Session, dir string, get func() error) error {
	for try := 1; ; try++ {
		if err := waitNoRun(ctx, s, markWait); err != nil {
			return err
		}
		before, err := infoState(s)
		if err != nil {
			return err
		}
		ferr := get()
		// The mark first: a run that removes it has written its .info
		// files before.
		running, err := runUnderWay(s, time.Now())
		if err != nil {
			return errors.Join(ferr, err)
		}
		after, err := infoState(s)
		if err != nil {
			return errors.Join(ferr, err)
		}
		if after == before && !running {
			return ferr
		}
		if try == fetchTries {
			return fmt.Errorf("the copy changed during each of %d fetches (a mirror run each time); try again later", try)
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := os.RemoveAll(dir); err != nil {
			return err
		}
	}
}

// runMark is the file at the copy's root that says a mirror run is
// changing the copy. It holds the run's deadline (Unix seconds): a run
// killed before it removed its mark has stopped by then.
const runMark = "mirror-running"

// markGrace is how long past its deadline a run's mark still counts:
// the run stops within it, and the hosts' clocks may differ a little.
const markGrace = 5 * time.Minute

// maxMirrorRun is the deadline a mark names for a run whose context has
// none.
const maxMirrorRun = 6 * time.Hour

// markPoll is how often a fetch waiting for a mirror run looks again.
const markPoll = 5 * time.Second

// markRun leaves the run's mark on the copy; unmark removes it (a mark it
// could not remove lapses at the run's deadline).
func markRun(ctx context.Context, s *chbackup.Session) (unmark func(), err error) {
	deadline, ok := ctx.Deadline()
	if !ok {
		deadline = time.Now().Add(maxMirrorRun)
	}
	name := path.Join(s.Root(), runMark)
	if _, err := s.Put(name, strings.NewReader(strconv.FormatInt(deadline.Unix(), 10)+"\n")); err != nil {
		return nil, fmt.Errorf("mark the run on the copy: %w", err)
	}
	return func() { _ = s.Client().Remove(name) }, nil
}

// runUnderWay reports whether the copy holds the mark of a mirror run that
// may still be going on at now. A mark that is not a number counts as
// none (a run writes it whole, under a temporary name renamed into place):
// it must not hold restore checks back for ever.
func runUnderWay(s *chbackup.Session, now time.Time) (bool, error) {
	f, err := s.Client().Open(path.Join(s.Root(), runMark))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("read the copy's run mark: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, 64))
	if err != nil {
		return false, fmt.Errorf("read the copy's run mark: %w", err)
	}
	deadline, err := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return false, nil
	}
	return now.Before(time.Unix(deadline, 0).Add(markGrace)), nil
}

// markWait bounds a fetch's wait for a mirror run to end. Every mirror
// run replaces a killed run's mark and removes its own, so a mark that
// stays longer is a run still uploading (a large backup) or one that
// could not remove it.
const markWait = time.Hour

// waitNoRun waits until no mirror run is under way on the copy, or ctx
// ends, or most has passed (fetchSettled waits markWait).
func waitNoRun(ctx context.Context, s *chbackup.Session, most time.Duration) error {
	limit := time.NewTimer(most)
	defer limit.Stop()
	for {
		running, err := runUnderWay(s, time.Now())
		if err != nil || !running {
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for a mirror run on the copy to end: %w", ctx.Err())
		case <-limit.C:
			return fmt.Errorf("a mirror run has marked the copy as changing for over %v (%s at its root); remove the mark if no run is under way", most, runMark)
		case <-time.After(markPoll):
		}
	}
}

// infoState is a digest of the copy's .info files (backup.info and
// archive.info of every stanza, and their .copy twins), names and
// contents.
func infoState(s *chbackup.Session) (string, error) {
	c, root := s.Client(), s.Root()
	var names []string
	for _, pattern := range []string{"backup/*/backup.info*", "archive/*/archive.info*"} {
		m, err := c.Glob(path.Join(root, pattern))
		if err != nil {
			return "", fmt.Errorf("list the copy's .info files: %w", err)
		}
		names = append(names, m...)
	}
	sort.Strings(names)
	h := sha256.New()
	for _, n := range names {
		f, err := c.Open(n)
		if errors.Is(err, os.ErrNotExist) {
			continue // replaced meanwhile: the digest after the fetch tells
		} else if err != nil {
			return "", fmt.Errorf("read %s: %w", n, err)
		}
		fmt.Fprintf(h, "%s\x00", n)
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return "", fmt.Errorf("read %s: %w", n, err)
		}
		h.Write([]byte{0})
	}
	return string(h.Sum(nil)), nil
}

// fetch copies the tree under s's root into dir (created), files 0640 and
// directories 0750, owned by owner when we run as root.
func fetch(ctx context.Context, s *chbackup.Session, dir string, owner *osUser) error {
	c := s.Client()
	root := s.Root()
	mk := func(d string) error {
		if err := os.MkdirAll(d, 0o750); err != nil {
			return err
		}
		return owner.chown(d)
	}
	if err := mk(dir); err != nil {
		return err
	}
	w := c.Walk(root)
	for w.Step() {
		if err := w.Err(); err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		rel := strings.TrimPrefix(strings.TrimPrefix(w.Path(), root), "/")
		if rel == "" || rel == runMark || strings.HasPrefix(path.Base(rel), chbackup.TempPrefix) {
			continue
		}
		if strings.Contains("/"+rel+"/", "/../") {
			return fmt.Errorf("refusing the remote path %q", rel)
		}
		local := filepath.Join(dir, filepath.FromSlash(rel))
		if w.Stat().IsDir() {
			if err := mk(local); err != nil {
				return err
			}
			continue
		}
		if !w.Stat().Mode().IsRegular() {
			continue
		}
		if err := getFile(c, w.Path(), local); err != nil {
			return fmt.Errorf("%s: %w", rel, err)
		}
		if err := owner.chown(local); err != nil {
			return err
		}
	}
	return nil
}

func getFile(c *sftp.Client, remote, local string) error {
	src, err := c.Open(remote)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.OpenFile(local, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o640)
	if err != nil {
		return err
	}
	if _, err := src.WriteTo(dst); err != nil {
		dst.Close()
		return err
	}
	return dst.Close()
}
