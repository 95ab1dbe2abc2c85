// Command restore-verify proves, monthly, that the latest backups restore:
//
//   - PostgreSQL (shared/pgbackup.VerifyRestore): for every pgBackRest
//     repository, `pgbackrest verify` and `info` must be clean, then the
//     newest backup is restored into a scratch directory with archiving
//     off, started with pg_ctl on its own port, checked with a query
//     (GUARDIAN_RESTORE_CHECK, default pgbackup.DefaultCheck), stopped and
//     removed; the same for every copy of repo1 on the backup host
//     (GUARDIAN_PGBACKREST_SFTP_TARGETS, fetched over SFTP into the
//     scratch directory first: pgbackup.VerifyCopy);
//   - ClickHouse (shared/chbackup.VerifyLatest): for every SFTP
//     destination, the set LATEST names is fetched, each blob's size and
//     SHA-256 checked, decrypted with the age identity to a temp file,
//     decompressed and loaded into a scratch database whose row counts
//     must match the manifest.
//
// Both parts always run; the result line carries each part's report
// ("postgres", "clickhouse"). First, a run removes what a run killed
// outright left in the scratch and temp directories: a restored cluster, a
// fetched copy, decrypted ClickHouse blobs, all plaintext customer data
// that nothing else would delete ("leftovers_removed"). `restore-verify
// cleanup`, the unit's ExecStopPost, removes the same from the job's own
// scratch directory as soon as a run has ended, however it ended (killed
// at its stop timeout, or by the OOM killer), rather than a month later.
// A backup that is missing, damaged or does
// not restore makes the run red (exit 1); a part that could not be checked
// (a host unreachable, a tool missing) makes it an error (exit 2). Either
// way shared/job sends one alert (GUARDIAN_JOB_ALERT_WEBHOOKS,
// GUARDIAN_JOB_ALERT_EMAIL) and the result line goes to the journal: the
// log of every check.
//
// Environment: shared/pgbackup's GUARDIAN_PGBACKREST_* (the cipher
// passphrases included), shared/chbackup's GUARDIAN_BACKUP_* and
// GUARDIAN_CLICKHOUSE_* (GUARDIAN_BACKUP_AGE_IDENTITY is required here:
// this job alone holds the age identity), and
//
//	GUARDIAN_RESTORE_PARTS        postgres,clickhouse (default both)
//	GUARDIAN_RESTORE_SCRATCH_DIR  where the PostgreSQL copy is restored (default the temp dir)
//	GUARDIAN_RESTORE_CHECK        a SELECT, or a table whose rows are counted
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/glassmkr/guardian/shared/atomicfile"
	"github.com/glassmkr/guardian/shared/chbackup"
	"github.com/glassmkr/guardian/shared/config"
	"github.com/glassmkr/guardian/shared/job"
	"github.com/glassmkr/guardian/shared/nodump"
	"github.com/glassmkr/guardian/shared/notify"
	"github.com/glassmkr/guardian/shared/pgbackup"
	"github.com/glassmkr/guardian/shared/version"
)

// Environment variables of this job.
const (
	EnvParts   = "GUARDIAN_RESTORE_PARTS"
	EnvScratch = "GUARDIAN_RESTORE_SCRATCH_DIR"
	EnvCheck   = "GUARDIAN_RESTORE_CHECK"
)

func main() {
	version.ExitIfAsked()
	if len(os.Args) == 2 && os.Args[1] == "cleanup" {
		os.Exit(cleanup(os.LookupEnv, os.Stdout))
	}
	job.Main(spec())
}

