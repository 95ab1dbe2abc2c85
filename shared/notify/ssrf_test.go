package notify

import (
	"context"
	"errors"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
)

// fakeDNS resolves names from a table and counts look-ups.
type fakeDNS struct {
	table   map[string][]string
	lookups atomic.Int64
}

func (f *fakeDNS) LookupNetIP(_ context.Context, _, host string) ([]netip.Addr, error) {
	f.lookups.Add(1)
	addrs, ok := f.table[host]
	if !ok {
		return nil, errors.New("no such host")
	}
	var out []netip.Addr
	for _, a := range addrs {
		out = append(out, netip.MustParseAddr(a))
	}
	return out, nil
}

func TestBlockedAddresses(t *testing.T) {
	cases := []struct {
		addr, reason string
	}{
		{"8.8.8.8", ""},
		{"1.1.1.1", ""},
		{"2606:4700:4700::1111", ""},
		{"127.0.0.1", "loopback"},
		{"127.255.255.254", "loopback"},
		{"::1", "loopback"},
		{"10.0.0.1", "private"},
		{"172.16.5.4", "private"},
		{"172.31.255.255", "private"},
		{"192.168.1.1", "private"},
		{"fc00::1", "private"},
		{"fd12:3456::1", "private"},
		{"169.254.1.1", "link-local"},
		{"fe80::1", "link-local"},
		{"100.64.0.1", "carrier-grade NAT"},
		{"100.127.255.255", "carrier-grade NAT"},
		{"0.0.0.0", "unspecified"},
		{"0.1.2.3", "unspecified"},
		{"::", "unspecified"},
		{"224.0.0.1", "multicast"},
		{"239.255.255.250", "multicast"},
		{"ff02::1", "multicast"},
		{"255.255.255.255", "reserved"},
		{"169.254.169.254", "cloud metadata"},
		{"fd00:ec2::254", "cloud metadata"},
		{"100.100.100.200", "cloud metadata"},
		// IPv6 spellings of forbidden IPv4 addresses.
		{"::ffff:127.0.0.1", "loopback"},
		{"::ffff:10.1.2.3", "private"},
		{"::ffff:169.254.169.254", "cloud metadata"},
		{"::ffff:100.64.1.1", "carrier-grade NAT"},
		{"::ffff:8.8.8.8", ""},
		{"64:ff9b::a9fe:a9fe", "cloud metadata"}, // NAT64 of 169.254.169.254
		{"64:ff9b::7f00:1", "loopback"},
		{"64:ff9b::808:808", ""}, // NAT64 of 8.8.8.8
		// Local-use NAT64 carries 169.254.169.254 here at /48, yet reads
		// as 8.8.8.8 at /96: refused whole.
		{"64:ff9b:1:a9fe:a9:fe00:808:808", "hides an IPv4 address"},
		{"64:ff9b:1::808:808", "hides an IPv4 address"},
		{"2002:c0a8:0101::1", "private"},                                  // 6to4 of 192.168.1.1
		{"::7f00:1", "hides an IPv4 address"},                             // IPv4-compatible 127.0.0.1
		{"::ffff:0:a9fe:a9fe", "hides an IPv4 address"},                   // IPv4-translated 169.254.169.254
		{"2001:0:4136:e378:8000:63bf:3fff:fdd2", "hides an IPv4 address"}, // Teredo
		{"fe80::1%eth0", "link-local"},
	}
	for _, tc := range cases {
		t.Run(tc.addr, func(t *testing.T) {
			if got := Blocked(netip.MustParseAddr(tc.addr)); got != tc.reason {
				t.Fatalf("Blocked(%s) = %q, want %q", tc.addr, got, tc.reason)
			}
		})
	}
}

