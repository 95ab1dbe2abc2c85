package chbackup

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"filippo.io/age"

	"github.com/glassmkr/guardian/shared/config"
)

func TestParseTarget(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		in   string
		want Target
		err  string
	}{
		{in: "backup@vault.example:2222/srv/guardian", want: Target{"backup", "vault.example", 2222, "/srv/guardian"}},
		{in: "backup@vault.example/srv/guardian/", want: Target{"backup", "vault.example", 22, "/srv/guardian"}},
		{in: "backup@[2001:db8::1]:22/b", want: Target{"backup", "2001:db8::1", 22, "/b"}},
		{in: "vault.example:22/srv", err: "user@host"},
		{in: "backup@vault.example:22", err: "path is missing"},
		{in: "backup@vault.example:99999/srv", err: "port"},
		{in: "backup@vault.example:22/", err: "root"},
	} {
		got, err := ParseTarget(c.in)
		if c.err != "" {
			if err == nil || !strings.Contains(err.Error(), c.err) {
				t.Errorf("%s: %v, want an error with %q", c.in, err, c.err)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%s: %+v %v", c.in, got, err)
		}
	}
}

func TestLoadConfigNamesVariablesNeverValues(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	key := filepath.Join(dir, "key")
	os.WriteFile(key, []byte("x"), 0o600)
	id, _ := age.GenerateX25519Identity()
	env := map[string]string{
		config.ClickHouseAddr:     "127.0.0.1:9000",
		config.ClickHousePassword: "s3cret-clickhouse-password",
		EnvClickHouseHTTPURL:      "http://127.0.0.1:8123",
		EnvAgeRecipients:          id.Recipient().String() + ", " + id.String(),
		EnvTargets:                "backup@a.example:22/srv/b,backup@b.example:22/srv/b",
		EnvSSHKey:                 key,
		EnvKnownHosts:             filepath.Join(dir, "missing"),
		EnvKeepDays:               "0",
	}
	_, err := LoadConfig(config.New(func(k string) (string, bool) { v, ok := env[k]; return v, ok }))
	if err == nil {
		t.Fatal("accepted")
	}
	msg := err.Error()
	for _, want := range []string{EnvAgeRecipients + ": entry 2", EnvKnownHosts, EnvKeepDays} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not mention %q", msg, want)
		}
	}
	for _, secret := range []string{id.String(), "s3cret"} {
		if strings.Contains(msg, secret) {
			t.Errorf("error prints a secret: %q", msg)
		}
	}

	env[EnvAgeRecipients] = id.Recipient().String()
	env[EnvKnownHosts] = key
	// Backups are kept 30 days at most (the posture's promise).
	for _, days := range []string{"1", "31", "90"} {
		env[EnvKeepDays] = days
		if _, err := LoadConfig(config.New(func(k string) (string, bool) { v, ok := env[k]; return v, ok })); err == nil || !strings.Contains(err.Error(), EnvKeepDays) {
			t.Errorf("%s=%s: %v", EnvKeepDays, days, err)
		}
	}
	env[EnvKeepDays] = "30"
	if _, err := LoadConfig(config.New(func(k string) (string, bool) { v, ok := env[k]; return v, ok })); err != nil {
		t.Errorf("%s=30: %v", EnvKeepDays, err)
	}
	delete(env, EnvKeepDays)
	cfg, err := LoadConfig(config.New(func(k string) (string, bool) { v, ok := env[k]; return v, ok }))
	if err != nil {
		t.Fatal(err)
	}
	for _, format := range []string{"%v", "%+v", "%#v", "%s"} {
		if out := fmt.Sprintf(format, cfg); strings.Contains(out, "s3cret") {
			t.Errorf("%s prints the password: %s", format, out)
		}
	}
	if len(cfg.Targets) != 2 || cfg.Targets[0].Host != "a.example" || cfg.KeepDays != 30 || len(cfg.Recipients) != 1 || cfg.ClickHouse.Database != "guardian" {
		t.Errorf("%+v", cfg)
	}
}
