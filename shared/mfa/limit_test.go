package mfa

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
)

// Attempts from one client are counted as every per-client counter counts
// them (shared/clientip): an IPv6 address by its /64.
func TestAttemptsOfAnAddressAreCountedAgainstItsBucket(t *testing.T) {
	for _, tc := range []struct {
		name, a, b string
		shared     bool
	}{
		{"two addresses of one IPv6 /64 share a subject", "2001:db8:1:2::a", "2001:db8:1:2:ffff:ffff:ffff:ffff", true},
		{"an IPv6 address written two ways is one subject", "2001:DB8:1:2:0:0:0:A", "2001:db8:1:2::a", true},
		{"a zone does not make another subject", "fe80::1%eth0", "fe80::2", true},
		{"neighbouring IPv6 /64s are separate", "2001:db8:1:2::a", "2001:db8:1:3::a", false},
		{"IPv4 addresses stay on their own", "192.0.2.1", "192.0.2.2", false},
		{"an IPv4-mapped address is its IPv4 address", "::ffff:192.0.2.1", "192.0.2.1", true},
	} {
		a, b := subjectOf(scopeIP, tc.a), subjectOf(scopeIP, tc.b)
		if (a == b) != tc.shared {
			t.Errorf("%s: %q and %q", tc.name, a, b)
		}
	}
	if got := subjectOf(scopeIP, "192.0.2.1"); got != "192.0.2.1" {
		t.Errorf("IPv4 subject %q", got)
	}
	// Users are not addresses; whatever the subject, it fits the column.
	if got := subjectOf(scopeUser, "2001:db8::1"); got != "2001:db8::1" {
		t.Errorf("a user subject was bucketed: %q", got)
	}
	if got := subjectOf(scopeIP, strings.Repeat("x", 100)); len(got) != 64 {
		t.Errorf("a long subject is %d bytes", len(got))
	}
}

// One IPv6 subscriber guessing second factors from many addresses of its
// /64, at sign-in and at enrolment, gets one address's attempts.
func TestAnIPv6SubnetGetsOneAddressesAttempts(t *testing.T) {
	t.Parallel()
	f := newFixture(t)
	ctx := context.Background()
	f.enrolTOTP(t)
	s, err := New(f.s.db, Config{Secret: []byte(strings.Repeat("m", 32)), Now: f.clock, Limits: Limits{PerUser: 100, PerIP: 2}})
	if err != nil {
		t.Fatal(err)
	}
	guess := func(ip string) error {
		_, err := s.Complete(ctx, f.challenge(t), Proof{Code: "zzzzz-zzzzz"}, ip, func(pgx.Tx) error { return nil })
		return err
	}
	var locked *LockedError
	for _, ip := range []string{"2001:db8:7:7::1", "2001:db8:7:7:ffff::2"} {
		if err := guess(ip); reason(err) != "wrong_recovery_code" {
			t.Fatalf("guess from %s: %v", ip, err)
		}
	}
	if err := guess("2001:db8:7:7::3"); !errors.As(err, &locked) {
		t.Fatalf("a third address of the /64: %v, want *LockedError", err)
	}
	if _, err := s.ConfirmTOTP(ctx, f.c.UserID, "000000", "2001:db8:7:7::4", ""); !errors.As(err, &locked) {
		t.Fatalf("an enrolment from the /64: %v, want *LockedError", err)
	}
	if err := guess("2001:db8:7:8::1"); reason(err) != "wrong_recovery_code" {
		t.Fatalf("the next /64: %v", err)
	}
	for _, ip := range []string{"198.51.100.1", "198.51.100.1", "198.51.100.2"} {
		if err := guess(ip); reason(err) != "wrong_recovery_code" {
			t.Fatalf("guess from %s: %v", ip, err)
		}
	}
}
