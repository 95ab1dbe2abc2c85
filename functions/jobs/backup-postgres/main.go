// Command backup-postgres takes an encrypted pgBackRest backup of
// Guardian's PostgreSQL into every configured repository (see
// shared/pgbackup for the GUARDIAN_PGBACKREST_* settings):
//
//	backup-postgres full|diff
//
// Without an argument, GUARDIAN_BACKUP_KIND (full, diff or auto) decides;
// auto, the default, takes a full backup on Sundays (UTC), when a
// repository holds no full backup yet, or when a repository's newest full
// is over a week old (a Sunday missed), and a differential one otherwise.
// Each run first (re)writes the pgBackRest config, creates the stanza if
// needed and checks that WAL archiving works, repository by repository: one
// that fails is named in the run's error, and the others are still backed
// up. It runs under shared/job:
// one JSON result line, metrics, and an alert when it fails.
//
// With GUARDIAN_PGBACKREST_SFTP_TARGETS (user@host:port/path, comma-
// separated), each run then copies repo1, encrypted as it is, to those
// directories on the backup host over SFTP (pgbackup.Mirror; the key in
// GUARDIAN_BACKUP_SSH_KEY, the host keys pinned by
// GUARDIAN_BACKUP_SSH_KNOWN_HOSTS). A copy that fails makes the run red:
// the backup is taken, but not yet off the host.
//
// The daily run also reads a share of the copy back and compares it with
// repo1 (GUARDIAN_PGBACKREST_SFTP_CHECK_DAYS, default 7: the whole copy
// once a week; 0: never), sending again what differs and turning red:
// a damaged file of the right size would otherwise stay damaged.
//
//	backup-postgres mirror
//
// only copies repo1 to those targets, taking no backup: run every 15
// minutes (guardian-backup-postgres-mirror.timer), it brings the WAL
// archived since the last run to the backup host, so losing the app host
// loses at most those minutes instead of up to a day. It is the job
// "backup-postgres-mirror" (its own result line, metrics and alerts; a
// lasting failure alerts at most every 6 hours) under backup-postgres's
// lock, so it never runs during a backup, which copies at its end anyway.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/glassmkr/guardian/shared/chbackup"
	"github.com/glassmkr/guardian/shared/config"
	"github.com/glassmkr/guardian/shared/job"
	"github.com/glassmkr/guardian/shared/pgbackup"
	"github.com/glassmkr/guardian/shared/version"
)

// EnvKind chooses the kind when no argument does: full, diff or auto.
const EnvKind = "GUARDIAN_BACKUP_KIND"

func main() {
	version.ExitIfAsked()
	job.Main(spec(os.Args[1:], time.Now))
}

func spec(args []string, now func() time.Time) job.Spec {
	if len(args) == 1 && args[0] == "mirror" {
		return mirrorSpec()
	}
	// The backup shares its lock with the 15-minute mirror, which may be
	// catching up on a large copy when the backup is due: it waits for
	// the mirror's whole time limit (and a little) rather than be skipped.
	return job.Spec{Name: "backup-postgres", Timeout: 6 * time.Hour, LockWait: mirrorTimeout + 5*time.Minute, Run: func(ctx context.Context, env *config.Loader, r *job.Report) error {
		kind := env.Optional(EnvKind, "auto")
		if len(args) > 0 {
			kind = args[0]
		}
		if len(args) > 1 || (kind != pgbackup.Full && kind != pgbackup.Diff && kind != "auto") {
			return fmt.Errorf("usage: backup-postgres [full|diff|mirror] (or %s=full|diff|auto)", EnvKind)
		}
		cfg := pgbackup.LoadConfig(env)
		mirrors, err := pgbackup.ParseTargets(env.Optional(pgbackup.EnvSFTPTargets, ""))
		if err != nil {
			return err
		}
		checkDays := env.Int(EnvCheckDays, 7)
		if checkDays < 0 {
			return fmt.Errorf("%s must be 0 (never) or a number of days", EnvCheckDays)
		}
		var sshKey, knownHosts string
		if len(mirrors) > 0 {
			sshKey, knownHosts = env.String(chbackup.EnvSSHKey), env.String(chbackup.EnvKnownHosts)
		}
		if err := env.Err(); err != nil {
			return err
		}
		// A repository that fails its set-up is left out of this run
		// (and named in its error); the others are backed up.
		ready, setupErr := pgbackup.Setup(ctx, cfg)
		if len(ready) == 0 {
			return setupErr
		}
		if setupErr != nil {
			r.Set("failed_repos", len(cfg.Repos)-len(ready))
		}
		// Each ready repository on its own: its info (a repository that
		// hangs must not keep the others from theirs) and its kind (one
		// back after missing a Sunday takes its full; the other does not
		// take a second one that week).
		start := time.Now()
		var taken []pgbackup.BackupInfo
		var failed []error
		for _, repo := range ready {
			k := kind
			if k == "auto" {
				info, err := pgbackup.RepoInfo(ctx, cfg, repo.Index)
				if err != nil {
					failed = append(failed, fmt.Errorf("repo%d: %w", repo.Index, err))
					continue
				}
				var lastFull time.Time
				if b, ok := info.NewestFull(repo.Index); ok {
					lastFull = b.Start
				}
				k = scheduledKind(now(), lastFull)
			}
			t, err := pgbackup.BackupInto(ctx, cfg, k, []pgbackup.Repo{repo})
			taken = append(taken, t...)
			if err != nil {
				failed = append(failed, err)
			}
		}
		r.Set("backup_ms", time.Since(start).Milliseconds())
		if len(taken) > 0 {
			r.Set("label", taken[0].Label)
			r.Set("type", taken[0].Type)
			r.Set("size_bytes", taken[0].Size)
			r.Set("repo_bytes", taken[0].RepoDelta)
			r.Set("backups", taken)
		}
		// A repository that failed does not keep repo1 from the copy off
		// the host (its WAL goes there too); the run still fails.
		errs := errors.Join(setupErr, errors.Join(failed...), checksumErrors(taken))
		if len(mirrors) > 0 {
			// The daily run also reads back a share of the copy (a
			// damaged file of the right size is never sent again
			// otherwise); the 15-minute one does not.
			check := pgbackup.CheckShare(now().UTC().YearDay(), checkDays)
			reports, err := mirror(ctx, cfg.Repos[0].Path, sshKey, knownHosts, mirrors, check)
			r.Set("mirrors", reports)
			if err != nil {
				return errors.Join(errs, fmt.Errorf("%w: the backup is taken but its copy off the host is not up to date: %w", job.ErrRed, err))
			}
			errs = errors.Join(errs, repaired(reports))
		}
		return errs
	}}
}

