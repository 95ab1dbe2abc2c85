package pgbackup

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/glassmkr/guardian/shared/config"
	"github.com/glassmkr/guardian/shared/job"
)

const (
	pass1 = "first-cipher-passphrase-0123456789abcdef"
	pass2 = "second-cipher-passphrase-0123456789abcdef"
)

func lookup(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestLoadConfig(t *testing.T) {
	base := func() map[string]string {
		return map[string]string{EnvPGData: "/var/lib/postgresql/15/main", EnvRepo1Cipher: pass1}
	}
	cases := []struct {
		name    string
		change  func(map[string]string)
		wantErr []string
		check   func(*testing.T, Config)
	}{
		{"defaults fill everything but the data dir and the passphrase", nil, nil, func(t *testing.T, c Config) {
			if c.Stanza != "guardian" || c.PGPort != 5432 || c.ConfigPath != "/etc/guardian/pgbackrest/pgbackrest.conf" ||
				c.User != "postgres" || c.Compress != "zst" || c.ProcessMax != 2 || c.ArchiveAsync ||
				len(c.Repos) != 1 || c.Repos[0].Path != "/var/lib/pgbackrest" || c.Repos[0].CipherPass != pass1 {
				t.Errorf("%+v", c)
			}
			if err := c.Validate(); err != nil {
				t.Error(err)
			}
		}},
		{"a second repository needs its own passphrase",
			func(m map[string]string) { m[EnvRepo2Path] = "/mnt/offsite" }, []string{EnvRepo2Cipher + " is required"}, nil},
		{"a second passphrase without a path is named",
			func(m map[string]string) { m[EnvRepo2Cipher] = pass2 }, []string{EnvRepo2Path + " is required"}, nil},
		{"the first passphrase is required", func(m map[string]string) { delete(m, EnvRepo1Cipher) }, []string{EnvRepo1Cipher}, nil},
		{"a short passphrase is named without its value",
			func(m map[string]string) { m[EnvRepo1Cipher] = "short-secret-value" }, []string{EnvRepo1Cipher + " is too short"}, nil},
		{"the data dir is required", func(m map[string]string) { delete(m, EnvPGData) }, []string{EnvPGData}, nil},
		{"two repositories are loaded in order", func(m map[string]string) {
			m[EnvRepo2Path], m[EnvRepo2Cipher], m[EnvArchiveAsync] = "/mnt/offsite", pass2, "1"
		}, nil, func(t *testing.T, c Config) {
			if len(c.Repos) != 2 || c.Repos[1].Index != 2 || c.Repos[1].Path != "/mnt/offsite" || c.Repos[1].CipherPass != pass2 || !c.ArchiveAsync {
				t.Errorf("%+v", c.Repos)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := base()
			if tc.change != nil {
				tc.change(m)
			}
			l := config.New(lookup(m))
			cfg := LoadConfig(l)
			err := l.Err()
			if tc.wantErr == nil && err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.wantErr {
				if err == nil || !strings.Contains(err.Error(), w) {
					t.Errorf("error %v does not mention %q", err, w)
				}
			}
			for _, secret := range []string{pass1, pass2, "short-secret-value"} {
				if err != nil && strings.Contains(err.Error(), secret) {
					t.Error("error leaks a passphrase")
				}
			}
			if tc.check != nil {
				tc.check(t, cfg)
			}
		})
	}
}

func validConfig() Config {
	return Config{
		Stanza: "guardian", PGData: "/var/lib/postgresql/15/main", PGPort: 5432, PGSocket: "/var/run/postgresql",
		ConfigPath: "/etc/guardian/pgbackrest/pgbackrest.conf", LogPath: "/var/log/pgbackrest", LockPath: "/tmp/pgbackrest",
		SpoolPath: "/var/spool/pgbackrest", Compress: "lz4", ProcessMax: 2, User: "postgres",
		Binary: "/usr/bin/pgbackrest", CheckDatabase: "guardian",
		Repos: []Repo{{1, "/var/lib/pgbackrest", pass1}, {2, "/mnt/offsite/pgbackrest", pass2}},
	}
}

func TestValidateRejectsWhatCannotBeQuoted(t *testing.T) {
	cases := []struct {
		name   string
		change func(*Config)
		want   string
	}{
		{"a newline in a path could add settings to the file", func(c *Config) { c.LogPath = "/var/log\nrepo1-path=/tmp" }, EnvLogPath},
		{"a quote in the config path would break archive_command", func(c *Config) { c.ConfigPath = "/etc/it's.conf" }, EnvConfig},
		{"a relative repository path", func(c *Config) { c.Repos[1].Path = "offsite" }, "GUARDIAN_PGBACKREST_REPO2_PATH"},
		{"a stanza with a space", func(c *Config) { c.Stanza = "my stanza" }, EnvStanza},
		{"an unknown compression", func(c *Config) { c.Compress = "gz" }, EnvCompress},
		{"a short passphrase set in code", func(c *Config) { c.Repos[0].CipherPass = "x" }, "REPO1_CIPHER_PASS"},
	}
	if err := validConfig().Validate(); err != nil {
		t.Fatal(err)
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := validConfig()
			tc.change(&c)
			err := c.Validate()
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v does not name %s", err, tc.want)
			}
		})
	}
}

