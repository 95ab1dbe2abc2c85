package pgbackup

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	"github.com/glassmkr/guardian/shared/job"
)

// DefaultCheck is the restore check's query when none is given.
const DefaultCheck = "SELECT count(*) FROM schema_migrations"

// RestoreReport is what VerifyRestore found, one entry per repository.
type RestoreReport struct {
	Repos []RepoRestore `json:"repos"`
}

// Value returns the check value of the first repository that restored,
// or "".
func (r RestoreReport) Value() string {
	for _, rr := range r.Repos {
		if rr.Restored {
			return rr.Value
		}
	}
	return ""
}

// RepoRestore is one repository's restore check.
type RepoRestore struct {
	Repo int `json:"repo"`
	// Verify summarises `pgbackrest verify`.
	Verify string `json:"verify,omitempty"`
	// Label and Type name the backup that was restored (the newest).
	Label string    `json:"label,omitempty"`
	Type  string    `json:"type,omitempty"`
	Taken time.Time `json:"taken,omitempty"`
	// Restored is set once the restored cluster answered the check.
	Restored bool `json:"restored"`
	// Query is the check query and Value its result (first column of the
	// first row, as text).
	Query    string        `json:"query,omitempty"`
	Value    string        `json:"value,omitempty"`
	Duration time.Duration `json:"duration"`
}

// VerifyRestore proves, for every configured repository, that the newest
// backup restores:
//
//  1. `pgbackrest verify` finds every backup file and WAL segment intact
//     (its text output is read: it exits 0 even when it reports errors);
//  2. `pgbackrest info` reports the repository ok and holds a backup;
//  3. that backup is restored into a new directory under scratchDir
//     (default: the temp dir) with archiving off, recovered to its
//     consistent point and promoted;
//  4. the restored cluster is started with pg_ctl on its own port, with
//     a unix socket in that directory only, archive_mode=off (it can never
//     archive WAL into the real repositories), and check is run in
//     cfg.CheckDatabase: a SELECT query, or a table name to count the rows
//     of ("" means DefaultCheck);
//  5. the cluster is stopped and the directory removed.
//
// A failed step of a repository is an error wrapping job.ErrRed (the other
// repositories are still checked). Errors of the environment (pgbackrest
// or pg_ctl missing, the config not writable, the scratch dir unusable)
// are not red.
func VerifyRestore(ctx context.Context, cfg Config, scratchDir string, check string) (RestoreReport, error) {
	query, err := checkQuery(check)
	if err != nil {
		return RestoreReport{}, err
	}
	r, err := newRunner(cfg)
	if err != nil {
		return RestoreReport{}, err
	}
	pgCtl := filepath.Join(cfg.PGBinDir, "pg_ctl")
	if st, err := os.Stat(pgCtl); cfg.PGBinDir == "" || err != nil || st.IsDir() {
		return RestoreReport{}, fmt.Errorf("pgbackup: pg_ctl not found in %q (set %s)", cfg.PGBinDir, EnvPGBinDir)
	}
	if scratchDir == "" {
		scratchDir = os.TempDir()
	}
	if !pathRe.MatchString(scratchDir) {
		return RestoreReport{}, fmt.Errorf("pgbackup: scratch dir %q must be an absolute path of letters, digits and ._/@+-", scratchDir)
	}
	var rep RestoreReport
	var errs []error
	for _, repo := range cfg.Repos {
		start := time.Now()
		rr := RepoRestore{Repo: repo.Index, Query: query}
		err := r.verifyRestore(ctx, &rr, pgCtl, scratchDir)
		rr.Duration = time.Since(start)
		rep.Repos = append(rep.Repos, rr)
		if err != nil {
			errs = append(errs, fmt.Errorf("repo%d: %w", repo.Index, err))
		}
	}
	return rep, errors.Join(errs...)
}

func redf(format string, a ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{job.ErrRed}, a...)...)
}

// asRed marks a command that ran and failed as red; other errors (the
// environment) stay as they are.
func asRed(err error) error {
	if isCmdError(err) {
		return fmt.Errorf("%w: %w", job.ErrRed, err)
	}
	return err
}

