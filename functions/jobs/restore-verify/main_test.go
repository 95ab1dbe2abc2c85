package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/glassmkr/guardian/shared/chbackup"
	"github.com/glassmkr/guardian/shared/config"
	"github.com/glassmkr/guardian/shared/job"
	"github.com/glassmkr/guardian/shared/pgbackup"
	"github.com/glassmkr/guardian/shared/pgbackup/pgbackuptest"
	"github.com/glassmkr/guardian/shared/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

// alerts is a webhook receiver that counts the alerts it was sent.
type alerts struct {
	mu  sync.Mutex
	got []map[string]any
	srv *httptest.Server
}

func newAlerts(t *testing.T) *alerts {
	a := &alerts{}
	a.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body map[string]any
		_ = json.NewDecoder(r.Body).Decode(&body)
		a.mu.Lock()
		a.got = append(a.got, body)
		a.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(a.srv.Close)
	return a
}

func (a *alerts) count() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return len(a.got)
}

// TestGreenOnGoodBackupsRedWithOneAlertOnDamagedOrMissing takes a real
// pgBackRest backup and a real ClickHouse backup over SFTP, then runs the
// job: green with no alert; red with exactly one alert when a ClickHouse
// blob is damaged; red with exactly one more when the PostgreSQL
// repository holds no backup.
func TestGreenOnGoodBackupsRedWithOneAlertOnDamagedOrMissing(t *testing.T) {
	ctx := context.Background()
	pgc := pgbackuptest.Start(t, 1)
	pgc.Superuser(t, "guardian", "CREATE TABLE restore_canary (v text)", "INSERT INTO restore_canary VALUES ('restored-ok')")
	if _, err := pgbackup.Backup(ctx, pgc.Config, pgbackup.Full); err != nil {
		t.Fatalf("pg backup: %v", err)
	}

	ch := testenv.ClickHouse(t)
	servers := testenv.Servers(t, "clickhouse")
	if err := ch.Conn.Exec(ctx, `INSERT INTO `+ch.Database+`.snapshots
		SELECT 'cust', 'srv', toDateTime('2026-11-20 00:00:00') + number * 3600, now(), '1', 7, 'payload'
		FROM system.numbers LIMIT 200`); err != nil {
		t.Fatal(err)
	}
	sftp := testenv.SFTPServer(t)
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	idFile := filepath.Join(dir, "identity.txt")
	if err := os.WriteFile(idFile, []byte(id.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	hooks := newAlerts(t)
	settings := map[string]string{
		"GUARDIAN_CLICKHOUSE_ADDR":     ch.Addr,
		"GUARDIAN_CLICKHOUSE_HTTP_URL": servers["GUARDIAN_CLICKHOUSE_HTTP_URL"],
		"GUARDIAN_CLICKHOUSE_USER":     ch.User,
		"GUARDIAN_CLICKHOUSE_PASSWORD": ch.Password,
		"GUARDIAN_CLICKHOUSE_DATABASE": ch.Database,
		chbackup.EnvAgeRecipients:      id.Recipient().String(),
		chbackup.EnvTargets:            sftp.Target("backups"),
		chbackup.EnvSSHKey:             sftp.KeyPath,
		chbackup.EnvKnownHosts:         sftp.KnownHosts,
		chbackup.EnvAgeIdentity:        idFile,
		EnvCheck:                       "SELECT v FROM restore_canary",
		job.EnvLockDir:                 filepath.Join(dir, "lock"),
		job.EnvAlertWebhooks:           hooks.srv.URL + "/alerts",
		"GUARDIAN_WEBHOOK_ALLOW":       "127.0.0.1",
	}
	l := config.New(pgc.Lookup(settings))
	chCfg, err := chbackup.LoadConfig(l)
	if err != nil {
		t.Fatal(err)
	}
	set, err := chbackup.Backup(ctx, chCfg)
	if err != nil {
		t.Fatalf("clickhouse backup: %v", err)
	}

	execute := func(extra map[string]string) (job.Result, map[string]any) {
		t.Helper()
		lookup := pgc.Lookup(settings)
		return runJob(t, func(k string) (string, bool) {
			if v, ok := extra[k]; ok {
				return v, true
			}
			return lookup(k)
		})
	}

	// Good backups: green, the check value came from the restored copy.
	res, line := execute(nil)
	if res.Status != job.StatusOK {
		t.Fatalf("good backups: %s: %s", res.Status, res.Err)
	}
	if !strings.Contains(mustJSON(t, line["postgres"]), "restored-ok") {
		t.Fatalf("postgres report lacks the restored value: %v", line["postgres"])
	}
	if ch := mustJSON(t, line["clickhouse"]); !strings.Contains(ch, `"ok":true`) || strings.Contains(ch, `"ok":false`) || hooks.count() != 0 {
		t.Fatalf("clickhouse report %v, alerts %d", line["clickhouse"], hooks.count())
	}

	// A damaged ClickHouse blob: red, one alert naming ClickHouse.
	blob := ""
	_ = filepath.WalkDir(filepath.Join(sftp.Root, "backups", set.Name), func(p string, d fs.DirEntry, err error) error {
		if err == nil && blob == "" && strings.HasSuffix(p, ".age") {
			blob = p
		}
		return nil
	})
	if blob == "" {
		t.Fatalf("no blob in set %s", set.Name)
	}
	b, err := os.ReadFile(blob)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x40
	if err := os.WriteFile(blob, b, 0o600); err != nil {
		t.Fatal(err)
	}
	res, _ = execute(nil)
	if res.Status != job.StatusRed || !strings.Contains(res.Err, "clickhouse") {
		t.Fatalf("damaged blob: %s: %s", res.Status, res.Err)
	}
	if n := hooks.count(); n != 1 {
		t.Fatalf("damaged blob: %d alerts, want exactly 1", n)
	}

	// No PostgreSQL backup at all (an empty repository): red, one more alert.
	empty := filepath.Join(pgc.Work, "empty-repo")
	if err := os.Mkdir(empty, 0o750); err != nil {
		t.Fatal(err)
	}
	chownPostgres(t, empty)
	res, _ = execute(map[string]string{EnvParts: "postgres", pgbackup.EnvRepo1Path: empty})
	if res.Status != job.StatusRed || !strings.Contains(res.Err, "postgres") {
		t.Fatalf("missing backup: %s: %s", res.Status, res.Err)
	}
	if n := hooks.count(); n != 2 {
		t.Fatalf("after the missing backup: %d alerts, want 2", n)
	}
	if hooks.got[1]["event"] != "job.red" {
		t.Fatalf("alert %v", hooks.got[1])
	}
}

func TestUnknownPartIsAnError(t *testing.T) {
	var out bytes.Buffer
	res := job.Execute(context.Background(), spec(), func(k string) (string, bool) {
		switch k {
		case EnvParts:
			return "postgres,mysql", true
		case job.EnvLockDir:
			return t.TempDir(), true
		}
		return "", false
	}, &out, &bytes.Buffer{})
	if res.Status != job.StatusError || !strings.Contains(res.Err, "mysql") {
		t.Fatalf("%s: %s", res.Status, res.Err)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func chownPostgres(t *testing.T, path string) {
	t.Helper()
	u, err := user.Lookup("postgres")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(path, uid, gid); err != nil {
		t.Fatal(err)
	}
}

// TestACopyOnTheBackupHostIsRestoredToo copies repo1 to a real sshd as
// backup-postgres does, has the job fetch and restore that copy, then
// damages the copy alone: red, naming the copy.
func TestACopyOnTheBackupHostIsRestoredToo(t *testing.T) {
	ctx := context.Background()
	pgc := pgbackuptest.Start(t, 1)
	pgc.Superuser(t, "guardian", "CREATE TABLE restore_canary (v text)", "INSERT INTO restore_canary VALUES ('copy-restored')")
	if _, err := pgbackup.Backup(ctx, pgc.Config, pgbackup.Full); err != nil {
		t.Fatalf("pg backup: %v", err)
	}
	srv := testenv.SFTPServer(t)
	target, err := chbackup.ParseTarget(srv.Target("pgbackrest"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := chbackup.DialSession(ctx, srv.KeyPath, srv.KnownHosts, target)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pgbackup.Mirror(ctx, pgc.Config.Repos[0].Path, s, target.String(), nil); err != nil {
		t.Fatal(err)
	}
	s.Close()
	dir := t.TempDir()
	settings := map[string]string{
		EnvParts:                "postgres",
		EnvCheck:                "SELECT v FROM restore_canary",
		pgbackup.EnvSFTPTargets: target.String(),
		chbackup.EnvSSHKey:      srv.KeyPath,
		chbackup.EnvKnownHosts:  srv.KnownHosts,
		job.EnvLockDir:          filepath.Join(dir, "lock"),
	}
	execute := func() (job.Result, map[string]any) { t.Helper(); return runJob(t, pgc.Lookup(settings)) }
	res, line := execute()
	if res.Status != job.StatusOK || !strings.Contains(mustJSON(t, line["postgres_copies"]), "copy-restored") {
		t.Fatalf("good copy: %s %s: %v", res.Status, res.Err, line["postgres_copies"])
	}

	// Damage the copy only (repo1 stays good): the copy's check is red.
	sets, _ := filepath.Glob(filepath.Join(target.Path, "backup", pgc.Config.Stanza, "*F"))
	if len(sets) != 1 {
		t.Fatalf("backup sets in the copy: %v", sets)
	}
	pgbackuptest.DamageLargest(t, filepath.Join(sets[0], "pg_data"))
	res, _ = execute()
	if res.Status != job.StatusRed || !strings.Contains(res.Err, "copy on "+target.String()) || !strings.Contains(res.Err, "checksum invalid") {
		t.Fatalf("damaged copy: %s: %s", res.Status, res.Err)
	}

	// A backup host that does not answer: the copy was not checked, which
	// is an error (exit 2), not a verdict on the copy.
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	res, _ = execute()
	if res.Status != job.StatusError || !strings.Contains(res.Err, "copy on "+target.String()) {
		t.Fatalf("backup host down: %s: %s", res.Status, res.Err)
	}
}

// runJob runs the job once with lookup and returns its result line.
func runJob(t *testing.T, lookup func(string) (string, bool)) (job.Result, map[string]any) {
	t.Helper()
	var out, errOut bytes.Buffer
	res := job.Execute(context.Background(), spec(), lookup, &out, &errOut)
	var line map[string]any
	if err := json.Unmarshal(out.Bytes(), &line); err != nil {
		t.Fatalf("result line %q: %v (stderr %s)", out.String(), err, errOut.String())
	}
	return res, line
}

// A run killed outright leaves plaintext copies in its directories; the
// next removes them: in the job's own scratch directory all of them, young
// ones too (the job's lock: no other run is going on), in a shared temp
// directory only those too old to belong to a run still going; nothing
// else in either.
func TestLeftoversOfAKilledRunAreRemoved(t *testing.T) {
	own, shared := t.TempDir(), t.TempDir()
	old := time.Now().Add(-spec().Timeout - time.Minute)
	mk := func(dir, name string, at time.Time) {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Join(p, "base"), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(p, "base", "plaintext"), []byte("customer rows"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(p, at, at); err != nil {
			t.Fatal(err)
		}
	}
	for _, dir := range []string{own, shared} {
		mk(dir, "guardian-restore-1234", old)
		mk(dir, "pgbackrest-copy-5678", old)
		mk(dir, "guardian-restore-verify-9abc", old)
		mk(dir, "guardian-restore-recent", time.Now()) // killed minutes ago, or another's
		mk(dir, "unrelated", old)
	}
	dirs := []leftoverDir{{own, true}, {shared, false}, {filepath.Join(own, "missing"), true}}
	n, err := removeLeftovers(dirs, time.Now())
	if err != nil || n != 7 {
		t.Fatalf("removed %d, %v; want 7", n, err)
	}
	left := func(dir string) string {
		entries, _ := os.ReadDir(dir)
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		return strings.Join(names, ",")
	}
	if got := left(own); got != "unrelated" {
		t.Errorf("left in the job's own directory: %s", got)
	}
	if got := left(shared); got != "guardian-restore-recent,unrelated" {
		t.Errorf("left in the shared temp directory: %s", got)
	}
}

func TestLeftoverDirs(t *testing.T) {
	// As the unit and the cron wrapper run it: TMPDIR is the scratch
	// directory, the job's own.
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	for _, tc := range []struct {
		scratch string
		want    []leftoverDir
	}{
		{"", []leftoverDir{{tmp, false}}},
		{tmp, []leftoverDir{{tmp, true}}},
		{"/var/lib/guardian-restore-verify", []leftoverDir{{"/var/lib/guardian-restore-verify", true}, {tmp, false}}},
		// A scratch directory every user shares is not the job's own.
		{"/var/tmp/", []leftoverDir{{"/var/tmp/", false}, {tmp, false}}},
		{"/tmp", []leftoverDir{{"/tmp", false}, {tmp, false}}},
	} {
		if got := leftoverDirs(tc.scratch); !slices.Equal(got, tc.want) {
			t.Errorf("leftoverDirs(%q) = %v, want %v", tc.scratch, got, tc.want)
		}
	}
}

// `restore-verify cleanup` (the unit's ExecStopPost) removes at once what
// a run that just ended left in the job's own scratch directory, young
// entries included, and leaves the shared temp directory's to their age
// rule; it says what it did in one line and writes no result or metrics.
func TestCleanupAfterARunRemovesItsLeftoversAtOnce(t *testing.T) {
	own := t.TempDir()
	shared := t.TempDir()
	t.Setenv("TMPDIR", shared)
	for _, dir := range []string{own, shared} {
		for _, name := range []string{"guardian-restore-just-killed", "pgbackrest-copy-1", "drill.ABC123", "unrelated"} {
			if err := os.MkdirAll(filepath.Join(dir, name, "base"), 0o700); err != nil {
				t.Fatal(err)
			}
		}
	}
	locks := t.TempDir()
	env := func(k string) (string, bool) {
		switch k {
		case EnvScratch:
			return own, true
		case job.EnvLockDir:
			return locks, true
		}
		return "", false
	}
	// While a run holds the job's lock, nothing is touched.
	release, err := job.TryLock(spec(), env)
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	if code := cleanup(env, &out); code != 0 || !strings.Contains(out.String(), `"skipped"`) {
		t.Fatalf("with a run holding the lock: exit %d: %s", code, out.String())
	}
	if entries, _ := os.ReadDir(own); len(entries) != 4 {
		t.Fatalf("with a run holding the lock, %d entries left of 4", len(entries))
	}
	release()
	out.Reset()
	if code := cleanup(env, &out); code != 0 {
		t.Fatalf("exit %d: %s", code, out.String())
	}
	var line map[string]any
	if err := json.Unmarshal([]byte(out.String()), &line); err != nil || line["cleanup"] != true || line["leftovers_removed"] != float64(2) {
		t.Fatalf("line %q (%v)", out.String(), err)
	}
	for dir, want := range map[string]int{own: 2, shared: 4} {
		if entries, _ := os.ReadDir(dir); len(entries) != want {
			t.Errorf("%s holds %d entries, want %d", dir, len(entries), want)
		}
	}
	// Without a scratch directory of its own, the job has nothing to clean
	// at once.
	out.Reset()
	noScratch := func(k string) (string, bool) {
		if k == job.EnvLockDir {
			return locks, true
		}
		return "", false
	}
	if code := cleanup(noScratch, &out); code != 0 || !strings.Contains(out.String(), `"leftovers_removed":0`) {
		t.Fatalf("no scratch directory: exit %d: %s", code, out.String())
	}
}

// A run killed while its ClickHouse scratch database (a plaintext copy)
// exists leaves the database's name in a note; the unit's clean-up step
// drops it at once, whatever the other backup settings, and a note naming
// anything but a scratch database is refused, never dropped.
func TestCleanupDropsTheScratchDatabaseAKilledRunNoted(t *testing.T) {
	ch := testenv.ClickHouse(t)
	servers := testenv.Servers(t, "clickhouse")
	ctx := context.Background()
	own, locks := t.TempDir(), t.TempDir()
	env := func(k string) (string, bool) {
		switch k {
		case EnvScratch:
			return own, true
		case job.EnvLockDir:
			return locks, true
		case config.ClickHouseAddr:
			return ch.Addr, true
		case config.ClickHouseUser:
			return ch.User, true
		case config.ClickHousePassword:
			return ch.Password, true
		case config.ClickHouseDatabase:
			return ch.Database, true
		case chbackup.EnvClickHouseHTTPURL:
			return servers["GUARDIAN_CLICKHOUSE_HTTP_URL"], true
		}
		return "", false
	}
	sum := sha256.Sum256([]byte(ch.Database))
	name := fmt.Sprintf("restore_verify_%x_%d_0123456789ab", sum[:4], time.Now().Add(time.Hour).Unix())
	if !chbackup.IsScratchOf(ch.Database, name) {
		t.Fatalf("%s is not a scratch name", name)
	}
	exists := func(db string) bool {
		t.Helper()
		var n uint64
		if err := ch.Conn.QueryRow(ctx, "SELECT count() FROM system.databases WHERE name = ?", db).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 1
	}
	if err := ch.Conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ch.Conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name) })
	// Two targets' scratch databases, both left by the killed run.
	second := name[:len(name)-1] + "c"
	if err := ch.Conn.Exec(ctx, "CREATE DATABASE "+second); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ch.Conn.Exec(ctx, "DROP DATABASE IF EXISTS "+second) })
	note := scratchNotePath(own)
	for _, n := range []string{name, second, "restore_verify_gone"} {
		if err := noteScratch(note, n, false); err != nil {
			t.Fatal(err)
		}
	}
	if err := noteScratch(note, "restore_verify_gone", true); err != nil { // dropped by the run itself
		t.Fatal(err)
	}
	var out strings.Builder
	if code := cleanup(env, &out); code != 0 || !strings.Contains(out.String(), `"clickhouse_scratch_dropped":["`+name+`","`+second+`"]`) {
		t.Fatalf("exit %d: %s", code, out.String())
	}
	if exists(name) || exists(second) {
		t.Fatal("a noted scratch database is still there")
	}
	if _, err := os.Stat(note); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("the note outlived its database: %v", err)
	}

	// A note naming the live database is refused, loudly, and kept.
	if err := noteScratch(note, ch.Database, false); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if code := cleanup(env, &out); code == 0 || !strings.Contains(out.String(), "is not a scratch database") {
		t.Fatalf("a note naming the live database: exit %d: %s", code, out.String())
	}
	if !exists(ch.Database) {
		t.Fatal("the live database was dropped")
	}
	if _, err := os.Stat(note); err != nil {
		t.Fatalf("the refused note is gone: %v", err)
	}

	// A ClickHouse URL that does not parse, with credentials in it, is
	// refused by name: the request's error would quote it whole.
	if err := os.Remove(note); err != nil {
		t.Fatal(err)
	}
	if err := noteScratch(note, name, false); err != nil {
		t.Fatal(err)
	}
	badURL := func(k string) (string, bool) {
		if k == chbackup.EnvClickHouseHTTPURL {
			return "http://default:S3cret#W@127.0.0.1:8123", true
		}
		return env(k)
	}
	out.Reset()
	if code := cleanup(badURL, &out); code == 0 || strings.Contains(out.String(), "S3cret") || !strings.Contains(out.String(), chbackup.EnvClickHouseHTTPURL) {
		t.Fatalf("a bad URL: exit %d: %s", code, out.String())
	}
}