// cleanup removes what a run left in the job's own scratch directory
// (the shared temp directory keeps its age rule: others may be using it)
// and says so in one JSON line. It is not a run: no result line or
// metrics that would hide the run's own. It takes the job's lock without
// waiting, and leaves everything alone while a run (one started by hand)
// holds it. It returns the exit status.
func cleanup(lookup func(string) (string, bool), out io.Writer) int {
	if err := nodump.Seal(); err != nil {
		fmt.Fprintln(os.Stderr, "restore-verify cleanup:", err)
		return job.ExitError
	}
	line := map[string]any{"job": "restore-verify", "cleanup": true}
	release, err := job.TryLock(spec(), lookup)
	if errors.Is(err, job.ErrLocked) {
		line["skipped"] = err.Error()
		_ = json.NewEncoder(out).Encode(line)
		return 0
	}
	if err != nil {
		line["error"] = err.Error()
		_ = json.NewEncoder(out).Encode(line)
		return job.ExitError
	}
	defer release()
	scratch, _ := lookup(EnvScratch)
	var own []leftoverDir
	for _, d := range leftoverDirs(scratch) {
		if d.own {
			own = append(own, d)
		}
	}
	n, err := removeLeftovers(own, time.Now())
	line["leftovers_removed"] = n
	// The ClickHouse scratch database of a run killed before it dropped
	// it: plaintext customer data, which would otherwise stay until a
	// later verification finds its deadline passed.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dropped, derr := dropNotedScratch(ctx, scratchNotePath(scratch), func() (chbackup.Config, error) {
		// Only what reaching ClickHouse takes: a backup setting gone
		// wrong must not keep the plaintext copy.
		l := config.New(lookup)
		c := chbackup.Config{ClickHouse: l.LoadClickHouse(), HTTPURL: l.String(chbackup.EnvClickHouseHTTPURL)}
		if err := l.Err(); err != nil {
			return c, err
		}
		// As LoadConfig checks it: a URL that does not parse would be
		// quoted, credentials and all, by the request's error.
		if err := config.CheckHTTPURL(c.HTTPURL); err != nil {
			return c, fmt.Errorf("%s %w", chbackup.EnvClickHouseHTTPURL, err)
		}
		return c, nil
	})
	if len(dropped) > 0 {
		line["clickhouse_scratch_dropped"] = dropped
	}
	if err = errors.Join(err, derr); err != nil {
		line["error"] = err.Error()
	}
	_ = json.NewEncoder(out).Encode(line)
	if err != nil {
		return job.ExitError
	}
	return 0
}

func spec() job.Spec {
	return job.Spec{Name: "restore-verify", Timeout: 6 * time.Hour, Run: run}
}

func run(ctx context.Context, env *config.Loader, r *job.Report) error {
	parts := notify.SplitList(env.Optional(EnvParts, "postgres,clickhouse"))
	for _, p := range parts {
		if p != "postgres" && p != "clickhouse" {
			return fmt.Errorf("%s: unknown part %q (postgres, clickhouse)", EnvParts, p)
		}
	}
	if len(parts) == 0 {
		return fmt.Errorf("%s names no part", EnvParts)
	}
	// A leftover that cannot be removed fails the run, after the checks.
	n, leftErr := removeLeftovers(leftoverDirs(env.Optional(EnvScratch, "")), time.Now())
	r.Set("leftovers_removed", n)
	errs := []error{leftErr}
	if slices.Contains(parts, "postgres") {
		errs = append(errs, verifyPostgres(ctx, env, r))
	}
	if slices.Contains(parts, "clickhouse") {
		errs = append(errs, verifyClickHouse(ctx, env, r))
	}
	return errors.Join(errs...)
}

// leftoverPrefixes name what a run makes in its scratch and temp
// directories: pgbackup's restored cluster (guardian-restore-), its copy
// of a repository fetched from the backup host (pgbackrest-copy-), and
// chbackup's decrypted blobs (guardian-restore-verify-).
var leftoverPrefixes = []string{"guardian-restore-", "pgbackrest-copy-"}

// leftoverDir is a directory a run writes to. own: the job's alone (its
// scratch directory, GUARDIAN_RESTORE_SCRATCH_DIR), where the job's lock
// means no other run can be going on; otherwise shared (the system's temp
// directory), where others may make entries of these names too.
type leftoverDir struct {
	path string
	own  bool
}

