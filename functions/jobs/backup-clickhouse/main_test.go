package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"filippo.io/age"

	"github.com/glassmkr/guardian/shared/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

// TestJobBacksUpVerifiesAndTurnsRedOnADamagedBlob runs the built job as
// cron would: a backup with its restore check, then a check alone after a
// blob was damaged.
func TestJobBacksUpVerifiesAndTurnsRedOnADamagedBlob(t *testing.T) {
	f := newJobFixture(t, 100)
	ch, sftp, dir := f.ch, f.sftp, f.dir
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	idFile := filepath.Join(dir, "identity.txt")
	if err := os.WriteFile(idFile, []byte(id.String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	env := append(f.env(id.Recipient().String(), idFile), "GUARDIAN_JOB_METRICS_DIR="+filepath.Join(dir, "metrics"))
	run := func(args ...string) (int, map[string]any, string) {
		t.Helper()
		return f.run(env, args...)
	}

	code, res, out := run()
	if code != 0 || res["status"] != "ok" || res["rows"].(float64) < 100 || res["set"] == "" {
		t.Fatalf("backup: exit %d\n%s", code, out)
	}
	if v, _ := res["verify"].([]any); len(v) != 1 {
		t.Errorf("no restore check in %s", out)
	}
	if _, err := os.Stat(filepath.Join(dir, "metrics", "guardian_job_backup_clickhouse.prom")); err != nil {
		t.Error(err)
	}

	// The latest set restored into a new database beside the live one, as
	// a job of its own: its result stands for no backup in the metrics.
	into := ch.Database + "_restored"
	t.Cleanup(func() { _ = ch.Conn.Exec(context.Background(), "DROP DATABASE IF EXISTS "+into) })
	if code, rres, out := run("restore", into); code != 0 || rres["job"] != "restore-clickhouse" || fmt.Sprint(rres["restore"]) == "" {
		t.Fatalf("restore: exit %d\n%s", code, out)
	} else if rr, _ := rres["restore"].(map[string]any); rr["into"] != into || rr["rows"].(float64) < 100 {
		t.Fatalf("restore's report: %v", rr)
	}
	var restored uint64
	if err := ch.Conn.QueryRow(context.Background(), "SELECT count() FROM "+into+".snapshots").Scan(&restored); err != nil || restored != 100 {
		t.Fatalf("restored snapshots: %d (%v)", restored, err)
	}
	if _, err := os.Stat(filepath.Join(dir, "metrics", "guardian_job_restore_clickhouse.prom")); err != nil {
		t.Errorf("the restore's metrics: %v", err)
	}
	if code, _, out := run("restore", into); code != 2 || !strings.Contains(out, "exists") {
		t.Fatalf("a restore into a database that exists: exit %d\n%s", code, out)
	}

	var blob string
	_ = filepath.WalkDir(filepath.Join(sftp.Root, "backups", res["set"].(string)), func(p string, d fs.DirEntry, err error) error {
		if err == nil && blob == "" && strings.HasSuffix(p, ".age") {
			blob = p
		}
		return err
	})
	b, err := os.ReadFile(blob)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0x80
	if err := os.WriteFile(blob, b, 0o600); err != nil {
		t.Fatal(err)
	}
	okMetrics, err := os.ReadFile(filepath.Join(dir, "metrics", "guardian_job_backup_clickhouse.prom"))
	if err != nil {
		t.Fatal(err)
	}
	code, res, out = run("verify")
	if code != 1 || res["status"] != "red" || res["job"] != "verify-clickhouse-backup" || !strings.Contains(out, "SHA-256") {
		t.Fatalf("verify of a damaged set: exit %d\n%s", code, out)
	}
	// A check of its own name: its result stands for no backup's, so a
	// green check cannot hide a failed backup (nor a red one fail a good).
	if b, err := os.ReadFile(filepath.Join(dir, "metrics", "guardian_job_backup_clickhouse.prom")); err != nil || !bytes.Equal(b, okMetrics) {
		t.Errorf("the check changed the backup's metrics (%v):\n%s", err, b)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "metrics", "guardian_job_verify_clickhouse_backup.prom")); err != nil || !strings.Contains(string(b), `status="red"} 1`) {
		t.Errorf("the check's own metrics (%v):\n%s", err, b)
	}
}

// A set encrypted to other age recipients than the set before it turns
// the run red when nothing here can prove the new ones restore (no
// identity): a wrong recipient would otherwise go unnoticed until the
// monthly check, by when every readable set has expired. The next set,
// made with the same recipients, is green; with an identity, the run's
// own verification proves the change and the run stays green.
func TestChangedRecipientsTurnTheRunRedUntilProven(t *testing.T) {
	f := newJobFixture(t, 10)
	dir := f.dir
	run := func(recipient, identityFile string) (int, map[string]any, string) {
		t.Helper()
		time.Sleep(1100 * time.Millisecond) // sets are named by the second
		return f.run(f.env(recipient, identityFile))
	}
	keys := make([]*age.X25519Identity, 3)
	for i := range keys {
		var err error
		if keys[i], err = age.GenerateX25519Identity(); err != nil {
			t.Fatal(err)
		}
	}
	if code, res, out := run(keys[0].Recipient().String(), ""); code != 0 || res["recipients_changed"] != nil {
		t.Fatalf("first set: exit %d\n%s", code, out)
	}
	code, res, out := run(keys[1].Recipient().String(), "")
	if changed, _ := res["recipients_changed"].([]any); code != 1 || res["status"] != "red" || len(changed) != 1 || !strings.Contains(out, "run restore-verify now") {
		t.Fatalf("a set to another recipient: exit %d\n%s", code, out)
	}
	if res["set"] == "" {
		t.Fatal("the red run made no set")
	}
	if code, res, out := run(keys[1].Recipient().String(), ""); code != 0 || res["recipients_changed"] != nil {
		t.Fatalf("the next set, to the same recipient: exit %d\n%s", code, out)
	}
	idFile := filepath.Join(dir, "identity.txt")
	if err := os.WriteFile(idFile, []byte(keys[2].String()+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, res, out := run(keys[2].Recipient().String(), idFile); code != 0 || res["recipients_changed"] == nil {
		t.Fatalf("a change proven by the run's own verification: exit %d\n%s", code, out)
	}
}

// jobFixture is a ClickHouse database with rows, an SFTP target and the
// built job, for tests that run the job as cron would.
type jobFixture struct {
	t       *testing.T
	ch      *testenv.CH
	servers map[string]string
	sftp    *testenv.SFTP
	dir     string
	bin     string
}

func newJobFixture(t *testing.T, rows int) *jobFixture {
	t.Helper()
	f := &jobFixture{t: t, ch: testenv.ClickHouse(t), servers: testenv.Servers(t, "clickhouse"), sftp: testenv.SFTPServer(t), dir: t.TempDir()}
	if err := f.ch.Conn.Exec(context.Background(), fmt.Sprintf(`INSERT INTO %s.snapshots
		SELECT 'cust', 'srv', toDateTime('2026-11-20 00:00:00') + number * 3600, now(), '1', 7, 'payload'
		FROM system.numbers LIMIT %d`, f.ch.Database, rows)); err != nil {
		t.Fatal(err)
	}
	f.bin = testenv.Build(t, "./functions/jobs/backup-clickhouse")
	return f
}

// env is the job's environment, encrypting to recipient and verifying
// with identityFile ("" for none).
func (f *jobFixture) env(recipient, identityFile string) []string {
	return []string{
		"PATH=" + os.Getenv("PATH"),
		"GUARDIAN_CLICKHOUSE_ADDR=" + f.ch.Addr,
		"GUARDIAN_CLICKHOUSE_HTTP_URL=" + f.servers["GUARDIAN_CLICKHOUSE_HTTP_URL"],
		"GUARDIAN_CLICKHOUSE_USER=" + f.ch.User,
		"GUARDIAN_CLICKHOUSE_PASSWORD=" + f.ch.Password,
		"GUARDIAN_CLICKHOUSE_DATABASE=" + f.ch.Database,
		"GUARDIAN_BACKUP_AGE_RECIPIENTS=" + recipient,
		"GUARDIAN_BACKUP_SFTP_TARGETS=" + f.sftp.Target("backups"),
		"GUARDIAN_BACKUP_SSH_KEY=" + f.sftp.KeyPath,
		"GUARDIAN_BACKUP_SSH_KNOWN_HOSTS=" + f.sftp.KnownHosts,
		"GUARDIAN_BACKUP_AGE_IDENTITY=" + identityFile,
		"GUARDIAN_JOB_LOCK_DIR=" + filepath.Join(f.dir, "lock"),
	}
}

// run runs the job with env and args: its exit status, its result line,
// and all it printed, which must hold no secret.
func (f *jobFixture) run(env []string, args ...string) (int, map[string]any, string) {
	t := f.t
	t.Helper()
	cmd := exec.Command(f.bin, args...)
	cmd.Env = env
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	all := string(out) + stderr.String()
	if strings.Contains(all, f.ch.Password) || strings.Contains(all, "AGE-SECRET-KEY") {
		t.Errorf("the job printed a secret:\n%s", all)
	}
	var res map[string]any
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("result line %q: %v\n%s", out, err, stderr.String())
	}
	return code, res, all
}

// A database emptied after a fault (here: its snapshots truncated) is
// backed up, but its set does not become the latest: the run is red, and
// the full set stays what a restore loads and what pruning keeps, until
// a run with GUARDIAN_BACKUP_ACCEPT_SHRINK=1 says the drop is meant.
func TestAnEmptiedDatabaseDoesNotBecomeTheLatest(t *testing.T) {
	f := newJobFixture(t, 2000) // chbackup.ShrinkRows and more
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	env := f.env(id.Recipient().String(), "")
	latest := func() string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(f.sftp.Root, "backups", "LATEST"))
		if err != nil {
			t.Fatal(err)
		}
		return strings.TrimSpace(string(b))
	}
	code, res, out := f.run(env)
	if code != 0 {
		t.Fatalf("first backup: exit %d\n%s", code, out)
	}
	full := res["set"].(string)
	if latest() != full {
		t.Fatalf("LATEST %q, want %q", latest(), full)
	}
	if err := f.ch.Conn.Exec(context.Background(), "TRUNCATE TABLE "+f.ch.Database+".snapshots"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // sets are named by the second
	code, res, out = f.run(env)
	if code != 1 || res["status"] != "red" || !strings.Contains(out, "snapshots holds 0 rows, 2000 in "+full) || !strings.Contains(out, "GUARDIAN_BACKUP_ACCEPT_SHRINK") {
		t.Fatalf("a backup of the emptied database: exit %d\n%s", code, out)
	}
	emptied := res["set"].(string)
	if latest() != full {
		t.Fatalf("LATEST moved to %q", latest())
	}
	if _, err := os.Stat(filepath.Join(f.sftp.Root, "backups", emptied, "manifest.json")); err != nil {
		t.Errorf("the emptied database's set is not kept beside: %v", err)
	}
	time.Sleep(time.Second)
	code, res, out = f.run(append(env, "GUARDIAN_BACKUP_ACCEPT_SHRINK=1"))
	if code != 0 || latest() != res["set"] {
		t.Fatalf("an accepted drop: exit %d, LATEST %q\n%s", code, latest(), out)
	}
}