func (r *runner) verifyRestore(ctx context.Context, rr *RepoRestore, pgCtl, scratchDir string) error {
	n := rr.Repo
	repoOpt := "--repo=" + strconv.Itoa(n)
	out, err := r.pgbackrest(ctx, 0, "verify", repoOpt, "--output=text", "--verbose")
	if err != nil {
		return asRed(err)
	}
	if rr.Verify, err = parseVerify(out); err != nil {
		return err
	}
	info, err := r.info(ctx, n)
	if err != nil {
		return asRed(err)
	}
	if st := info.RepoStatus(n); !st.OK() || !info.Status.OK() {
		return redf("pgbackrest info: status %d %s (stanza: %d %s)", st.Code, st.Message, info.Status.Code, info.Status.Message)
	}
	latest, ok := info.Latest(n)
	if !ok {
		return redf("no backup in the repository")
	}
	rr.Label, rr.Type, rr.Taken = latest.Label, latest.Type, latest.Stop
	if latest.Error {
		return redf("backup %s has page checksum errors", latest.Label)
	}

	dir, err := os.MkdirTemp(scratchDir, "guardian-restore-")
	if err != nil {
		return fmt.Errorf("pgbackup: scratch dir: %w", err)
	}
	defer os.RemoveAll(dir)
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("pgbackup: scratch dir: %w", err)
	}
	if err := r.user.chown(dir); err != nil {
		return err
	}
	port, err := freePort()
	if err != nil {
		return fmt.Errorf("pgbackup: free port: %w", err)
	}
	if sock := filepath.Join(dir, ".s.PGSQL."+strconv.Itoa(port)); len(sock) > 100 {
		return fmt.Errorf("pgbackup: scratch dir %s: path too long for a unix socket", scratchDir)
	}
	if r.user != nil {
		if _, err := r.run(ctx, shortTimeout, "/usr/bin/test", "-w", dir); err != nil {
			return fmt.Errorf("pgbackup: scratch dir %s is not writable by user %s", scratchDir, r.user.name)
		}
	}
	data := filepath.Join(dir, "data")
	if _, err := r.pgbackrest(ctx, 0, "restore", repoOpt, "--set="+latest.Label, "--pg1-path="+data,
		"--archive-mode=off", "--type=immediate", "--target-action=promote",
		"--tablespace-map-all="+filepath.Join(dir, "tablespaces")); err != nil {
		return asRed(err)
	}
	if err := r.prepareRestored(dir, data, n); err != nil {
		return err
	}

	logFile := filepath.Join(dir, "postgres.log")
	started := false
	defer func() {
		if started {
			r.stopRestored(pgCtl, data)
		}
	}()
	started = true
	if _, err := r.run(ctx, 0, pgCtl, "start", "-D", data, "-l", logFile, "-w", "-s",
		"-t", strconv.Itoa(waitSeconds(ctx)), "-o", restoredOptions(dir, data, port)); err != nil {
		return asRed(fmt.Errorf("%w; server log: %s", err, r.logTail(logFile)))
	}
	rr.Value, err = r.runCheck(ctx, dir, data, port, rr.Query)
	if err != nil {
		return err
	}
	rr.Restored = true
	started = false
	if _, err := r.run(context.WithoutCancel(ctx), time.Minute, pgCtl, "stop", "-D", data, "-m", "fast", "-w", "-s", "-t", "50"); err != nil {
		r.stopRestored(pgCtl, data)
		return fmt.Errorf("pgbackup: stopping the restored cluster: %w", err)
	}
	return nil
}

// prepareRestored makes the restored data dir start safely on a machine
// whose configuration may live outside the data dir (Debian keeps it in
// /etc/postgresql): an empty postgresql.conf if none was restored, a
// pg_hba.conf that trusts only the private socket, and a restore_command
// without asynchronous archive-get (whose queue is the live server's).
func (r *runner) prepareRestored(dir, data string, repo int) error {
	files := []struct {
		path, content string
		keep          bool
	}{
		{filepath.Join(data, "postgresql.conf"), "", true},
		{filepath.Join(dir, "pg_hba.conf"), "local all all trust\n", false},
		{filepath.Join(dir, "pg_ident.conf"), "", false},
	}
	for _, f := range files {
		if f.keep {
			if _, err := os.Stat(f.path); err == nil {
				continue
			}
		}
		if err := os.WriteFile(f.path, []byte(f.content), 0o600); err != nil {
			return fmt.Errorf("pgbackup: prepare restored cluster: %w", err)
		}
		if err := r.user.chown(f.path); err != nil {
			return err
		}
	}
	auto, err := os.OpenFile(filepath.Join(data, "postgresql.auto.conf"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return fmt.Errorf("pgbackup: prepare restored cluster: %w", err)
	}
	_, err = fmt.Fprintf(auto, "\n# Restore check by Guardian (shared/pgbackup).\narchive_mode = 'off'\n"+
		"restore_command = '%s --config=%s --stanza=%s --repo=%d --pg1-path=%s --no-archive-async archive-get %%f \"%%p\"'\n",
		r.cfg.Binary, r.cfg.ConfigPath, r.cfg.Stanza, repo, data)
	if cerr := auto.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("pgbackup: prepare restored cluster: %w", err)
	}
	return nil
}

