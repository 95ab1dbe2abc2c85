package config

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestLoadSecrets(t *testing.T) {
	long := strings.Repeat("p", 32)
	secret := "s3cr3t-value-that-must-not-leak" // 31 bytes: too short
	cases := []struct {
		name    string
		env     map[string]string
		wantErr []string
	}{
		{"both present and long enough are accepted", map[string]string{KeyPepper: long, SessionSecret: long}, nil},
		{"missing pepper is named", map[string]string{SessionSecret: long}, []string{KeyPepper + " is required"}},
		{"missing session secret is named", map[string]string{KeyPepper: long}, []string{SessionSecret + " is required"}},
		{"empty pepper counts as missing", map[string]string{KeyPepper: "", SessionSecret: long}, []string{KeyPepper + " is required"}},
		{"short secret is named with its length but not its value", map[string]string{KeyPepper: long, SessionSecret: secret}, []string{SessionSecret + " is too short: 31 bytes"}},
		{"both missing are both reported", map[string]string{}, []string{KeyPepper, SessionSecret}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			s, err := LoadSecrets(env(tc.env))
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				if string(s.KeyPepper) != long || string(s.SessionSecret) != long {
					t.Fatal("secrets not returned")
				}
				return
			}
			if err == nil {
				t.Fatal("expected an error")
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			for _, v := range tc.env {
				if v != "" && strings.Contains(err.Error(), v) {
					t.Errorf("error leaks a secret value: %q", err)
				}
			}
		})
	}
}

func TestLoaderTypedValues(t *testing.T) {
	l := New(env(map[string]string{"D": "250ms", "BADD": "soon", "N": "7", "BADN": "x", "S": " v "}))
	if d := l.Duration("D", time.Second); d != 250*time.Millisecond {
		t.Errorf("duration = %v", d)
	}
	if d := l.Duration("UNSET", time.Second); d != time.Second {
		t.Errorf("default duration = %v", d)
	}
	if n := l.Int("N", 1); n != 7 {
		t.Errorf("int = %d", n)
	}
	if s := l.String("S"); s != "v" {
		t.Errorf("string = %q", s)
	}
	if l.Err() != nil {
		t.Fatalf("unexpected error %v", l.Err())
	}
	l.Duration("BADD", 0)
	l.Int("BADN", 0)
	l.String("MISSING")
	err := l.Err()
	for _, name := range []string{"BADD", "BADN", "MISSING"} {
		if err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("error %v does not name %s", err, name)
		}
	}
}

