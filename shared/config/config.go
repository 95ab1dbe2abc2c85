// Package config loads Guardian's settings from environment variables.
//
// Every process (Caddy and each function) reads only the variables it needs
// through one Loader, which collects every problem at once and names the
// variable in its message but never the value, so a misconfigured start-up
// says exactly what to fix without leaking a secret into a log.
package config

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Names of the variables Guardian reads.
const (
	KeyPepper          = "GUARDIAN_KEY_PEPPER"
	SessionSecret      = "GUARDIAN_SESSION_SECRET"
	PGDSN              = "GUARDIAN_PG_DSN"
	PGAppDSN           = "GUARDIAN_PG_APP_DSN"
	RedisAddr          = "GUARDIAN_REDIS_ADDR"
	RedisPassword      = "GUARDIAN_REDIS_PASSWORD"
	RedisCluster       = "GUARDIAN_REDIS_CLUSTER"
	RedisSocket        = "GUARDIAN_REDIS_SOCKET"
	ClickHouseAddr     = "GUARDIAN_CLICKHOUSE_ADDR"
	ClickHouseUser     = "GUARDIAN_CLICKHOUSE_USER"
	ClickHousePassword = "GUARDIAN_CLICKHOUSE_PASSWORD"
	ClickHouseDatabase = "GUARDIAN_CLICKHOUSE_DATABASE"
	CookieDomain       = "GUARDIAN_COOKIE_DOMAIN"
)

// MinSecretLen is the shortest accepted pepper or signing secret, in bytes:
// 32 bytes matches the output size of HMAC-SHA256.
const MinSecretLen = 32

// Loader reads variables through a lookup function and records every
// missing or malformed one; call Err once after reading them all.
type Loader struct {
	lookup func(string) (string, bool)
	errs   []error
}

// New returns a Loader over lookup, usually os.LookupEnv.
func New(lookup func(string) (string, bool)) *Loader {
	return &Loader{lookup: lookup}
}

// Lookup returns the lookup function l reads through, for a part of a
// program that collects its own problems in a Loader of its own.
func (l *Loader) Lookup() func(string) (string, bool) { return l.lookup }

// String returns the value of a required variable.
func (l *Loader) String(name string) string {
	v, ok := l.lookup(name)
	v = strings.TrimSpace(v)
	if !ok || v == "" {
		l.errs = append(l.errs, fmt.Errorf("%s is required but not set", name))
		return ""
	}
	return v
}

// Optional returns the value of a variable or def when it is unset or empty.
func (l *Loader) Optional(name, def string) string {
	v, ok := l.lookup(name)
	if !ok || strings.TrimSpace(v) == "" {
		return def
	}
	return strings.TrimSpace(v)
}

// OptionalSecret returns an optional password exactly as set, or "" when
// unset: unlike Optional it trims nothing, since spaces at either end may
// be part of a password, and a trimmed one fails its log-in with nothing
// to say why.
func (l *Loader) OptionalSecret(name string) string {
	v, _ := l.lookup(name)
	return v
}

// Secret returns a required secret of at least minLen bytes. Its value never
// appears in an error.
func (l *Loader) Secret(name string, minLen int) []byte {
	v, ok := l.lookup(name)
	if !ok || v == "" {
		l.errs = append(l.errs, fmt.Errorf("%s is required but not set (at least %d bytes)", name, minLen))
		return nil
	}
	if len(v) < minLen {
		l.errs = append(l.errs, fmt.Errorf("%s is too short: %d bytes, at least %d required", name, len(v), minLen))
		return nil
	}
	return []byte(v)
}

// Duration returns an optional duration variable, or def when unset.
func (l *Loader) Duration(name string, def time.Duration) time.Duration {
	v, ok := l.lookup(name)
	if !ok || strings.TrimSpace(v) == "" {
		return def
	}
	d, err := time.ParseDuration(strings.TrimSpace(v))
	if err != nil || d < 0 {
		l.errs = append(l.errs, fmt.Errorf("%s must be a non-negative duration such as 5s", name))
		return def
	}
	return d
}

// PositiveDuration is Duration for a setting that 0 would break (a
// timeout every attempt would meet at once): 0 is refused too.
func (l *Loader) PositiveDuration(name string, def time.Duration) time.Duration {
	if v, ok := l.lookup(name); !ok || strings.TrimSpace(v) == "" {
		return def
	}
	n := len(l.errs)
	d := l.Duration(name, def)
	if len(l.errs) == n && d == 0 {
		l.errs = append(l.errs, fmt.Errorf("%s must be a positive duration such as 5s", name))
		return def
	}
	return d
}

// Int returns an optional integer variable, or def when unset.
func (l *Loader) Int(name string, def int) int {
	v, ok := l.lookup(name)
	if !ok || strings.TrimSpace(v) == "" {
		return def
	}
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil {
		l.errs = append(l.errs, fmt.Errorf("%s must be an integer", name))
		return def
	}
	return n
}

// Err returns every problem found so far, joined, or nil.
func (l *Loader) Err() error {
	if len(l.errs) == 0 {
		return nil
	}
	return fmt.Errorf("configuration: %w", errors.Join(l.errs...))
}