// EnvCheckDays is how many daily runs read the whole copy on the backup
// host back once (a share each day; 0: never).
const EnvCheckDays = "GUARDIAN_PGBACKREST_SFTP_CHECK_DAYS"

// repaired is red when a copy held files that differed from the
// repository's though of the same size: they are sent again and the copy
// is whole now, but the backup host's storage damaged them, which someone
// must look at.
func repaired(reports []pgbackup.MirrorReport) error {
	var out []string
	for _, rep := range reports {
		if len(rep.Repaired) > 0 {
			out = append(out, fmt.Sprintf("%d on %s (%s)", len(rep.Repaired), rep.Target, strings.Join(rep.Repaired[:min(len(rep.Repaired), 5)], ", ")))
		}
	}
	if len(out) == 0 {
		return nil
	}
	return fmt.Errorf("%w: files of the copy off the host differed from the repository's and were sent again: %s; the backup host's storage may be failing",
		job.ErrRed, strings.Join(out, "; "))
}

// checksumErrors is red when pgBackRest found page checksum errors while
// copying a backup: it finishes with exit 0 and only marks the backup in
// its info, yet the database it read has damaged pages, which someone
// must hear of now, not at the next monthly restore check.
func checksumErrors(taken []pgbackup.BackupInfo) error {
	var labels []string
	for _, b := range taken {
		if b.Error {
			labels = append(labels, fmt.Sprintf("%s (repo%d)", b.Label, b.Repo))
		}
	}
	if len(labels) == 0 {
		return nil
	}
	return fmt.Errorf("%w: pgBackRest found page checksum errors while taking %s: the database has damaged pages (pgbackrest info --set shows them)",
		job.ErrRed, strings.Join(labels, ", "))
}

// mirrorTimeout bounds one mirror run.
const mirrorTimeout = time.Hour

// mirrorSpec is `backup-postgres mirror`: repo1 copied to the backup
// host, no backup taken.
func mirrorSpec() job.Spec {
	return job.Spec{Name: "backup-postgres-mirror", Lock: "backup-postgres", Timeout: mirrorTimeout, FixedTimeout: true, RealertAfter: 6 * time.Hour,
		Run: func(ctx context.Context, env *config.Loader, r *job.Report) error {
			cfg := pgbackup.LoadConfig(env)
			targets, err := pgbackup.ParseTargets(env.Optional(pgbackup.EnvSFTPTargets, ""))
			if err != nil {
				return err
			}
			if len(targets) == 0 {
				return fmt.Errorf("%s is not set: there is no backup host to copy repo1 to", pgbackup.EnvSFTPTargets)
			}
			sshKey, knownHosts := env.String(chbackup.EnvSSHKey), env.String(chbackup.EnvKnownHosts)
			if err := env.Err(); err != nil {
				return err
			}
			reports, err := mirror(ctx, cfg.Repos[0].Path, sshKey, knownHosts, targets, nil)
			r.Set("mirrors", reports)
			if err != nil {
				return fmt.Errorf("%w: the copy off the host is not up to date: %w", job.ErrRed, err)
			}
			return nil
		}}
}

// mirror copies the repository in dir to every target, each attempted
// even when another failed; the error joins the failures.
func mirror(ctx context.Context, dir, sshKey, knownHosts string, targets []chbackup.Target, check func(string) bool) ([]pgbackup.MirrorReport, error) {
	var reports []pgbackup.MirrorReport
	var failed []error
	for _, t := range targets {
		rep, err := func() (pgbackup.MirrorReport, error) {
			s, err := chbackup.DialSession(ctx, sshKey, knownHosts, t)
			if err != nil {
				return pgbackup.MirrorReport{Target: t.String()}, err
			}
			defer s.Close()
			return pgbackup.Mirror(ctx, dir, s, t.String(), check)
		}()
		reports = append(reports, rep)
		if err != nil {
			failed = append(failed, err)
		}
	}
	if len(failed) > 0 {
		return reports, errors.Join(failed...)
	}
	return reports, nil
}

// fullEvery is the longest a full backup may be the newest: a week, the
// schedule's period.
const fullEvery = 7 * 24 * time.Hour

// scheduledKind is the schedule rule: a full backup on Sunday (UTC), when
// a repository holds none (lastFull zero: the oldest of the repositories'
// newest fulls), or when that full started over a week ago (Sunday's
// failed or the host was down: the next run takes it, so no week goes
// without one and retention's four fulls span four weeks, not five); a
// differential one otherwise. Saturday's run, 23 hours short of a week
// after Sunday's full, is still a differential.
func scheduledKind(now, lastFull time.Time) string {
	if lastFull.IsZero() || now.UTC().Weekday() == time.Sunday || now.Sub(lastFull) > fullEvery {
		return pgbackup.Full
	}
	return pgbackup.Diff
}
