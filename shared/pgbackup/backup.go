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

// Setup writes the configuration and, for each repository, creates the
// stanza (a no-op when it exists and matches the cluster) and runs
// `pgbackrest check`, which proves that the cluster archives WAL into it.
// It returns the repositories that passed; the error names each one that
// did not. pgBackRest's stanza-create and check take every repository of
// a config at once, so that one repository that cannot be written (an
// off-site mount that dropped) would stop the others' backups too: each
// repository is set up with a config of its own naming it alone
// (<ConfigPath>.repo<n>, which the PostgreSQL server never reads).
func Setup(ctx context.Context, cfg Config) ([]Repo, error) {
	r, err := newRunner(cfg)
	if err != nil {
		return nil, err
	}
	if len(cfg.Repos) == 1 {
		if err := r.setup(ctx, cfg); err != nil {
			return nil, err
		}
		return cfg.Repos, nil
	}
	var ready []Repo
	var errs []error
	for _, repo := range cfg.Repos {
		alone := cfg
		alone.Repos = []Repo{{Index: 1, Path: repo.Path, CipherPass: repo.CipherPass}}
		alone.ConfigPath = cfg.ConfigPath + ".repo" + strconv.Itoa(repo.Index)
		ra, err := newRunner(alone)
		if err == nil {
			err = ra.setup(ctx, cfg)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("repo%d: %w", repo.Index, err))
			continue
		}
		ready = append(ready, repo)
	}
	return ready, errors.Join(errs...)
}

// setup runs stanza-create (when a repository lacks the stanza) and
// check over r's config; main is the config whose archive_command the
// hint names. stanza-create takes the archive lock, which asynchronous
// archive-push holds while it works through a queue (after a repository
// was away, for a while): run only when needed, it does not fail on it.
func (r *runner) setup(ctx context.Context, main Config) error {
	info, err := r.info(ctx, 0)
	if err != nil || needsStanza(info) {
		if _, err := r.pgbackrest(ctx, checkTimeout, "stanza-create"); err != nil {
			return err
		}
	}
	if _, err := r.pgbackrest(ctx, checkTimeout, "check"); err != nil {
		return fmt.Errorf("%w (is archive_mode on, archive_command %q, and PGBACKREST_REPO<n>_CIPHER_PASS in the PostgreSQL server's environment?)", err, ArchiveCommand(main))
	}
	return nil
}

// needsStanza reports whether a repository of info lacks the stanza
// (its path or its data missing), or says nothing of it.
func needsStanza(info StanzaInfo) bool {
	if len(info.Repos) == 0 {
		return true
	}
	for _, r := range info.Repos {
		if c := r.Status.Code; c == 1 || c == 3 || c == 99 {
			return true
		}
	}
	return false
}

// Backup takes a backup of kind Full or Diff into every repository (see
// BackupInto).
func Backup(ctx context.Context, cfg Config, kind string) ([]BackupInfo, error) {
	return BackupInto(ctx, cfg, kind, cfg.Repos)
}

// BackupInto takes a backup of kind Full or Diff into each of repos (of
// cfg), one after the other, and returns what each one took (from
// `pgbackrest info`). pgBackRest turns a diff into a full backup in a
// repository without one. A repository that fails does not stop the
// others; the error names it. While one repository cannot take WAL, a
// backup into another completes only with asynchronous archiving
// (ArchiveAsync): synchronous archive-push lets a repository run only one
// WAL segment ahead of one that fails, and the backup then waits for its
// last segment until pgBackRest's archive timeout (60 s).
func BackupInto(ctx context.Context, cfg Config, kind string, repos []Repo) ([]BackupInfo, error) {
	if kind != Full && kind != Diff {
		return nil, fmt.Errorf("pgbackup: backup kind %q: want %s or %s", kind, Full, Diff)
	}
	r, err := newRunner(cfg)
	if err != nil {
		return nil, err
	}
	var taken []BackupInfo
	var errs []error
	for _, repo := range repos {
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
