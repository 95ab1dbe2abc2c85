package config

import (
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
