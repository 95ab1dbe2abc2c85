package pgbackup

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/glassmkr/guardian/shared/atomicfile"
	"github.com/glassmkr/guardian/shared/config"
)

// Environment variables read by LoadConfig.
const (
	EnvStanza       = "GUARDIAN_PGBACKREST_STANZA"
	EnvPGData       = "GUARDIAN_PGBACKREST_PG_DATA"
	EnvPGPort       = "GUARDIAN_PGBACKREST_PG_PORT"
	EnvPGSocket     = "GUARDIAN_PGBACKREST_PG_SOCKET"
	EnvPGBinDir     = "GUARDIAN_PGBACKREST_PG_BINDIR"
	EnvRepo1Path    = "GUARDIAN_PGBACKREST_REPO1_PATH"
	EnvRepo1Cipher  = "GUARDIAN_PGBACKREST_REPO1_CIPHER_PASS"
	EnvRepo2Path    = "GUARDIAN_PGBACKREST_REPO2_PATH"
	EnvRepo2Cipher  = "GUARDIAN_PGBACKREST_REPO2_CIPHER_PASS"
	EnvConfig       = "GUARDIAN_PGBACKREST_CONFIG"
	EnvLogPath      = "GUARDIAN_PGBACKREST_LOG_PATH"
	EnvLockPath     = "GUARDIAN_PGBACKREST_LOCK_PATH"
	EnvSpoolPath    = "GUARDIAN_PGBACKREST_SPOOL_PATH"
	EnvArchiveAsync = "GUARDIAN_PGBACKREST_ARCHIVE_ASYNC"
	EnvCompress     = "GUARDIAN_PGBACKREST_COMPRESS"
	EnvProcessMax   = "GUARDIAN_PGBACKREST_PROCESS_MAX"
	EnvUser         = "GUARDIAN_PGBACKREST_USER"
	EnvBinary       = "GUARDIAN_PGBACKREST_BIN"
	EnvCheckDB      = "GUARDIAN_PGBACKREST_CHECK_DATABASE"
)

// MinCipherPassLen is the shortest accepted repository cipher passphrase.
const MinCipherPassLen = config.MinSecretLen

// Retention, the same for every repository: four full backups, fourteen
// differential ones, and the WAL needed by the four newest full backups.
const (
	RetentionFull    = 4
	RetentionDiff    = 14
	RetentionArchive = 4
)

// Repo is one pgBackRest repository (a backup destination). Guardian
// writes posix repositories: a local path, or a network file system
// (NFS, CIFS, an s3 or sftp mount) mounted there.
type Repo struct {
	// Index is pgBackRest's repository number: 1 or 2.
	Index int
	// Path is the repository's directory.
	Path string
	// CipherPass encrypts the repository (aes-256-cbc). It reaches
	// pgBackRest only through PGBACKREST_REPO<n>_CIPHER_PASS in the
	// environment of the processes Guardian starts, never a file.
	CipherPass string
}

// Config says how Guardian drives pgBackRest for its PostgreSQL cluster.
type Config struct {
	// Stanza names the cluster in the repositories (default "guardian").
	Stanza string
	// PGData is the cluster's data directory (required).
	PGData string
	// PGPort is the cluster's port (default 5432).
	PGPort int
	// PGSocket is the directory of the cluster's unix socket
	// (default /var/run/postgresql).
	PGSocket string
	// PGBinDir holds pg_ctl for restore checks (default: the newest
	// /usr/lib/postgresql/*/bin).
	PGBinDir string
	// Repos are the repositories; Repos[0] is repo1 (required), an
	// optional second one is repo2.
	Repos []Repo
	// ConfigPath is where the generated pgbackrest.conf is written
	// (default /etc/guardian/pgbackrest/pgbackrest.conf: the units let the
	// job write that directory, not /etc/guardian).
	ConfigPath string
	// LogPath is pgBackRest's log directory (default /var/log/pgbackrest).
	LogPath string
	// LockPath is pgBackRest's lock directory (default /run/pgbackrest:
	// shared with the server's archive-push, which /tmp is not under the
	// units' PrivateTmp).
	LockPath string
	// SpoolPath is the queue of asynchronous archiving
	// (default /var/spool/pgbackrest).
	SpoolPath string
	// ArchiveAsync turns on asynchronous archive-push (default off).
	ArchiveAsync bool
	// Compress is the compression type: "zst" (default) or "lz4".
	Compress string
	// ProcessMax bounds pgBackRest's parallel processes (default 2).
	ProcessMax int
	// User is the OS user pgBackRest and pg_ctl run as when Guardian
	// runs as root (default "postgres").
	User string
	// Binary is the pgbackrest executable (default /usr/bin/pgbackrest).
	Binary string
	// CheckDatabase is the database a restore check queries
	// (default "guardian").
	CheckDatabase string
}