// systemTemps are directories every user shares: a scratch directory set
// to one of them is not the job's own.
var systemTemps = []string{"/tmp", "/var/tmp", "/dev/shm"}

// leftoverDirs are the directories a run writes to: the scratch directory
// and the temp directory (the same one in the unit).
func leftoverDirs(scratch string) []leftoverDir {
	tmp := os.TempDir()
	if scratch == "" {
		return []leftoverDir{{tmp, false}}
	}
	own := !slices.Contains(systemTemps, filepath.Clean(scratch))
	if filepath.Clean(scratch) == filepath.Clean(tmp) {
		return []leftoverDir{{scratch, own}}
	}
	return []leftoverDir{{scratch, own}, {tmp, false}}
}

// removeLeftovers removes, in dirs, the entries a run makes: in the job's
// own directory all of them, since a run holds the job's lock (a run
// killed mid-restore leaves a plaintext copy of the database, which a
// rerun minutes later must not keep until next month); in a shared one,
// only those older than the job's time limit, which no run still going
// can own (a run is stopped at the limit).
func removeLeftovers(dirs []leftoverDir, now time.Time) (int, error) {
	removed := 0
	for _, dir := range dirs {
		entries, err := os.ReadDir(dir.path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return removed, fmt.Errorf("leftovers: %w", err)
		}
		for _, e := range entries {
			if !e.IsDir() || !hasAnyPrefix(e.Name(), leftoverPrefixes) {
				continue
			}
			if !dir.own {
				info, err := e.Info()
				if err != nil || now.Sub(info.ModTime()) < spec().Timeout {
					continue
				}
			}
			if err := os.RemoveAll(filepath.Join(dir.path, e.Name())); err != nil {
				return removed, fmt.Errorf("leftovers: %w", err)
			}
			removed++
		}
	}
	return removed, nil
}

func hasAnyPrefix(s string, prefixes []string) bool {
	for _, p := range prefixes {
		if strings.HasPrefix(s, p) {
			return true
		}
	}
	return false
}

func verifyPostgres(ctx context.Context, env *config.Loader, r *job.Report) error {
	l := config.New(env.Lookup())
	cfg := pgbackup.LoadConfig(l)
	if err := l.Err(); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	copies, err := pgbackup.ParseTargets(l.Optional(pgbackup.EnvSFTPTargets, ""))
	var sshKey, knownHosts string
	if len(copies) > 0 {
		sshKey, knownHosts = l.String(chbackup.EnvSSHKey), l.String(chbackup.EnvKnownHosts)
	}
	if err := errors.Join(err, l.Err()); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	scratch, check := env.Optional(EnvScratch, ""), env.Optional(EnvCheck, "")
	rep, err := pgbackup.VerifyRestore(ctx, cfg, scratch, check)
	r.Set("postgres", rep)
	errs := []error{err}
	if len(copies) > 0 {
		// The copies on the backup host restore too.
		reports := map[string]pgbackup.RestoreReport{}
		for _, t := range copies {
			rep, err := verifyCopy(ctx, cfg, sshKey, knownHosts, t, scratch, check)
			reports[t.String()] = rep
			if err != nil {
				errs = append(errs, fmt.Errorf("copy on %s: %w", t, err))
			}
		}
		r.Set("postgres_copies", reports)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("postgres: %w", err)
	}
	return nil
}

// verifyCopy checks one copy of repo1 (pgbackup.VerifyCopy). A host that
// cannot be reached is an error, not red: the copy was not checked.
func verifyCopy(ctx context.Context, cfg pgbackup.Config, sshKey, knownHosts string, t chbackup.Target, scratch, check string) (pgbackup.RestoreReport, error) {
	s, err := chbackup.DialSession(ctx, sshKey, knownHosts, t)
	if err != nil {
		return pgbackup.RestoreReport{}, err
	}
	defer s.Close()
	return pgbackup.VerifyCopy(ctx, cfg, s, scratch, check)
}

