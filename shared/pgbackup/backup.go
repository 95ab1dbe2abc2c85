package pgbackup

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// Backup kinds.
const (
	Full = "full"
	Diff = "diff"
)

// Setup writes the configuration, creates the stanza in every repository
// (a no-op when it exists and matches the cluster), then runs
// `pgbackrest check`, which proves that the cluster archives WAL into
// every repository.
func Setup(ctx context.Context, cfg Config) error {
	r, err := newRunner(cfg)
	if err != nil {
		return err
	}
	if _, err := r.pgbackrest(ctx, checkTimeout, "stanza-create"); err != nil {
		return err
	}
	if _, err := r.pgbackrest(ctx, checkTimeout, "check"); err != nil {
		return fmt.Errorf("%w (is archive_mode on, archive_command %q, and PGBACKREST_REPO<n>_CIPHER_PASS in the PostgreSQL server's environment?)", err, ArchiveCommand(cfg))
	}
	return nil
}

// Backup takes a backup of kind Full or Diff into every repository, one
// after the other, and returns what each one took (from `pgbackrest
// info`). pgBackRest turns a diff into a full backup in a repository
// without one. A repository that fails does not stop the others; the
// error names it.
func Backup(ctx context.Context, cfg Config, kind string) ([]BackupInfo, error) {
	if kind != Full && kind != Diff {
		return nil, fmt.Errorf("pgbackup: backup kind %q: want %s or %s", kind, Full, Diff)
	}
	r, err := newRunner(cfg)
	if err != nil {
		return nil, err
	}
	var taken []BackupInfo
	var errs []error
	for _, repo := range cfg.Repos {
		b, err := r.backup(ctx, repo.Index, kind)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		taken = append(taken, b)
	}
	return taken, errors.Join(errs...)
}

func (r *runner) backup(ctx context.Context, repo int, kind string) (BackupInfo, error) {
	before, err := r.info(ctx, repo)
	if err != nil {
		return BackupInfo{}, err
	}
	had := map[string]bool{}
	for _, b := range before.Backups {
		had[b.Label] = true
	}
	if _, err := r.pgbackrest(ctx, 0, "backup", "--repo="+strconv.Itoa(repo), "--type="+kind); err != nil {
		return BackupInfo{}, err
	}
	after, err := r.info(ctx, repo)
	if err != nil {
		return BackupInfo{}, err
	}
	var added []string
	for j := len(after.Backups) - 1; j >= 0; j-- {
		if b := after.Backups[j]; b.Repo == repo && !had[b.Label] {
			return b, nil
		} else if b.Repo == repo {
			added = append(added, b.Label)
		}
	}
	return BackupInfo{}, fmt.Errorf("pgbackup: backup into repo%d succeeded but info shows no new backup (has %s)", repo, strings.Join(added, ", "))
}