// LoadConfig reads the GUARDIAN_PGBACKREST_* variables. Problems are
// recorded in env: call env.Err() afterwards. Secret values never appear
// in an error.
func LoadConfig(env *config.Loader) Config {
	cfg := Config{
		Stanza:        env.Optional(EnvStanza, "guardian"),
		PGData:        env.String(EnvPGData),
		PGPort:        env.Int(EnvPGPort, 5432),
		PGSocket:      env.Optional(EnvPGSocket, "/var/run/postgresql"),
		PGBinDir:      env.Optional(EnvPGBinDir, ""),
		ConfigPath:    env.Optional(EnvConfig, "/etc/guardian/pgbackrest/pgbackrest.conf"),
		LogPath:       env.Optional(EnvLogPath, "/var/log/pgbackrest"),
		LockPath:      env.Optional(EnvLockPath, "/run/pgbackrest"),
		SpoolPath:     env.Optional(EnvSpoolPath, "/var/spool/pgbackrest"),
		ArchiveAsync:  env.Int(EnvArchiveAsync, 0) != 0,
		Compress:      env.Optional(EnvCompress, "zst"),
		ProcessMax:    env.Int(EnvProcessMax, 2),
		User:          env.Optional(EnvUser, "postgres"),
		Binary:        env.Optional(EnvBinary, "/usr/bin/pgbackrest"),
		CheckDatabase: env.Optional(EnvCheckDB, "guardian"),
	}
	if cfg.PGBinDir == "" {
		cfg.PGBinDir = newestPGBinDir()
	}
	cfg.Repos = append(cfg.Repos, Repo{
		Index:      1,
		Path:       env.Optional(EnvRepo1Path, "/var/lib/pgbackrest"),
		CipherPass: string(env.Secret(EnvRepo1Cipher, MinCipherPassLen)),
	})
	path2 := env.Optional(EnvRepo2Path, "")
	pass2Set := env.Optional(EnvRepo2Cipher, "") != ""
	switch {
	case path2 != "":
		cfg.Repos = append(cfg.Repos, Repo{
			Index:      2,
			Path:       path2,
			CipherPass: string(env.Secret(EnvRepo2Cipher, MinCipherPassLen)),
		})
	case pass2Set:
		env.String(EnvRepo2Path) // records "required": a passphrase without a place
	}
	return cfg
}

// newestPGBinDir returns the /usr/lib/postgresql/<version>/bin with the
// highest version that has pg_ctl, or "".
func newestPGBinDir() string {
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	best, bestVer := "", -1.0
	for _, d := range dirs {
		v, err := strconv.ParseFloat(filepath.Base(filepath.Dir(d)), 64)
		if err != nil {
			continue
		}
		if st, err := os.Stat(filepath.Join(d, "pg_ctl")); err != nil || st.IsDir() {
			continue
		}
		if v > bestVer {
			best, bestVer = d, v
		}
	}
	return best
}

var (
	stanzaRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$`)
	// Paths end up in pgbackrest.conf, in archive_command and restore_command
	// (single-quoted, run by /bin/sh): keep them to characters that need no
	// quoting anywhere.
	pathRe   = regexp.MustCompile(`^/[A-Za-z0-9._/@+-]*$`)
	dbNameRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_$-]{0,62}$`)
)

// Validate reports every setting that cannot work, naming its variable.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if !stanzaRe.MatchString(c.Stanza) {
		bad("%s must be letters, digits, '.', '_' or '-'", EnvStanza)
	}
	paths := []struct{ name, v string }{
		{EnvPGData, c.PGData}, {EnvPGSocket, c.PGSocket}, {EnvConfig, c.ConfigPath},
		{EnvLogPath, c.LogPath}, {EnvLockPath, c.LockPath}, {EnvSpoolPath, c.SpoolPath},
		{EnvBinary, c.Binary},
	}
	if c.PGBinDir != "" {
		paths = append(paths, struct{ name, v string }{EnvPGBinDir, c.PGBinDir})
	}
	for _, r := range c.Repos {
		paths = append(paths, struct{ name, v string }{fmt.Sprintf("GUARDIAN_PGBACKREST_REPO%d_PATH", r.Index), r.Path})
	}
	for _, p := range paths {
		if !pathRe.MatchString(p.v) || strings.Contains(p.v, "/../") || strings.HasSuffix(p.v, "/..") {
			bad("%s must be an absolute path of letters, digits and ._/@+-", p.name)
		}
	}
	if c.PGPort < 1 || c.PGPort > 65535 {
		bad("%s must be a port number", EnvPGPort)
	}
	switch c.Compress {
	case "zst", "lz4":
	default:
		bad("%s must be zst or lz4", EnvCompress)
	}
	if c.ProcessMax < 1 || c.ProcessMax > 16 {
		bad("%s must be between 1 and 16", EnvProcessMax)
	}
	if c.User == "" {
		bad("%s must name an OS user", EnvUser)
	}
	if !dbNameRe.MatchString(c.CheckDatabase) {
		bad("%s must be a plain database name", EnvCheckDB)
	}
	if len(c.Repos) == 0 || len(c.Repos) > 2 {
		bad("one or two repositories are supported, %d configured", len(c.Repos))
	}
	for i, r := range c.Repos {
		if r.Index != i+1 {
			bad("repository %d has index %d", i+1, r.Index)
		}
		if len(r.CipherPass) < MinCipherPassLen {
			bad("GUARDIAN_PGBACKREST_REPO%d_CIPHER_PASS must be at least %d bytes", r.Index, MinCipherPassLen)
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("pgbackup: %w", errors.Join(errs...))
	}
	return nil
}

