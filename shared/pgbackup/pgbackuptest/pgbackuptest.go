// Package pgbackuptest gives tests a private PostgreSQL that really
// archives its WAL into encrypted pgBackRest repositories.
package pgbackuptest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/glassmkr/guardian/shared/config"
	"github.com/glassmkr/guardian/shared/pgbackup"
	"github.com/glassmkr/guardian/shared/testenv"
)

// Cluster is a private PostgreSQL with archive_mode on and its
// archive_command set to pgbackup.ArchiveCommand, after pgbackup.Setup.
type Cluster struct {
	// Servers is the private server's servers.env.
	Servers map[string]string
	// Dir is the servers' directory (for testenv.Stop and Start).
	Dir string
	// Work holds the repositories (repo1, repo2), the config, the log and
	// lock dirs; it belongs to the postgres user and goes away with t.
	Work string
	// DataDir is the cluster's data directory, symlinks resolved.
	DataDir string
	// Settings are the GUARDIAN_PGBACKREST_* variables that describe it,
	// the cipher passphrases included.
	Settings map[string]string
	// Config is pgbackup.LoadConfig of Settings.
	Config pgbackup.Config
}

// Start starts the cluster with repos (1 or 2) repositories. The cipher
// passphrases are put in the test process's environment (t.Setenv) before
// the server starts, so the server and its archive_command inherit them
// the way a service's environment file would give them: t must not be
// parallel.
func Start(t *testing.T, repos int) *Cluster {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("pgbackuptest needs root (PostgreSQL and pgBackRest run as the postgres user)")
	}
	c := &Cluster{Settings: map[string]string{}}
	work, err := os.MkdirTemp("/var/tmp", "guardian-pgbackrest-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(work) })
	c.Work = work
	pg, err := user.Lookup("postgres")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(pg.Uid)
	gid, _ := strconv.Atoi(pg.Gid)
	if err := os.Chown(work, uid, gid); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= repos; i++ {
		pass := Secret()
		t.Setenv(fmt.Sprintf("PGBACKREST_REPO%d_CIPHER_PASS", i), pass)
		c.Settings[fmt.Sprintf("GUARDIAN_PGBACKREST_REPO%d_PATH", i)] = filepath.Join(work, fmt.Sprintf("repo%d", i))
		c.Settings[fmt.Sprintf("GUARDIAN_PGBACKREST_REPO%d_CIPHER_PASS", i)] = pass
	}

	c.Servers, c.Dir = testenv.Private(t, "postgres")
	data, err := filepath.EvalSymlinks(filepath.Join(c.Dir, "postgres", "data"))
	if err != nil {
		t.Fatal(err)
	}
	c.DataDir = data
	for k, v := range map[string]string{
		pgbackup.EnvStanza:   testenv.Name("s"),
		pgbackup.EnvPGData:   data,
		pgbackup.EnvPGPort:   c.Servers["PG_PORT"],
		pgbackup.EnvPGSocket: c.Servers["GUARDIAN_PG_SOCKET_DIR"],
		pgbackup.EnvConfig:   filepath.Join(work, "pgbackrest.conf"),
		pgbackup.EnvLogPath:  filepath.Join(work, "log"),
		pgbackup.EnvLockPath: filepath.Join(work, "lock"),
	} {
		c.Settings[k] = v
	}
	l := config.New(c.Lookup(nil))
	c.Config = pgbackup.LoadConfig(l)
	if err := l.Err(); err != nil {
		t.Fatal(err)
	}
	if err := pgbackup.WriteConfig(c.Config); err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c.Superuser(t, "postgres",
		"ALTER SYSTEM SET archive_mode = on",
		"ALTER SYSTEM SET archive_command = '"+strings.ReplaceAll(pgbackup.ArchiveCommand(c.Config), "'", "''")+"'")
	if err := testenv.Stop(c.Dir, "postgres"); err != nil {
		t.Fatal(err)
	}
	if _, err := testenv.Start(c.Dir, "postgres"); err != nil {
		t.Fatal(err)
	}
	if _, err := pgbackup.Setup(ctx, c.Config); err != nil {
		t.Fatal(err)
	}
	return c
}

// Lookup returns an environment lookup over Settings plus extra.
func (c *Cluster) Lookup(extra map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		if v, ok := extra[k]; ok {
			return v, true
		}
		v, ok := c.Settings[k]
		return v, ok
	}
}

// Superuser runs statements as the postgres superuser in database db,
// over the server's unix socket.
func (c *Cluster) Superuser(t testing.TB, db string, stmts ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgx.Connect(ctx, fmt.Sprintf("host=%s port=%s user=postgres dbname=%s sslmode=disable",
		c.Servers["GUARDIAN_PG_SOCKET_DIR"], c.Servers["PG_PORT"], db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	for _, s := range stmts {
		if _, err := conn.Exec(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
}

// Secret returns a fresh random passphrase of 48 hex characters.
func Secret() string {
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b[:])
}

// DamageLargest overwrites 16 bytes in the middle of the largest file
// under dir, as a bad disk or a tampering would, and returns its path.
func DamageLargest(t testing.TB, dir string) string {
	t.Helper()
	var victim string
	var size int64
	_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if st, err := d.Info(); err == nil && st.Size() > size {
				victim, size = path, st.Size()
			}
		}
		return nil
	})
	if victim == "" {
		t.Fatalf("pgbackuptest: no file in %s", dir)
	}
	f, err := os.OpenFile(victim, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(bytes.Repeat([]byte{0x5a}, 16), size/2); err != nil {
		t.Fatal(err)
	}
	return victim
}