func TestLoadRedis(t *testing.T) {
	cases := []struct {
		name    string
		env     map[string]string
		addrs   []string
		cluster bool
		socket  string
		err     string
	}{
		{"one server", map[string]string{RedisAddr: "127.0.0.1:6379"}, []string{"127.0.0.1:6379"}, false, "", ""},
		{"seeds of a cluster", map[string]string{RedisAddr: "127.0.0.1:1, 127.0.0.1:2,"}, []string{"127.0.0.1:1", "127.0.0.1:2"}, true, "", ""},
		{"one seed of a cluster", map[string]string{RedisAddr: "127.0.0.1:1", RedisCluster: "1"}, []string{"127.0.0.1:1"}, true, "", ""},
		{"server and its socket", map[string]string{RedisAddr: "127.0.0.1:6379", RedisSocket: " /run/redis/redis-server.sock "}, []string{"127.0.0.1:6379"}, false, "/run/redis/redis-server.sock", ""},
		{"relative socket", map[string]string{RedisAddr: "127.0.0.1:6379", RedisSocket: "redis.sock"}, []string{"127.0.0.1:6379"}, false, "", "GUARDIAN_REDIS_SOCKET must be an absolute path"},
		{"socket of a cluster", map[string]string{RedisAddr: "127.0.0.1:1,127.0.0.1:2", RedisSocket: "/run/redis.sock"}, []string{"127.0.0.1:1", "127.0.0.1:2"}, true, "", "GUARDIAN_REDIS_SOCKET is for one Redis server"},
		{"no address", map[string]string{RedisSocket: "/run/redis.sock"}, nil, false, "/run/redis.sock", "GUARDIAN_REDIS_ADDR is required"},
		{"only commas", map[string]string{RedisAddr: " , "}, nil, false, "", "GUARDIAN_REDIS_ADDR names no address"},
		{"a URL with a password", map[string]string{RedisAddr: "redis://:hunter2@h:6379"}, []string{"redis://:hunter2@h:6379"}, false, "", "must be host:port addresses (not URLs)"},
		{"no port", map[string]string{RedisAddr: "redis-host"}, []string{"redis-host"}, false, "", "must be host:port"},
		{"port out of range", map[string]string{RedisAddr: "h:70000"}, []string{"h:70000"}, false, "", "port from 1 to 65535"},
		{"IPv6 address", map[string]string{RedisAddr: "[::1]:6379"}, []string{"[::1]:6379"}, false, "", ""},
		{"cluster flag of another spelling", map[string]string{RedisAddr: "127.0.0.1:1", RedisCluster: "true"}, []string{"127.0.0.1:1"}, false, "", "GUARDIAN_REDIS_CLUSTER must be 0 or 1"},
		{"cluster flag off", map[string]string{RedisAddr: "127.0.0.1:1", RedisCluster: "0"}, []string{"127.0.0.1:1"}, false, "", ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			l := New(env(tc.env))
			r := l.LoadRedis()
			if !slices.Equal(r.Addrs, tc.addrs) || r.Cluster != tc.cluster || r.Socket != tc.socket {
				t.Errorf("got %+v", r)
			}
			if err := l.Err(); tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Errorf("err = %v, want %q", err, tc.err)
			} else if err != nil && strings.Contains(err.Error(), "hunter2") {
				t.Errorf("the error quotes a password: %v", err)
			}
		})
	}
}

func TestLoadClickHouseChecksTheAddress(t *testing.T) {
	for addr, want := range map[string]string{
		"127.0.0.1:9000":                "",
		"clickhouse://u:hunter2@h:9000": "must be host:port addresses (not URLs)",
		"h":                             "must be host:port",
		"h:0":                           "port from 1 to 65535",
	} {
		l := New(env(map[string]string{ClickHouseAddr: addr}))
		l.LoadClickHouse()
		err := l.Err()
		if want == "" && err != nil || want != "" && (err == nil || !strings.Contains(err.Error(), want)) {
			t.Errorf("%q: err = %v, want %q", addr, err, want)
		}
		if err != nil && strings.Contains(err.Error(), "hunter2") {
			t.Errorf("the error quotes a password: %v", err)
		}
	}
}

func TestPositiveDuration(t *testing.T) {
	for v, want := range map[string]string{"": "", "5s": "", "0": "must be a positive duration", "0s": "must be a positive duration", "-1s": "non-negative", "soon": "non-negative"} {
		l := New(env(map[string]string{"D": v}))
		d := l.PositiveDuration("D", time.Minute)
		err := l.Err()
		if want == "" && (err != nil || d <= 0) || want != "" && (err == nil || !strings.Contains(err.Error(), want) || d != time.Minute) {
			t.Errorf("%q: %s, %v; want error %q", v, d, err, want)
		}
	}
	// Unset, the default stands, whatever it is.
	l := New(env(nil))
	if d := l.PositiveDuration("D", 0); d != 0 || l.Err() != nil {
		t.Errorf("unset with a default of 0: %s, %v", d, l.Err())
	}
}

func TestPasswordsAreReadAsSet(t *testing.T) {
	l := New(env(map[string]string{
		RedisAddr: "127.0.0.1:6379", RedisPassword: " pass word\t",
		ClickHouseAddr: "127.0.0.1:9000", ClickHousePassword: "  ",
	}))
	if r := l.LoadRedis(); r.Password != " pass word\t" {
		t.Errorf("Redis password %q, want it as set", r.Password)
	}
	if c := l.LoadClickHouse(); c.Password != "  " {
		t.Errorf("ClickHouse password %q, want it as set", c.Password)
	}
	if err := l.Err(); err != nil {
		t.Fatal(err)
	}
	if got := New(env(nil)).OptionalSecret(RedisPassword); got != "" {
		t.Errorf("unset password %q, want empty", got)
	}
}