// ArchiveCommand is the archive_command PostgreSQL must run (with
// archive_mode = on) so that every WAL segment reaches the repositories.
// The archive-push process needs PGBACKREST_REPO<n>_CIPHER_PASS in the
// PostgreSQL server's environment (see the package documentation).
func ArchiveCommand(cfg Config) string {
	return fmt.Sprintf("%s --config=%s --stanza=%s archive-push %%p", cfg.Binary, cfg.ConfigPath, cfg.Stanza)
}

// render returns the pgbackrest.conf for cfg. It holds no secret: the
// cipher passphrases travel in the environment.
func render(cfg Config) []byte {
	var b bytes.Buffer
	b.WriteString("# Written by Guardian (shared/pgbackup) at each run: edits are lost.\n")
	b.WriteString("# The repository cipher passphrases are not here: pgBackRest reads them from\n")
	b.WriteString("# PGBACKREST_REPO<n>_CIPHER_PASS in its environment.\n")
	b.WriteString("[global]\n")
	for _, r := range cfg.Repos {
		p := fmt.Sprintf("repo%d-", r.Index)
		fmt.Fprintf(&b, "%spath=%s\n", p, r.Path)
		fmt.Fprintf(&b, "%scipher-type=aes-256-cbc\n", p)
		fmt.Fprintf(&b, "%sretention-full=%d\n", p, RetentionFull)
		fmt.Fprintf(&b, "%sretention-diff=%d\n", p, RetentionDiff)
		fmt.Fprintf(&b, "%sretention-archive=%d\n", p, RetentionArchive)
	}
	fmt.Fprintf(&b, "compress-type=%s\n", cfg.Compress)
	b.WriteString("start-fast=y\n")
	fmt.Fprintf(&b, "process-max=%d\n", cfg.ProcessMax)
	fmt.Fprintf(&b, "log-path=%s\n", cfg.LogPath)
	b.WriteString("log-level-file=info\n")
	fmt.Fprintf(&b, "lock-path=%s\n", cfg.LockPath)
	if cfg.ArchiveAsync {
		b.WriteString("archive-async=y\n")
		fmt.Fprintf(&b, "spool-path=%s\n", cfg.SpoolPath)
	}
	fmt.Fprintf(&b, "\n[%s]\n", cfg.Stanza)
	fmt.Fprintf(&b, "pg1-path=%s\n", cfg.PGData)
	fmt.Fprintf(&b, "pg1-port=%d\n", cfg.PGPort)
	fmt.Fprintf(&b, "pg1-socket-path=%s\n", cfg.PGSocket)
	return b.Bytes()
}

// WriteConfig validates cfg and writes its pgbackrest.conf atomically,
// mode 0640, owned by the run user when Guardian runs as root. It creates
// the log directory (and the spool directory for asynchronous archiving)
// when missing. Every operation of this package calls it first.
func WriteConfig(cfg Config) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	owner, err := lookupOwner(cfg.User)
	if err != nil {
		return err
	}
	if err := mkdirOwned(filepath.Dir(cfg.ConfigPath), 0o755, nil); err != nil {
		return fmt.Errorf("pgbackup: config dir: %w", err)
	}
	if err := mkdirOwned(cfg.LogPath, 0o750, owner); err != nil {
		return fmt.Errorf("pgbackup: log dir: %w", err)
	}
	if cfg.ArchiveAsync {
		if err := mkdirOwned(cfg.SpoolPath, 0o750, owner); err != nil {
			return fmt.Errorf("pgbackup: spool dir: %w", err)
		}
	}
	data := render(cfg)
	if old, err := os.ReadFile(cfg.ConfigPath); err == nil && bytes.Equal(old, data) {
		if err := os.Chmod(cfg.ConfigPath, 0o640); err != nil {
			return fmt.Errorf("pgbackup: config: %w", err)
		}
		return owner.chown(cfg.ConfigPath)
	}
	if err := atomicfile.Write(cfg.ConfigPath, data, 0o640, owner.chown); err != nil {
		return fmt.Errorf("pgbackup: config: %w", err)
	}
	return nil
}

// mkdirOwned creates dir and its missing parents with mode perm and gives
// the directories it created (only those) to owner.
func mkdirOwned(dir string, perm os.FileMode, owner *osUser) error {
	var created []string
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			break
		} else if !errors.Is(err, os.ErrNotExist) {
			return err
		}
		created = append(created, d)
		if d == filepath.Dir(d) {
			break
		}
	}
	if len(created) == 0 {
		return nil
	}
	if err := os.MkdirAll(dir, perm); err != nil {
		return err
	}
	sort.Strings(created)
	for _, d := range created {
		if err := os.Chmod(d, perm); err != nil {
			return err
		}
		if err := owner.chown(d); err != nil {
			return err
		}
	}
	return nil
}