// restoredOptions are the restored server's command-line settings; they
// win over every configuration file. hot_standby=off makes pg_ctl -w
// return only once recovery ended and the cluster was promoted, and
// spares the rule that recovery under hot standby needs max_connections
// and friends at least as high as the primary's.
func restoredOptions(dir, data string, port int) string {
	settings := [][2]string{
		{"data_directory", data},
		{"port", strconv.Itoa(port)},
		{"listen_addresses", ""},
		{"unix_socket_directories", dir},
		{"archive_mode", "off"},
		{"hot_standby", "off"},
		{"hba_file", filepath.Join(dir, "pg_hba.conf")},
		{"ident_file", filepath.Join(dir, "pg_ident.conf")},
		{"external_pid_file", filepath.Join(dir, "postmaster.external.pid")},
		{"cluster_name", "guardian-restore-check"},
		{"primary_conninfo", ""},
		{"synchronous_standby_names", ""},
		{"logging_collector", "off"},
		{"log_destination", "stderr"},
		{"ssl", "off"},
		{"shared_buffers", "64MB"},
	}
	var b strings.Builder
	for _, s := range settings {
		// pg_ctl runs postgres through /bin/sh; the values hold no quote.
		fmt.Fprintf(&b, " -c '%s=%s'", s[0], s[1])
	}
	return strings.TrimSpace(b.String())
}