func TestRenderHasSettingsButNoSecret(t *testing.T) {
	c := validConfig()
	c.ArchiveAsync = true
	conf := string(render(c))
	for _, want := range []string{
		"[global]\n", "repo1-path=/var/lib/pgbackrest\n", "repo1-cipher-type=aes-256-cbc\n",
		"repo1-retention-full=4\n", "repo1-retention-diff=14\n", "repo1-retention-archive=4\n",
		"repo2-path=/mnt/offsite/pgbackrest\n", "repo2-cipher-type=aes-256-cbc\n", "repo2-retention-full=4\n",
		"compress-type=lz4\n", "start-fast=y\n", "process-max=2\n", "archive-async=y\n",
		"spool-path=/var/spool/pgbackrest\n", "[guardian]\npg1-path=/var/lib/postgresql/15/main\n", "pg1-port=5432\n",
		"pg1-socket-path=/var/run/postgresql\n",
	} {
		if !strings.Contains(conf, want) {
			t.Errorf("config lacks %q:\n%s", want, conf)
		}
	}
	if strings.Contains(conf, pass1) || strings.Contains(conf, pass2) || strings.Contains(conf, "cipher-pass") {
		t.Errorf("config holds a passphrase:\n%s", conf)
	}
	if got, want := ArchiveCommand(c), "/usr/bin/pgbackrest --config=/etc/guardian/pgbackrest/pgbackrest.conf --stanza=guardian archive-push %p"; got != want {
		t.Errorf("archive command %q, want %q", got, want)
	}
}

func TestParseVerify(t *testing.T) {
	cases := []struct {
		name string
		out  string
		ok   bool
	}{
		{"a clean repository is ok", "stanza: guardian\nstatus: ok\n  archiveId: 15-1, total WAL checked: 7, total valid WAL: 7\n    missing: 0, checksum invalid: 0, size invalid: 0, other: 0\n  backup: 20261128-232053F, status: valid, total files checked: 1263, total valid files: 1263\n    missing: 0, checksum invalid: 0, size invalid: 0, other: 0\n", true},
		{"an invalid checksum is red even with exit status 0", "stanza: guardian\nstatus: error\n  backup: 20261128-232049F, status: invalid, total files checked: 1263, total valid files: 1262\n    missing: 0, checksum invalid: 1, size invalid: 0, other: 0\n", false},
		{"a missing WAL segment is red", "stanza: guardian\nstatus: ok\n  archiveId: 15-1, total WAL checked: 7, total valid WAL: 6\n    missing: 1, checksum invalid: 0, size invalid: 0, other: 0\n", false},
		{"an unreadable repository is red", "stanza: guardian\nstatus: error\n  No usable backup.info file\n  No usable archive.info file\n", false},
		{"no output at all is red", "", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			sum, err := parseVerify(tc.out)
			if tc.ok && err != nil {
				t.Fatal(err)
			}
			if !tc.ok && !errors.Is(err, job.ErrRed) {
				t.Fatalf("want red, got %v (%s)", err, sum)
			}
			if tc.ok && sum != "1 backups and 7 WAL segments valid" {
				t.Errorf("summary %q", sum)
			}
		})
	}
}