// Secrets holds the edge's signing material.
type Secrets struct {
	// KeyPepper keys the HMAC under which API keys are stored.
	KeyPepper []byte
	// SessionSecret signs session JWTs; changing it ends every session.
	SessionSecret []byte
}

// LoadSecrets reads and validates the key pepper and the session secret.
func LoadSecrets(lookup func(string) (string, bool)) (Secrets, error) {
	l := New(lookup)
	s := Secrets{
		KeyPepper:     l.Secret(KeyPepper, MinSecretLen),
		SessionSecret: l.Secret(SessionSecret, MinSecretLen),
	}
	return s, l.Err()
}

// CheckAddrs returns an error unless addrs is one or more host:port
// addresses. It never quotes a value: a URL given by mistake may carry a
// password.
func CheckAddrs(addrs []string) error {
	if len(addrs) == 0 {
		return errors.New("names no address (host:port, comma-separated)")
	}
	for _, a := range addrs {
		host, port, err := net.SplitHostPort(a)
		if err != nil || host == "" || strings.ContainsAny(a, "/@") {
			return errors.New("must be host:port addresses (not URLs), comma-separated")
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return errors.New("must be host:port addresses with a port from 1 to 65535")
		}
	}
	return nil
}

// ClickHouse holds the settings of a ClickHouse connection.
type ClickHouse struct {
	Addr, User, Password, Database string
}

// LoadClickHouse reads the ClickHouse connection settings; the user
// defaults to "default" and the database to "guardian".
func (l *Loader) LoadClickHouse() ClickHouse {
	addr := l.String(ClickHouseAddr)
	if addr != "" {
		if err := CheckAddrs([]string{addr}); err != nil {
			l.errs = append(l.errs, fmt.Errorf("%s %w", ClickHouseAddr, err))
		}
	}
	return ClickHouse{
		Addr:     addr,
		User:     l.Optional(ClickHouseUser, "default"),
		Password: l.OptionalSecret(ClickHousePassword),
		Database: l.Optional(ClickHouseDatabase, "guardian"),
	}
}

// Redis is how to reach Redis: one server, or seed nodes of a cluster.
type Redis struct {
	Addrs    []string
	Password string
	// Cluster is set by several addresses, or by GUARDIAN_REDIS_CLUSTER=1
	// (a cluster reached through one seed address).
	Cluster bool
	// Socket is the same single server's unix socket
	// (GUARDIAN_REDIS_SOCKET), for a process on its host that may open one:
	// the edge does, functions cannot (fnserve forbids unix sockets).
	Socket string
}

// LoadRedis reads GUARDIAN_REDIS_ADDR (required; comma-separated
// addresses), GUARDIAN_REDIS_PASSWORD, GUARDIAN_REDIS_CLUSTER and
// GUARDIAN_REDIS_SOCKET, so that every process reaching Redis reads the
// same settings the same way.
func (l *Loader) LoadRedis() Redis {
	var r Redis
	if list := l.String(RedisAddr); list != "" {
		for _, addr := range strings.Split(list, ",") {
			if addr = strings.TrimSpace(addr); addr != "" {
				r.Addrs = append(r.Addrs, addr)
			}
		}
		if err := CheckAddrs(r.Addrs); err != nil {
			l.errs = append(l.errs, fmt.Errorf("%s %w", RedisAddr, err))
		}
	}
	r.Password = l.OptionalSecret(RedisPassword)
	// A cluster reached through one seed must say so; a value other than
	// 0 or 1 (true, yes) is refused, not read as "no": a cluster taken for
	// one server answers MOVED, and the limiter would fail open.
	switch v := l.Optional(RedisCluster, ""); v {
	case "", "0":
		r.Cluster = len(r.Addrs) > 1
	case "1":
		r.Cluster = true
	default:
		l.errs = append(l.errs, fmt.Errorf("%s must be 0 or 1", RedisCluster))
	}
	r.Socket = l.Optional(RedisSocket, "")
	switch {
	case r.Socket == "":
	case !strings.HasPrefix(r.Socket, "/"):
		l.errs = append(l.errs, fmt.Errorf("%s must be an absolute path (a unix socket)", RedisSocket))
		r.Socket = ""
	case r.Cluster:
		// A cluster client learns its nodes' TCP addresses from the
		// cluster itself: one socket cannot stand for them.
		l.errs = append(l.errs, fmt.Errorf("%s is for one Redis server, not a cluster", RedisSocket))
		r.Socket = ""
	}
	return r
}

// CheckHTTPURL refuses a server's base URL (ClickHouse's HTTP interface)
// that is not plain http(s), or that holds credentials: they belong in
// variables of their own, and a URL carrying them would put them in every
// error that quotes it (url.Parse's and net/http's do). The error never
// quotes s.
func CheckHTTPURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return errors.New("must be an http:// or https:// URL")
	}
	if u.User != nil {
		return errors.New("must not hold credentials (use GUARDIAN_CLICKHOUSE_USER and _PASSWORD)")
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return errors.New("must not have a query or fragment")
	}
	return nil
}
