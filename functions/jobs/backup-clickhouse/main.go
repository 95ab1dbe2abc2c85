// Command backup-clickhouse backs up Guardian's ClickHouse database to
// every SFTP target (shared/chbackup) and, when GUARDIAN_BACKUP_AGE_IDENTITY
// names an identity file, restores the new set into a scratch database to
// prove it loads. With the argument "verify" it only checks the latest set;
// with "restore <database>" it loads the latest set into that new database
// (chbackup.Restore) for the operator to swap in after a disaster.
//
// It runs under shared/job: one run at a time, one JSON result line, exit
// status 0 (ok), 1 (red: the set does not verify, or, without an identity
// to verify it, it was encrypted to other age recipients than the set
// before it) or 2 (error), metrics and alerts. Settings: see
// shared/chbackup's package documentation.
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
	"github.com/glassmkr/guardian/shared/version"
)

func main() {
	version.ExitIfAsked()
	if len(os.Args) == 3 && os.Args[1] == "restore" {
		// A job of its own name: its result must not stand for a backup's
		// in the metrics, nor wait for a backup's lock.
		into := os.Args[2]
		job.Main(job.Spec{
			Name:    "restore-clickhouse",
			Timeout: 24 * time.Hour,
			Run: func(ctx context.Context, env *config.Loader, r *job.Report) error {
				return restore(ctx, env, r, into)
			},
		})
		return
	}
	verifyOnly := len(os.Args) == 2 && os.Args[1] == "verify"
	if len(os.Args) > 1 && !verifyOnly {
		fmt.Fprintln(os.Stderr, "usage: backup-clickhouse [verify | restore <new database>]")
		os.Exit(job.ExitError)
	}
	spec := job.Spec{
		Name:    "backup-clickhouse",
		Timeout: 6 * time.Hour,
		Run: func(ctx context.Context, env *config.Loader, r *job.Report) error {
			return run(ctx, env, r, verifyOnly)
		},
	}
	if verifyOnly {
		// Its result must not stand for a backup's in the metrics (a green
		// check hiding a failed backup). It takes the backup's lock, which
		// keeps it from a backup's run only where both use one lock
		// directory (the drill in docs/deployment.md uses restore-verify's).
		spec.Name, spec.Lock = "verify-clickhouse-backup", "backup-clickhouse"
	}
	job.Main(spec)
}

func run(ctx context.Context, env *config.Loader, r *job.Report, verifyOnly bool) error {
	cfg, err := chbackup.LoadConfig(env)
	if err != nil {
		return err
	}
	if verifyOnly && cfg.AgeIdentityFile == "" {
		return fmt.Errorf("verify needs %s", chbackup.EnvAgeIdentity)
	}
	// Findings that turn the run red once the latest set is verified too.
	var reds []string
	if !verifyOnly {
		info, err := chbackup.Backup(ctx, cfg)
		r.Set("set", info.Name)
		r.Set("tables", info.Tables)
		r.Set("blobs", info.Blobs)
		r.Set("rows", info.Rows)
		r.Set("plain_bytes", info.PlainBytes)
		r.Set("cipher_bytes", info.CipherBytes)
		r.Set("targets", info.Targets)
		if err != nil {
			return err
		}
		if len(info.Shrunk) > 0 {
			r.Set("shrunk", info.Shrunk)
			reds = append(reds, fmt.Sprintf("the new set holds far fewer rows than the latest at %s; if the drop is meant (a large account purged), run once with %s=1 to make it the latest (docs/deployment.md)",
				strings.Join(info.Shrunk, "; "), chbackup.EnvAcceptShrink))
		}
		if len(info.RecipientsChanged) > 0 {
			r.Set("recipients_changed", info.RecipientsChanged)
			if cfg.AgeIdentityFile == "" {
				// Nothing here can prove the new recipients: say so on
				// the day they change, not when the monthly check finds
				// every readable set expired.
				reds = append(reds, fmt.Sprintf("the age recipients differ from the previous set's at %s; run restore-verify now to prove the new set restores (docs/deployment.md, rotating the age key)",
					strings.Join(info.RecipientsChanged, ", ")))
			}
		}
	}
	var found error
	if len(reds) > 0 {
		found = fmt.Errorf("%w: %s", job.ErrRed, strings.Join(reds, "; "))
	}
	if cfg.AgeIdentityFile == "" {
		return found
	}
	ids, err := chbackup.ReadIdentities(cfg.AgeIdentityFile)
	if err != nil {
		return also(err, reds)
	}
	rep, err := chbackup.VerifyLatest(ctx, cfg, ids...)
	r.Set("verify", rep.Targets)
	if err != nil {
		return also(err, reds)
	}
	return found
}

// also is err with the run's red findings said after it: an error that
// kept the check from running stays an error (exit 2), not red.
func also(err error, reds []string) error {
	if len(reds) == 0 {
		return err
	}
	if errors.Is(err, job.ErrRed) {
		return fmt.Errorf("%w; %s", err, strings.Join(reds, "; "))
	}
	return fmt.Errorf("%w (and red: %s)", err, strings.Join(reds, "; "))
}

// restore loads the latest set into the new database into
// (chbackup.Restore), with the identity GUARDIAN_BACKUP_AGE_IDENTITY
// names: this host holds none unless the operator brings it for the run.
func restore(ctx context.Context, env *config.Loader, r *job.Report, into string) error {
	cfg, err := chbackup.LoadConfig(env)
	if err != nil {
		return err
	}
	if cfg.AgeIdentityFile == "" {
		return fmt.Errorf("restore needs %s: the age identity the sets were encrypted to", chbackup.EnvAgeIdentity)
	}
	ids, err := chbackup.ReadIdentities(cfg.AgeIdentityFile)
	if err != nil {
		return err
	}
	rep, err := chbackup.Restore(ctx, cfg, into, ids...)
	r.Set("restore", rep)
	return err
}