func verifyClickHouse(ctx context.Context, env *config.Loader, r *job.Report) error {
	l := config.New(env.Lookup())
	identityFile := l.String(chbackup.EnvAgeIdentity)
	if err := l.Err(); err != nil {
		return fmt.Errorf("clickhouse: %w", err)
	}
	cfg, err := chbackup.LoadConfig(l)
	if err != nil {
		return fmt.Errorf("clickhouse: %w", err)
	}
	ids, err := chbackup.ReadIdentities(identityFile)
	if err != nil {
		return fmt.Errorf("clickhouse: %w", err)
	}
	// The job's lock is held: a scratch database a run of this host noted
	// is a killed run's.
	note := scratchNotePath(env.Optional(EnvScratch, ""))
	if dropped, err := dropNotedScratch(ctx, note, func() (chbackup.Config, error) { return cfg, nil }); err != nil {
		return fmt.Errorf("clickhouse: %w", err)
	} else if len(dropped) > 0 {
		r.Set("clickhouse_scratch_dropped", dropped)
	}
	cfg.ScratchNote = func(name string, dropped bool) error { return noteScratch(note, name, dropped) }
	rep, err := chbackup.VerifyLatest(ctx, cfg, ids...)
	r.Set("clickhouse", rep)
	if err != nil {
		return fmt.Errorf("clickhouse: %w", err)
	}
	return nil
}

// scratchNoteName is the file, in the job's scratch directory (else the
// temp directory, the job's own state directory in the unit), that holds
// the names of the ClickHouse scratch databases a run is using, one per
// line: one per target, and a drop that failed leaves its name there.
const scratchNoteName = ".clickhouse-scratch-database"

func scratchNotePath(scratch string) string {
	return filepath.Join(leftoverDirs(scratch)[0].path, scratchNoteName)
}

// noteScratch adds name to the note at path, or removes it once its
// database is dropped (chbackup.Config.ScratchNote); the file goes with
// its last name.
func noteScratch(path, name string, dropped bool) error {
	names, err := readScratchNote(path)
	if err != nil {
		return err
	}
	names = slices.DeleteFunc(names, func(n string) bool { return n == name })
	if !dropped {
		names = append(names, name)
	}
	return writeScratchNote(path, names)
}

func writeScratchNote(path string, names []string) error {
	if len(names) == 0 {
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		return nil
	}
	return atomicfile.Write(path, []byte(strings.Join(names, "\n")+"\n"), 0o600, nil)
}

// readScratchNote returns the names the note at path holds, none when it
// is absent. Only a small regular file of this user's is read: the temp
// directory may be shared.
func readScratchNote(path string) ([]string, error) {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("scratch note: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.Mode().IsRegular() || !ok || int(st.Uid) != os.Geteuid() || fi.Size() > 4096 {
		return nil, fmt.Errorf("scratch note %s is not a small regular file of this user's; remove it", path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("scratch note: %w", err)
	}
	return strings.Fields(string(b)), nil
}

// dropNotedScratch drops the scratch databases the note at path names,
// keeping in it those it could not drop, and returns the names dropped.
// chbackup.DropScratch refuses any name but a scratch database's.
func dropNotedScratch(ctx context.Context, path string, cfg func() (chbackup.Config, error)) ([]string, error) {
	names, err := readScratchNote(path)
	if err != nil || len(names) == 0 {
		return nil, err
	}
	c, err := cfg()
	if err != nil {
		return nil, fmt.Errorf("scratch note: %w", err)
	}
	var dropped, left []string
	var errs []error
	for _, name := range names {
		if err := chbackup.DropScratch(ctx, c, name); err != nil {
			errs = append(errs, err)
			left = append(left, name)
			continue
		}
		dropped = append(dropped, name)
	}
	return dropped, errors.Join(append(errs, writeScratchNote(path, left))...)
}
