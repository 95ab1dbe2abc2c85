package pgbackup_test

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/glassmkr/guardian/shared/job"
	"github.com/glassmkr/guardian/shared/pgbackup"
	"github.com/glassmkr/guardian/shared/pgbackup/pgbackuptest"
	"github.com/glassmkr/guardian/shared/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

// TestBackupVerifyRestore runs the whole life of the backups on one real
// cluster with two encrypted repositories: full and diff backups, the
// encryption of everything stored, a restore check that passes, and
// restore checks that must fail.
func TestBackupVerifyRestore(t *testing.T) {
	c := pgbackuptest.Start(t, 2)
	cfg := c.Config
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	canary := "canary-" + pgbackuptest.Secret()
	conn, err := pgx.Connect(ctx, c.Servers["GUARDIAN_PG_DSN"])
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{"CREATE TABLE canary (v text)", "INSERT INTO canary VALUES ('" + canary + "')"} {
		if _, err := conn.Exec(ctx, s); err != nil {
			t.Fatal(err)
		}
	}
	conn.Close(ctx)
	// The test could fail: the server's WAL carries the canary in plaintext
	// (and, after the backup's checkpoint, so do its data files).
	found := map[string]bool{}
	inServer := func() {
		walk(t, c.DataDir, func(path string, b []byte) {
			if bytes.Contains(b, []byte(canary)) {
				found[strings.SplitN(strings.TrimPrefix(path, c.DataDir+"/"), "/", 2)[0]] = true
			}
		})
	}
	c.Superuser(t, "postgres", "SELECT pg_switch_wal()") // flushed and on its way to the archive
	inServer()

	var labels []string
	t.Run("full then diff backups are taken into both repositories", func(t *testing.T) {
		for _, kind := range []string{pgbackup.Full, pgbackup.Diff} {
			taken, err := pgbackup.Backup(ctx, cfg, kind)
			if err != nil {
				t.Fatalf("%s: %v", kind, err)
			}
			if len(taken) != 2 || taken[0].Repo != 1 || taken[1].Repo != 2 {
				t.Fatalf("%s: took %+v", kind, taken)
			}
			for _, b := range taken {
				if b.Type != kind || b.Label == "" || b.Size <= 0 || b.RepoDelta <= 0 {
					t.Errorf("%s into repo%d: %+v", kind, b.Repo, b)
				}
				if kind == pgbackup.Diff && b.Prior == "" {
					t.Errorf("diff without a prior backup: %+v", b)
				}
				labels = append(labels, b.Label)
			}
		}
		info, err := pgbackup.Info(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		if !info.Status.OK() || !info.HasFull(1) || !info.HasFull(2) {
			t.Fatalf("info: %+v", info)
		}
		for _, l := range labels {
			if !slices.ContainsFunc(info.Backups, func(b pgbackup.BackupInfo) bool { return b.Label == l }) {
				t.Errorf("backup %s not in info %+v", l, info.Backups)
			}
		}
	})
	if t.Failed() {
		t.FailNow()
	}

	t.Run("the repositories hold only ciphertext", func(t *testing.T) {
		files := 0
		for i := 1; i <= 2; i++ {
			walk(t, cfg.Repos[i-1].Path, func(path string, b []byte) {
				files++
				if bytes.Contains(b, []byte(canary)) {
					t.Errorf("canary in plaintext in %s", path)
				}
				if !bytes.HasPrefix(b, []byte("Salted__")) {
					t.Errorf("%s is not encrypted (starts %q)", path, b[:min(len(b), 8)])
				}
			})
		}
		if files < 100 {
			t.Fatalf("only %d files in the repositories", files)
		}
		inServer()
		if !found["pg_wal"] || !found["base"] {
			t.Fatalf("canary not found in the server's WAL and data files: %v", found)
		}
		conf, err := os.ReadFile(cfg.ConfigPath)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range cfg.Repos {
			if strings.Contains(string(conf), r.CipherPass) {
				t.Error("the config file holds a cipher passphrase")
			}
		}
		st, err := os.Stat(cfg.ConfigPath)
		if err != nil {
			t.Fatal(err)
		}
		pg, _ := user.Lookup("postgres")
		if st.Mode().Perm() != 0o640 || strconv.Itoa(int(st.Sys().(*syscall.Stat_t).Uid)) != pg.Uid {
			t.Errorf("config mode %v, uid %d", st.Mode().Perm(), st.Sys().(*syscall.Stat_t).Uid)
		}
	})

	t.Run("a good backup restores and answers the check, archiving nothing", func(t *testing.T) {
		before := archiveFiles(t, cfg)
		rep, err := pgbackup.VerifyRestore(ctx, cfg, c.Work, "SELECT v FROM canary")
		if err != nil {
			t.Fatal(err)
		}
		if len(rep.Repos) != 2 {
			t.Fatalf("report %+v", rep)
		}
		for _, rr := range rep.Repos {
			if !rr.Restored || rr.Value != canary || rr.Label != labels[1+rr.Repo] || rr.Type != "diff" || !strings.Contains(rr.Verify, "valid") {
				t.Errorf("repo%d: %+v", rr.Repo, rr)
			}
		}
		if rep.Value() != canary {
			t.Errorf("value %q", rep.Value())
		}
		if after := archiveFiles(t, cfg); !slices.Equal(before, after) {
			t.Errorf("the restore changed the archive:\nbefore %v\nafter  %v", before, after)
		}
		left, _ := filepath.Glob(filepath.Join(c.Work, "guardian-restore-*"))
		if len(left) > 0 {
			t.Errorf("scratch dirs left behind: %v", left)
		}
	})

	t.Run("an empty or missing repository is red", func(t *testing.T) {
		empty := filepath.Join(c.Work, "empty")
		if err := os.Mkdir(empty, 0o700); err != nil {
			t.Fatal(err)
		}
		for _, path := range []string{empty, filepath.Join(c.Work, "missing")} {
			bad := cfg
			bad.ConfigPath = filepath.Join(c.Work, "bad.conf")
			bad.Repos = []pgbackup.Repo{{Index: 1, Path: path, CipherPass: cfg.Repos[0].CipherPass}}
			_, err := pgbackup.VerifyRestore(ctx, bad, c.Work, "")
			if !errors.Is(err, job.ErrRed) {
				t.Errorf("%s: want red, got %v", path, err)
			}
			t.Logf("%s: %v", filepath.Base(path), err)
		}
	})

	t.Run("a corrupted backup file and a failing check are red", func(t *testing.T) {
		pgbackuptest.DamageLargest(t, filepath.Join(cfg.Repos[0].Path, "backup", cfg.Stanza, labels[2], "pg_data"))
		// repo1 fails its verify; repo2 is still checked, restores, and
		// fails its check.
		rep, err := pgbackup.VerifyRestore(ctx, cfg, c.Work, "no_such_table")
		if !errors.Is(err, job.ErrRed) {
			t.Fatalf("want red, got %v", err)
		}
		t.Logf("%v", err)
		for _, want := range []string{"repo1: ", "pgbackrest verify", "checksum invalid", "repo2: ", `"no_such_table"`} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error does not mention %s: %v", want, err)
			}
		}
		if len(rep.Repos) != 2 || rep.Repos[0].Label != "" || rep.Repos[1].Label != labels[3] || rep.Repos[1].Restored {
			t.Errorf("report %+v", rep)
		}
	})
}

