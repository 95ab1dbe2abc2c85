package clientip

import (
	"testing"
)

func TestBucket(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.7": "192.0.2.7", "::ffff:192.0.2.7": "192.0.2.7", "2001:db8::1": "2001:db8::/64",
		"2001:DB8:0:0:1::1": "2001:db8::/64", "fe80::1%eth0": "fe80::/64", "not-an-ip": "not-an-ip",
	} {
		if got := Bucket(in); got != want {
			t.Errorf("Bucket(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestNetwork(t *testing.T) {
	for in, want := range map[string]string{
		"192.0.2.7": "192.0.2.7", "::ffff:192.0.2.7": "192.0.2.7", "2001:db8:1:2::1": "2001:db8:1::/48",
		"2001:db8:1:ffff::9": "2001:db8:1::/48", "fe80::1%eth0": "fe80::/48", "not-an-ip": "not-an-ip",
	} {
		if got := Network(in); got != want {
			t.Errorf("Network(%q) = %q, want %q", in, got, want)
		}
	}
}
