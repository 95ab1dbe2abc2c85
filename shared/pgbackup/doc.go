// Package pgbackup drives pgBackRest (2.45, Debian's /usr/bin/pgbackrest)
// for Guardian's PostgreSQL 15: encrypted full and differential backups
// into one or two repositories, continuous WAL archiving, and restore
// checks that prove a backup really restores.
//
// Guardian generates pgBackRest's configuration from the environment
// (LoadConfig, WriteConfig) at every run. The file holds no secret: the
// repository cipher passphrases reach pgBackRest only as
// PGBACKREST_REPO<n>_CIPHER_PASS in the environment of the processes this
// package starts. Each repository is encrypted with aes-256-cbc and keeps
// RetentionFull full backups, RetentionDiff differential ones and the WAL
// of the RetentionArchive newest full backups.
//
// Environment (LoadConfig):
//
//	GUARDIAN_PGBACKREST_STANZA            stanza name (default guardian)
//	GUARDIAN_PGBACKREST_PG_DATA           the cluster's data directory (required)
//	GUARDIAN_PGBACKREST_PG_PORT           its port (default 5432)
//	GUARDIAN_PGBACKREST_PG_SOCKET         its unix socket directory (default /var/run/postgresql)
//	GUARDIAN_PGBACKREST_PG_BINDIR         pg_ctl's directory for restore checks (default newest /usr/lib/postgresql/*/bin)
//	GUARDIAN_PGBACKREST_REPO1_PATH        repository 1 (default /var/lib/pgbackrest)
//	GUARDIAN_PGBACKREST_REPO1_CIPHER_PASS its passphrase (required, at least 32 bytes)
//	GUARDIAN_PGBACKREST_REPO2_PATH        optional second, off-site repository
//	GUARDIAN_PGBACKREST_REPO2_CIPHER_PASS its passphrase (required with REPO2_PATH; use a different one)
//	GUARDIAN_PGBACKREST_CONFIG            generated config file (default /etc/guardian/pgbackrest/pgbackrest.conf)
//	GUARDIAN_PGBACKREST_LOG_PATH          pgBackRest's logs (default /var/log/pgbackrest)
//	GUARDIAN_PGBACKREST_LOCK_PATH         pgBackRest's locks (default /run/pgbackrest)
//	GUARDIAN_PGBACKREST_ARCHIVE_ASYNC     1: asynchronous archive-push (default 0)
//	GUARDIAN_PGBACKREST_SPOOL_PATH        its queue (default /var/spool/pgbackrest)
//	GUARDIAN_PGBACKREST_COMPRESS          zst (default) or lz4
//	GUARDIAN_PGBACKREST_PROCESS_MAX       parallel processes (default 2)
//	GUARDIAN_PGBACKREST_USER              OS user pgbackrest and pg_ctl run as when we are root (default postgres)
//	GUARDIAN_PGBACKREST_BIN               the pgbackrest binary (default /usr/bin/pgbackrest)
//	GUARDIAN_PGBACKREST_CHECK_DATABASE    database the restore check queries (default guardian)
//
// # WAL archiving
//
// The operator turns archiving on once:
//
//	ALTER SYSTEM SET archive_mode = on;
//	ALTER SYSTEM SET archive_command = '<ArchiveCommand(cfg)>';
//
// and restarts PostgreSQL. ArchiveCommand is
// "/usr/bin/pgbackrest --config=/etc/guardian/pgbackrest/pgbackrest.conf --stanza=guardian archive-push %p"
// with the defaults. archive-push runs inside the PostgreSQL server, so
// the server's environment must carry PGBACKREST_REPO1_CIPHER_PASS (and
// PGBACKREST_REPO2_CIPHER_PASS with a second repository). On Debian,
// pg_ctlcluster gives the server exactly the variables of
// /etc/postgresql/15/main/environment (owned by postgres; chmod 0600):
//
//	PGBACKREST_REPO1_CIPHER_PASS = '<passphrase>'
//
// Elsewhere use the service manager's environment file. Setup's `check`
// fails (after pgBackRest's archive timeout) until this works.
//
// # Processes
//
// When Guardian runs as root, pgbackrest and pg_ctl run as
// GUARDIAN_PGBACKREST_USER (its uid, gid and groups, like runuser -u), with
// only PATH, HOME, USER, LOGNAME and the passphrases in their environment,
// in a process group of their own: a cancelled context sends SIGTERM to
// the group and SIGKILL after WaitDelay. Their standard error ends up in
// errors with any passphrase replaced by "[redacted]".
//
// # Restore checks
//
// VerifyRestore reads `pgbackrest verify` (which exits 0 even when it
// reports invalid checksums) and `pgbackrest info`, restores the newest
// backup of each repository into a scratch directory with
// --archive-mode=off --type=immediate --target-action=promote, starts it
// with pg_ctl on a free port, socket only, archive_mode=off and
// hot_standby=off (given on the command line, so no restored config file
// can turn archiving back on or point the server at the real data
// directory), runs a read-only check query, stops it and removes the
// directory. What it finds wrong wraps job.ErrRed; a broken environment
// is a plain error.
package pgbackup