func TestEnvironmentProblemsAreNotRed(t *testing.T) {
	dir := t.TempDir()
	good := pgbackup.Config{
		Stanza: "guardian", PGData: "/var/lib/postgresql/15/main", PGPort: 5432, PGSocket: "/var/run/postgresql",
		PGBinDir: "/usr/lib/postgresql/15/bin", ConfigPath: filepath.Join(dir, "pgbackrest.conf"),
		LogPath: filepath.Join(dir, "log"), LockPath: filepath.Join(dir, "lock"), SpoolPath: filepath.Join(dir, "spool"),
		Compress: "zst", ProcessMax: 2, User: "postgres", Binary: "/usr/bin/pgbackrest", CheckDatabase: "guardian",
		Repos: []pgbackup.Repo{{Index: 1, Path: filepath.Join(dir, "repo1"), CipherPass: pgbackuptest.Secret()}},
	}
	notFile := filepath.Join(dir, "file")
	if err := os.WriteFile(notFile, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name   string
		change func(*pgbackup.Config)
	}{
		{"a missing pgbackrest binary", func(c *pgbackup.Config) { c.Binary = filepath.Join(dir, "no-pgbackrest") }},
		{"an unwritable config path", func(c *pgbackup.Config) { c.ConfigPath = filepath.Join(notFile, "pgbackrest.conf") }},
		{"a missing pg_ctl", func(c *pgbackup.Config) { c.PGBinDir = dir }},
		{"an invalid setting", func(c *pgbackup.Config) { c.Compress = "gzip" }},
	}
	for _, tc := range cases {
		t.Run(tc.name+" is an error, not red", func(t *testing.T) {
			cfg := good
			tc.change(&cfg)
			_, err := pgbackup.VerifyRestore(context.Background(), cfg, dir, "")
			if err == nil || errors.Is(err, job.ErrRed) {
				t.Fatalf("want a plain error, got %v", err)
			}
			if strings.Contains(err.Error(), cfg.Repos[0].CipherPass) {
				t.Fatal("error leaks the cipher passphrase")
			}
		})
	}
}

// walk calls fn with every regular file under root and its content.
func walk(t *testing.T, root string, fn func(path string, b []byte)) {
	t.Helper()
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil // a server file removed meanwhile
			}
			return err
		}
		fn(path, b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// archiveFiles lists the WAL archive of every repository.
func archiveFiles(t *testing.T, cfg pgbackup.Config) []string {
	t.Helper()
	var files []string
	for _, r := range cfg.Repos {
		root := filepath.Join(r.Path, "archive", cfg.Stanza)
		_ = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err == nil && !d.IsDir() {
				files = append(files, path)
			}
			return nil
		})
	}
	slices.Sort(files)
	if len(files) == 0 {
		t.Fatal("no archived WAL")
	}
	return files
}