func TestCheckQuery(t *testing.T) {
	cases := []struct{ in, want string }{
		{"", DefaultCheck},
		{"api_keys", `SELECT count(*) FROM "api_keys"`},
		{"public.api_keys", `SELECT count(*) FROM "public"."api_keys"`},
		{"select max(version) from schema_migrations", "select max(version) from schema_migrations"},
		{"WITH x AS (SELECT 1) SELECT * FROM x", "WITH x AS (SELECT 1) SELECT * FROM x"},
	}
	for _, tc := range cases {
		if got, err := checkQuery(tc.in); err != nil || got != tc.want {
			t.Errorf("checkQuery(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"DROP TABLE x", "api keys; x", "UPDATE t SET a = 1"} {
		if _, err := checkQuery(bad); err == nil {
			t.Errorf("checkQuery(%q) accepted", bad)
		}
	}
}

func TestParseInfo(t *testing.T) {
	out := `[{"archive":[],"backup":[
	 {"archive":{"start":"000000010000000000000002","stop":"000000010000000000000003"},"database":{"id":1,"repo-key":1},"error":false,
	  "info":{"delta":30489032,"repository":{"delta":3774416,"size":3774416},"size":30489032},"label":"20261128-232049F","prior":null,
	  "timestamp":{"start":1795908049,"stop":1795908052},"type":"full"},
	 {"archive":{"start":"000000010000000000000006","stop":"000000010000000000000007"},"database":{"id":1,"repo-key":1},"error":false,
	  "info":{"delta":8458,"repository":{"delta":464,"size":3774416},"size":30489032},"label":"20261128-232049F_20261128-232057D",
	  "prior":"20261128-232049F","timestamp":{"start":1795908057,"stop":1795908059},"type":"diff"}],
	 "cipher":"aes-256-cbc","name":"guardian","repo":[{"cipher":"aes-256-cbc","key":1,"status":{"code":0,"message":"ok"}},
	 {"cipher":"aes-256-cbc","key":2,"status":{"code":1,"message":"missing stanza path"}}],"status":{"code":4,"message":"different across repos"}}]`
	info, err := parseInfo(out, "guardian")
	if err != nil {
		t.Fatal(err)
	}
	latest, ok := info.Latest(1)
	if !ok || latest.Label != "20261128-232049F_20261128-232057D" || latest.Type != Diff || latest.Prior != "20261128-232049F" || latest.RepoDelta != 464 || latest.Size != 30489032 {
		t.Errorf("latest %+v", latest)
	}
	if !info.HasFull(1) || info.HasFull(2) {
		t.Error("HasFull")
	}
	if full, ok := info.NewestFull(1); !ok || full.Label != "20261128-232049F" || !full.Start.Equal(time.Unix(1795908049, 0)) {
		t.Errorf("NewestFull(1) = %+v, %t", full, ok)
	}
	if _, ok := info.NewestFull(2); ok {
		t.Error("repo2 has no full backup")
	}
	if _, ok := info.Latest(2); ok {
		t.Error("repo2 has no backup")
	}
	if !info.RepoStatus(1).OK() || info.RepoStatus(2).Code != 1 || info.Status.OK() {
		t.Errorf("statuses %+v", info)
	}
	if _, err := parseInfo(out, "other"); err == nil {
		t.Error("unknown stanza accepted")
	}
}
