// Package chbackup backs up Guardian's ClickHouse database to SFTP servers,
// encrypted with age, and proves that the latest backup restores.
//
// # A set
//
// Backup writes one set, named by its UTC start time (20261128T031500Z),
// to every target. Each table of the MergeTree family (system.tables) and
// each of its active partitions (system.parts) becomes one blob:
//
//	<path>/LATEST                          the name of the newest complete set
//	<path>/<set>/manifest.json             written last
//	<path>/<set>/<table>/<partition_id>.native.zst.age
//
// A blob is `SELECT * FROM db.table WHERE (<partition key>) = <partition>
// FORMAT Native` read from ClickHouse's HTTP interface (plain net/http:
// clickhouse-go's HTTP protocol does not work with ClickHouse 18.16, which
// also has no _partition_id column; the predicate comes from
// system.tables.partition_key and the partition's value as system.parts
// prints it), compressed with zstd and encrypted with age to every
// recipient. The bytes stream from the HTTP answer through zstd and age
// into the remote file while the ciphertext is hashed (SHA-256) and
// counted; no partition is held in memory. An unpartitioned table is one
// blob. Tables of other engines (views, Log, Memory) are listed in the
// manifest as skipped.
//
// The manifest (JSON, not encrypted) holds the set's name, time, the
// server's version, and per table its CREATE statement (SHOW CREATE TABLE)
// and per blob the partition, rows, plaintext and ciphertext bytes and the
// ciphertext's SHA-256. It holds schema, partition values and counts, never
// a row.
//
// # Row counts and consistency
//
// A partition may receive inserts while it is dumped. ClickHouse answers a
// SELECT from the parts that exist when the query starts, so each blob is
// consistent in itself; a separate count() would race with inserts. Rows
// are therefore counted in the dump itself, by walking the Native stream's
// block headers (column and row counts) and skipping the column data
// (CountNativeRows): the count is exact for the bytes stored. The walk also
// catches an exception ClickHouse appends to an answer it has already begun.
// What neither can catch is a query limit in "break" mode (max_result_rows
// with result_overflow_mode=break, and the like, in the user's profile):
// ClickHouse then stops early and answers a shorter table without an
// error. Backup reads system.settings first and refuses to run under such
// a limit, or under a setting of newer servers that filters every read
// (checkLimits). A row filter or policy on the backup user is not visible
// to it; docs/deployment.md says the user must have none.
// Column types the walker does not know (LowCardinality, aggregate function
// states) fail the backup loudly rather than store an unchecked blob. The
// set as a whole is not one point in time: ClickHouse has no transactions,
// and partitions are dumped one after the other.
//
// # Never a half-finished set as LATEST
//
// Blobs and the manifest go into <path>/<set>.partial. Once it is complete,
// the directory is renamed to <path>/<set>, then LATEST is written to a
// temporary name and renamed over the old one with OpenSSH's
// posix-rename@openssh.com extension, atomically (a server without it gets
// remove-then-rename). Files are fsynced when the server offers
// fsync@openssh.com. A run that stops (signal, timeout, a failed write)
// leaves LATEST naming the previous set; a run that fails removes its own
// .partial directory where it can, and the next run removes any .partial
// directory and temporary files it finds. Runs must not overlap on one
// target: the job binary holds a lock, and two hosts must not share a path.
//
// Nor a set of a database emptied by a fault: a new set in which a table of
// LATEST's set is down to less than half its rows and ShrinkRows fewer
// (gone and empty included) is completed, but LATEST keeps naming the set
// before it (which pruning keeps too) and the run says so
// (SetInfo.Shrunk; the job is red), until a run with
// GUARDIAN_BACKUP_ACCEPT_SHRINK=1 accepts the drop, or the set before is
// as old as sets are kept: then the new set is LATEST all the same, since
// the 30 days of the posture's deletion promise bound every set.
//
// # Several targets
//
// The first target is the primary, the others are copies (off-site); all
// receive the same ciphertext from one dump, are finished, verified and
// pruned the same way. A target that fails drops out and the others carry
// on; Backup then returns an error naming it. While a target does not
// take the dump's next bytes, the fan-out waits and the dump is not read,
// and ClickHouse abandons an answer it cannot send for http_send_timeout
// (1800 s on 18.16, 30 s on current versions), which would lose the set
// for every target: a target that takes no megabyte of the dump for 15
// seconds counts as stalled, and its connection is closed (pushTimeout);
// a slow link that keeps taking data is not dropped. One that answers
// nothing for 10 minutes while any other request waits for it (an fsync
// on a hung disk, a half-open connection) counts as failed too: a
// watchdog closes its connection. A ClickHouse dump that sends nothing
// for 10 minutes fails the run.
//
// # Pruning
//
// At the start of a run, before the new set is written, and again once it
// is complete, sets older than KeepDays less 30 hours are removed at each
// target (pruneSlack: the run KeepDays-1 days after a set removes it,
// whatever minute either began), never the one LATEST names (without
// LATEST, the newest not named ahead; if every set is named ahead, the one
// the backup host dates last). Pruning first means a run that then fails
// (a full disk, ClickHouse down) still removes them. Leftovers of
// interrupted runs are removed before anything is made; a disk too full
// even for the new set's directory after that fails the target with
// nothing pruned, since pruning waits for the clock check, which needs
// that directory. Other files and directories are left alone.
//
// Set names come from the clock, and pruning goes by them. So before it
// prunes or writes anything at a target, a run makes the new set's
// .partial directory there and compares the time the backup host gives
// it with its own clock: more than an hour apart, either way, one of them
// is wrong, and the run fails at that target naming both times, pruning
// and writing nothing (checkClock). A clock a month ahead would otherwise
// prune every set but LATEST's as expired; one behind, the newest sets as
// named in the future. When the clocks agree, the clock is trusted: a set
// named more than an hour ahead is a leftover of a time when both ran
// ahead (one bad NTP source), and is pruned once it is not LATEST's, so
// that its name cannot keep it for ever. Both clocks wrong by the same
// amount cannot be seen: ahead by days, they prune sets as many days
// early (never LATEST's).
//
// # Verification
//
// VerifyLatest, for each target: reads LATEST and the manifest, downloads
// each blob to a temporary file while hashing it, checks size and SHA-256,
// decrypts it to another temporary file that is kept only when age has
// authenticated the whole blob (age hands out plaintext before it reaches a
// tampered chunk), decompresses it into `INSERT INTO … FORMAT Native` in a
// scratch database restore_verify_<tag>_<deadline>_<random> whose tables
// come from the manifest's CREATE statements (as SHOW CREATE TABLE printed
// them: on one line by older versions, 18.16 included, one clause a line
// by current ones) without their table TTL (TTL merges would delete
// expired rows while they are counted), and compares the rows each blob
// added with the manifest. Tables are loaded one at a
// time and each is dropped once checked; where ClickHouse reports its
// disks' free space (system.disks, 19.15 and later; filesystemAvailable of
// the data path from 19.1; 18.16 cannot tell) a table is loaded only
// if its copy, plus a tenth, leaves a twentieth of the disks (at least
// 1 GiB) free. The copy's size is estimated as twice the live table's
// active parts (system.parts, scaled by the set's rows over the live
// table's; twice for merges, whose old parts stay on disk for minutes),
// or, where the live table has none, from the set's blobs' size times
// three (zstd against ClickHouse's LZ4 and unmerged parts), never above
// the set's uncompressed size (JSON payloads make it 5-10 times what
// ClickHouse stores). The scratch database is dropped at the end, on failure
// too; one a killed run left is dropped by a later run once the deadline
// in its name has passed (verifications may overlap). Temporary files need
// twice the largest blob on the local disk ($TMPDIR).
//
// A finding about the backup wraps job.ErrRed (the job reports "red"): no
// LATEST, no manifest, a missing blob, wrong size or hash, a blob that does
// not decrypt with the identity or does not decompress, a statement or blob
// ClickHouse refuses, a row or byte count that differs. Not being able to
// check (a target or ClickHouse unreachable, a local disk error, too little
// room on ClickHouse's disks for a table's copy) is a plain error. The
// restore expects non-replicated MergeTree tables: a Replicated* CREATE
// statement would need ZooKeeper paths of its own.
//
// # Security
//
// Blobs are readable only with an age identity of a recipient; the backup
// host needs only the public recipients. Keep the identity off the
// ClickHouse host where possible (run `backup-clickhouse verify` elsewhere).
// Every target's host key must be pinned in the known_hosts file: an
// unknown key is refused like a changed one (no trust on first use), and
// only the key types pinned for the host are offered. The SSH client key
// must have no passphrase. Errors name variables, targets and files, never
// a password or key.
//
// # Environment
//
//	GUARDIAN_CLICKHOUSE_HTTP_URL     ClickHouse's HTTP interface, e.g. http://127.0.0.1:8123
//	GUARDIAN_CLICKHOUSE_USER         default "default"
//	GUARDIAN_CLICKHOUSE_PASSWORD     sent in the X-ClickHouse-Key header
//	GUARDIAN_CLICKHOUSE_DATABASE     the database to back up (default guardian)
//	GUARDIAN_CLICKHOUSE_ADDR         required by shared/config's loader; not used here
//	GUARDIAN_BACKUP_AGE_RECIPIENTS   comma-separated age public keys (age1...)
//	GUARDIAN_BACKUP_SFTP_TARGETS     comma-separated user@host:port/path; the first is the primary
//	GUARDIAN_BACKUP_SSH_KEY          the SSH client's private key file
//	GUARDIAN_BACKUP_SSH_KNOWN_HOSTS  known_hosts file pinning every target's host key
//	GUARDIAN_BACKUP_KEEP_DAYS        days a set is kept (default 30)
//	GUARDIAN_BACKUP_AGE_IDENTITY     age identity file, for verification only
//	GUARDIAN_BACKUP_ACCEPT_SHRINK    1: this run's set becomes LATEST however few its rows
package chbackup
