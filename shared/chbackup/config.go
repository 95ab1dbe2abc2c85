package chbackup

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path"
	"strconv"
	"strings"
	"time"

	"filippo.io/age"

	"github.com/glassmkr/guardian/shared/config"
)

// Environment variables read by LoadConfig, beside shared/config's
// GUARDIAN_CLICKHOUSE_USER, _PASSWORD and _DATABASE (and _ADDR, which
// LoadClickHouse requires; the backup itself talks HTTP only).
const (
	EnvClickHouseHTTPURL = "GUARDIAN_CLICKHOUSE_HTTP_URL"
	EnvAgeRecipients     = "GUARDIAN_BACKUP_AGE_RECIPIENTS"
	EnvTargets           = "GUARDIAN_BACKUP_SFTP_TARGETS"
	EnvSSHKey            = "GUARDIAN_BACKUP_SSH_KEY"
	EnvKnownHosts        = "GUARDIAN_BACKUP_SSH_KNOWN_HOSTS"
	EnvKeepDays          = "GUARDIAN_BACKUP_KEEP_DAYS"
	EnvAgeIdentity       = "GUARDIAN_BACKUP_AGE_IDENTITY"
	EnvAcceptShrink      = "GUARDIAN_BACKUP_ACCEPT_SHRINK"
)

// DefaultKeepDays is how long sets are kept unless GUARDIAN_BACKUP_KEEP_DAYS
// says otherwise.
const DefaultKeepDays = 30

// MaxKeepDays bounds GUARDIAN_BACKUP_KEEP_DAYS: the security posture
// promises a deleted account's data is gone from backups within 30 days.
const MaxKeepDays = 30

// Config is what Backup and VerifyLatest need.
type Config struct {
	// ClickHouse holds the user, password and database to back up.
	ClickHouse config.ClickHouse
	// HTTPURL is ClickHouse's HTTP interface, e.g. http://127.0.0.1:8123.
	HTTPURL string
	// Recipients are the age public keys every blob is encrypted to.
	Recipients []age.Recipient
	// Targets are the SFTP destinations; the first is the primary. Every
	// one receives the full set.
	Targets []Target
	// SSHKeyFile is the client's private key (OpenSSH or PEM, unencrypted).
	SSHKeyFile string
	// KnownHostsFile pins the destinations' host keys.
	KnownHostsFile string
	// KeepDays: sets older than this, less 30 hours (pruneSlack), are
	// pruned (default 30).
	KeepDays int
	// AgeIdentityFile is the age identity file VerifyLatest decrypts with;
	// empty when this host only backs up.
	AgeIdentityFile string
	// AcceptShrink lets a set that holds far fewer rows than LATEST's
	// become LATEST (see Backup): for the run after a large account's
	// purge, say, whose drop the operator knows of.
	AcceptShrink bool
	// ScratchNote, when set, is told the name of each scratch database a
	// verification is about to create (dropped false; an error stops it
	// first), and again once that database is dropped (dropped true). A
	// job that may be killed outright keeps the names where its clean-up
	// step finds them (DropScratch): otherwise a plaintext copy stays
	// until the deadline in its name has passed and a later verification
	// drops it. One run may note several (one per target, a drop that
	// failed leaving its name noted).
	ScratchNote func(name string, dropped bool) error

	// Tests set these: afterBlob runs after each blob is uploaded, clock
	// replaces time.Now.
	afterBlob func(table, partitionID string)
	clock     func() time.Time
}

// String describes the configuration without the ClickHouse password, so
// that printing a Config (%v, %+v, %#v) never shows it.
func (c Config) String() string {
	targets := make([]string, len(c.Targets))
	for i, t := range c.Targets {
		targets[i] = t.String()
	}
	return fmt.Sprintf("chbackup.Config{ClickHouse: %s@%s/%s, Targets: [%s], Recipients: %d, KeepDays: %d}",
		c.ClickHouse.User, c.HTTPURL, c.ClickHouse.Database, strings.Join(targets, ", "), len(c.Recipients), c.KeepDays)
}

// GoString is String.
func (c Config) GoString() string { return c.String() }

// Target is one SFTP destination, written user@host:port/path.
type Target struct {
	User, Host string
	Port       int
	// Path is the absolute directory on the server that holds the sets.
	Path string
}

// String returns the target as written in the configuration.
func (t Target) String() string {
	return t.User + "@" + t.Addr() + t.Path
}

// Addr is host:port.
func (t Target) Addr() string { return net.JoinHostPort(t.Host, strconv.Itoa(t.Port)) }