func TestGuardResolvesAndChecksEveryAddress(t *testing.T) {
	dns := &fakeDNS{table: map[string][]string{
		"hooks.example.com":      {"93.184.215.14"},
		"dual.example.com":       {"93.184.215.14", "2606:2800:21f:cb07:6820:80da:af6b:8b2c"},
		"internal.example.com":   {"10.0.0.7"},
		"mixed.example.com":      {"93.184.215.14", "192.168.0.10"},
		"metadata.example.com":   {"169.254.169.254"},
		"mapped.example.com":     {"::ffff:127.0.0.1"},
		"cgnat.example.com":      {"100.64.3.3"},
		"hooks.internal":         {"10.9.9.9"},
		"evil.hooks.internal":    {"169.254.169.254"},
		"partner.corp":           {"172.20.1.1"},
		"localhost.example.com":  {"127.0.0.1"},
		"v6private.example.com":  {"fd00::5"},
		"linklocal6.example.com": {"fe80::1"},
		"ecs.hooks.internal":     {"169.254.170.2"},
		"siit.hooks.internal":    {"::ffff:0:a9fe:a9fe"},
		"teredo.hooks.internal":  {"2001:0:4136:e378:8000:63bf:3fff:fdd2"},
	}}
	cases := []struct {
		name, host string
		allow      []string
		reason     string // "" when the host is permitted
	}{
		{"a public name is permitted", "hooks.example.com", nil, ""},
		{"a public name with IPv4 and IPv6 addresses is permitted", "dual.example.com", nil, ""},
		{"a public address literal is permitted", "93.184.215.14", nil, ""},
		{"a name resolving to a private address is refused", "internal.example.com", nil, "private"},
		{"a name with one private address among public ones is refused whole", "mixed.example.com", nil, "private"},
		{"a name resolving to the metadata address is refused", "metadata.example.com", nil, "cloud metadata"},
		{"a name resolving to IPv4-mapped loopback is refused", "mapped.example.com", nil, "loopback"},
		{"a name resolving to CGNAT is refused", "cgnat.example.com", nil, "carrier-grade NAT"},
		{"a name resolving to loopback is refused", "localhost.example.com", nil, "loopback"},
		{"a name resolving to a unique-local IPv6 address is refused", "v6private.example.com", nil, "private"},
		{"a name resolving to link-local IPv6 is refused", "linklocal6.example.com", nil, "link-local"},
		{"a loopback literal is refused", "127.0.0.1", nil, "loopback"},
		{"a bracketed IPv6 loopback literal is refused", "[::1]", nil, "loopback"},
		{"an IPv4-mapped literal is refused", "::ffff:10.0.0.1", nil, "private"},
		{"the metadata literal is refused", "169.254.169.254", nil, "cloud metadata"},
		{"the IPv6 metadata literal is refused", "fd00:ec2::254", nil, "cloud metadata"},
		{"an allowed CIDR permits an internal name", "internal.example.com", []string{"10.0.0.0/24"}, ""},
		{"an allowed address permits itself", "10.0.0.7", []string{"10.0.0.7"}, ""},
		{"an allowed CIDR does not permit its neighbours", "10.0.1.7", []string{"10.0.0.0/24"}, "private"},
		{"an allowed host name permits its internal address", "hooks.internal", []string{"hooks.internal"}, ""},
		{"an allowed host name is matched whatever its case", "HOOKS.internal.", []string{"hooks.INTERNAL"}, ""},
		{"an allowed host name never permits the metadata address", "evil.hooks.internal", []string{"evil.hooks.internal"}, "cloud metadata"},
		{"an allowed host name never permits link-local", "ecs.hooks.internal", []string{"ecs.hooks.internal"}, "link-local"},
		{"an allowed host name never permits an IPv4-translated address", "siit.hooks.internal", []string{"siit.hooks.internal"}, "hides an IPv4 address"},
		{"an allowed host name never permits Teredo", "teredo.hooks.internal", []string{"teredo.hooks.internal"}, "hides an IPv4 address"},
		{"an allowed CIDR does permit link-local", "ecs.hooks.internal", []string{"169.254.170.0/24"}, ""},
		{"an explicit metadata CIDR does permit it", "169.254.169.254", []string{"169.254.169.254/32"}, ""},
		{"an allowed host does not permit other hosts", "partner.corp", []string{"hooks.internal"}, "private"},
		{"an allowed IPv4 CIDR covers the mapped form", "::ffff:10.0.0.7", []string{"10.0.0.0/8"}, ""},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			g, err := NewGuard(tc.allow, dns)
			if err != nil {
				t.Fatal(err)
			}
			addrs, err := g.Addrs(context.Background(), tc.host)
			if tc.reason == "" {
				if err != nil || len(addrs) == 0 {
					t.Fatalf("%s refused: %v", tc.host, err)
				}
				return
			}
			var be *BlockedError
			if !errors.As(err, &be) || be.Reason != tc.reason || !IsPermanent(err) {
				t.Fatalf("%s: got %v, %v; want refusal %q", tc.host, addrs, err, tc.reason)
			}
		})
	}
}

func TestGuardRefusesBadAllowEntriesAndNames(t *testing.T) {
	if _, err := NewGuard([]string{"10.0.0.0/8", "not a host!"}, nil); err == nil || !strings.Contains(err.Error(), "not a host!") {
		t.Fatalf("bad allow entry accepted: %v", err)
	}
	g, _ := NewGuard(nil, &fakeDNS{})
	for _, host := range []string{"", "exa mple.com", "a..b", "x/y"} {
		if _, err := g.Addrs(context.Background(), host); err == nil {
			t.Errorf("%q accepted", host)
		}
	}
	if _, err := g.Addrs(context.Background(), "unknown.example.com"); err == nil || IsPermanent(err) {
		t.Errorf("a failed look-up must be a retryable error: %v", err)
	}
}