// stopRestored stops the restored cluster, harder each time, without
// waiting for the caller's (perhaps expired) context.
func (r *runner) stopRestored(pgCtl, data string) {
	ctx := context.Background()
	for _, mode := range []string{"fast", "immediate"} {
		if _, err := r.run(ctx, time.Minute, pgCtl, "stop", "-D", data, "-m", mode, "-w", "-s", "-t", "30"); err == nil {
			return
		}
	}
	if b, err := os.ReadFile(filepath.Join(data, "postmaster.pid")); err == nil {
		pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
		// Only the postmaster of this data dir, not a process that reused a stale pid.
		real, _ := filepath.EvalSymlinks(data)
		if cwd, _ := os.Readlink(fmt.Sprintf("/proc/%d/cwd", pid)); err == nil && pid > 1 && (cwd == data || cwd == real) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// connectRestored connects to the restored cluster once it accepts
// connections: pg_ctl -w returns while it still recovers (hot standby is
// off, so it refuses connections until it is promoted).
func (r *runner) connectRestored(ctx context.Context, dir, data string, port int) (*pgx.Conn, error) {
	cc, err := pgx.ParseConfig("sslmode=disable connect_timeout=10")
	if err != nil {
		return nil, err
	}
	cc.Host, cc.Port, cc.User, cc.Database = dir, uint16(port), "postgres", r.cfg.CheckDatabase
	cc.Fallbacks = nil
	deadline := time.Now().Add(time.Duration(waitSeconds(ctx)) * time.Second)
	for {
		conn, err := pgx.ConnectConfig(ctx, cc)
		if err == nil {
			return conn, nil
		}
		if ctx.Err() != nil {
			return nil, fmt.Errorf("pgbackup: waiting for the restored cluster: %w", ctx.Err())
		}
		if _, serr := os.Stat(filepath.Join(data, "postmaster.pid")); serr != nil {
			return nil, redf("the restored cluster stopped during recovery; server log: %s", r.logTail(filepath.Join(dir, "postgres.log")))
		}
		if time.Now().After(deadline) {
			return nil, redf("the restored cluster does not accept connections: %v; server log: %s", err, r.logTail(filepath.Join(dir, "postgres.log")))
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func (r *runner) runCheck(ctx context.Context, dir, data string, port int, query string) (string, error) {
	conn, err := r.connectRestored(ctx, dir, data, port)
	if err != nil {
		return "", err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var inRecovery bool
	if err := conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery); err != nil || inRecovery {
		return "", redf("the restored cluster did not finish recovery (in recovery: %t, %v)", inRecovery, err)
	}
	tx, err := conn.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		return "", redf("check: %v", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	var v any
	if err := tx.QueryRow(ctx, query).Scan(&v); err != nil {
		if ctx.Err() != nil {
			return "", fmt.Errorf("pgbackup: check query %s: %w", query, err)
		}
		return "", redf("check query %s: %v", query, err)
	}
	return checkValue(v)
}

// checkValue is the check's answer as text, or red when it says the
// restored database holds nothing: NULL, false, zero or an empty text. A
// count of a table the restore emptied (or a copy of the wrong database)
// would otherwise pass as well as a full one.
func checkValue(v any) (string, error) {
	empty := false
	switch x := v.(type) {
	case nil:
		return "NULL", redf("the check answered NULL")
	case bool:
		empty = !x
	case string:
		empty = x == ""
	case int64:
		empty = x == 0
	case int32:
		empty = x == 0
	case int16:
		empty = x == 0
	case float64:
		empty = x == 0
	case float32:
		empty = x == 0
	case uint32: // oid, xid
		empty = x == 0
	case pgtype.Numeric:
		empty = x.Valid && !x.NaN && x.InfinityModifier == pgtype.Finite && (x.Int == nil || x.Int.Sign() == 0)
	}
	text := fmt.Sprint(v)
	if n, ok := v.(pgtype.Numeric); ok {
		if b, err := n.MarshalJSON(); err == nil {
			text = string(b)
		}
	}
	if empty {
		return text, redf("the check answered %s: the restored database holds none of what it looks for", text)
	}
	return text, nil
}

var tableRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$`)

// checkQuery turns VerifyRestore's check argument into a query.
func checkQuery(check string) (string, error) {
	check = strings.TrimSpace(check)
	switch {
	case check == "":
		return DefaultCheck, nil
	case tableRe.MatchString(check):
		return "SELECT count(*) FROM " + pgx.Identifier(strings.Split(check, ".")).Sanitize(), nil
	}
	word := strings.ToUpper(strings.Fields(check)[0])
	if word != "SELECT" && word != "WITH" {
		return "", fmt.Errorf("pgbackup: restore check must be a table name or a SELECT query")
	}
	return check, nil
}

var (
	verifyCountRe = regexp.MustCompile(`(missing|checksum invalid|size invalid|other): (\d+)`)
	verifyWALRe   = regexp.MustCompile(`total WAL checked: (\d+), total valid WAL: (\d+)`)
)

// parseVerify reads `pgbackrest verify --output=text --verbose`. It
// requires "status: ok" and no invalid backup, WAL or file count; it
// returns a summary, or an error wrapping job.ErrRed.
func parseVerify(out string) (string, error) {
	ok := false
	var problems []string
	backups, wal := 0, 0
	for _, line := range strings.Split(out, "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "":
			continue
		case line == "status: ok":
			ok = true
			continue
		case strings.HasPrefix(line, "status:"), strings.Contains(line, "status: invalid"):
			problems = append(problems, line)
			continue
		case strings.HasPrefix(line, "backup:") && strings.Contains(line, "status: valid"):
			backups++
		}
		if m := verifyWALRe.FindStringSubmatch(line); m != nil {
			n, _ := strconv.Atoi(m[1])
			wal += n
		}
		for _, m := range verifyCountRe.FindAllStringSubmatch(line, -1) {
			if m[2] != "0" {
				problems = append(problems, line)
				break
			}
		}
	}
	if !ok || len(problems) > 0 {
		detail := strings.Join(problems, "; ")
		if !ok {
			var lines []string
			for _, line := range strings.Split(out, "\n") {
				if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "stanza:") {
					lines = append(lines, line)
				}
			}
			detail = tail(strings.Join(lines, "\n"), 10, 1000)
		}
		if detail == "" {
			detail = "no result printed"
		}
		return "", redf("pgbackrest verify: %s", detail)
	}
	return fmt.Sprintf("%d backups and %d WAL segments valid", backups, wal), nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitSeconds is pg_ctl's -t: the time left in ctx, at most an hour.
func waitSeconds(ctx context.Context) int {
	left := time.Hour
	if d, ok := ctx.Deadline(); ok && time.Until(d) < left {
		left = time.Until(d)
	}
	if left < time.Second {
		return 1
	}
	return int(left / time.Second)
}

// logTail is the end of the server log at path, redacted, for an error.
func (r *runner) logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log)"
	}
	return tail(r.redact(string(b)), 8, 1500)
}