// ParseTarget parses user@host:port/path; the port defaults to 22 and the
// path is absolute ("user@host:22/srv/backups" names /srv/backups).
func ParseTarget(s string) (Target, error) {
	user, rest, ok := strings.Cut(strings.TrimSpace(s), "@")
	if !ok || user == "" {
		return Target{}, errors.New("a target is written user@host:port/path")
	}
	slash := strings.IndexByte(rest, '/')
	if slash < 0 {
		return Target{}, errors.New("a target is written user@host:port/path (the path is missing)")
	}
	hostport, p := rest[:slash], rest[slash:]
	t := Target{User: user, Port: 22, Path: path.Clean(p)}
	if host, port, err := net.SplitHostPort(hostport); err == nil {
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 {
			return Target{}, errors.New("a target's port must be a number from 1 to 65535")
		}
		t.Host, t.Port = host, n
	} else {
		t.Host = strings.TrimSuffix(strings.TrimPrefix(hostport, "["), "]")
	}
	if t.Host == "" || strings.ContainsAny(t.Host, " /@") {
		return Target{}, errors.New("a target's host is missing or malformed")
	}
	if t.Path == "/" {
		return Target{}, errors.New("a target's path must not be the server's root directory")
	}
	return t, nil
}

// LoadConfig reads the backup settings. Every problem is reported at once;
// messages name the variable, never a value (targets and file paths are not
// secret and may be named).
func LoadConfig(env *config.Loader) (Config, error) {
	cfg := Config{
		ClickHouse:      env.LoadClickHouse(),
		HTTPURL:         env.String(EnvClickHouseHTTPURL),
		SSHKeyFile:      env.String(EnvSSHKey),
		KnownHostsFile:  env.String(EnvKnownHosts),
		KeepDays:        env.Int(EnvKeepDays, DefaultKeepDays),
		AgeIdentityFile: env.Optional(EnvAgeIdentity, ""),
	}
	switch v := env.Optional(EnvAcceptShrink, ""); v {
	case "", "0", "false":
	case "1", "true":
		cfg.AcceptShrink = true
	default:
		return cfg, fmt.Errorf("%s must be 1 or 0", EnvAcceptShrink)
	}
	recipients := env.String(EnvAgeRecipients)
	targets := env.String(EnvTargets)
	errs := []error{env.Err()}
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }

	if cfg.HTTPURL != "" {
		if err := config.CheckHTTPURL(cfg.HTTPURL); err != nil {
			bad("%s %v", EnvClickHouseHTTPURL, err)
		}
	}
	if !validIdent(cfg.ClickHouse.Database) {
		bad("%s must be a plain identifier (letters, digits, underscores)", config.ClickHouseDatabase)
	}
	for i, s := range splitList(recipients) {
		r, err := age.ParseX25519Recipient(s)
		if err != nil {
			bad("%s: entry %d is not an age X25519 recipient (age1...)", EnvAgeRecipients, i+1)
			continue
		}
		cfg.Recipients = append(cfg.Recipients, r)
	}
	seen := map[string]bool{}
	for i, s := range splitList(targets) {
		t, err := ParseTarget(s)
		if err != nil {
			bad("%s: entry %d: %v", EnvTargets, i+1, err)
			continue
		}
		if seen[t.String()] {
			bad("%s: entry %d repeats %s", EnvTargets, i+1, t)
			continue
		}
		seen[t.String()] = true
		cfg.Targets = append(cfg.Targets, t)
	}
	if cfg.KeepDays < 2 || cfg.KeepDays > MaxKeepDays {
		// Less 30 hours of pruning slack, one day would prune every set
		// but the newest at once. More than 30 would keep a deleted
		// account's data past the 30 days the posture promises.
		bad("%s must be from 2 to %d", EnvKeepDays, MaxKeepDays)
	}
	for _, f := range []struct{ name, path string }{
		{EnvSSHKey, cfg.SSHKeyFile}, {EnvKnownHosts, cfg.KnownHostsFile}, {EnvAgeIdentity, cfg.AgeIdentityFile},
	} {
		if f.path == "" {
			continue
		}
		if st, err := os.Stat(f.path); err != nil {
			bad("%s: cannot read %s", f.name, f.path)
		} else if st.IsDir() {
			bad("%s: %s is a directory", f.name, f.path)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return cfg, fmt.Errorf("backup configuration: %w", err)
	}
	return cfg, nil
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

// validIdent reports whether s is a ClickHouse identifier that needs no
// quoting.
func validIdent(s string) bool {
	if s == "" || len(s) > 200 {
		return false
	}
	for i, c := range s {
		switch {
		case c == '_', c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}
