package clientip

import (
	"net/netip"
	"testing"
)

// Two addresses share a Bucket exactly when they are the same IPv4
// address (mapped or not, whatever zone) or in the same IPv6 /64, and a
// Network exactly when the same IPv4 address or the same /48: no client
// gets a fresh budget by changing what it may change, and none is
// charged for another's.
func FuzzGroups(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1}, []byte{192, 0, 2, 1}, "", false)
	f.Add([]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1}, []byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1, 0xff, 0, 0, 0, 0, 0, 0, 2}, "eth0", true)
	f.Add([]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1}, []byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 1}, "", true)
	f.Fuzz(func(t *testing.T, ra, rb []byte, zone string, sixB bool) {
		a, ok := addr(ra, false)
		if !ok {
			return
		}
		b, ok := addr(rb, sixB)
		if !ok {
			return
		}
		if zone != "" && a.Is6() && !a.Is4In6() {
			if z, err := netip.ParseAddr(a.String() + "%" + zone); err == nil {
				if Bucket(z.String()) != Bucket(a.String()) || Network(z.String()) != Network(a.String()) {
					t.Fatalf("zone %q changes %s's group", zone, a)
				}
			}
		}
		ua, ub := a.Unmap(), b.Unmap()
		for _, c := range []struct {
			name  string
			group func(string) string
			bits  int
		}{{"Bucket", Bucket, 64}, {"Network", Network, 48}} {
			var same bool
			switch {
			case ua.Is4() != ub.Is4():
				same = false
			case ua.Is4():
				same = ua == ub
			default:
				pa, _ := ua.Prefix(c.bits)
				pb, _ := ub.Prefix(c.bits)
				same = pa == pb
			}
			if got := c.group(a.String()) == c.group(b.String()); got != same {
				t.Fatalf("%s(%s) = %q, %s(%s) = %q: shared %v, want %v", c.name, a, c.group(a.String()), c.name, b, c.group(b.String()), got, same)
			}
			// A group is an address or a prefix, never the text it was
			// given: a text that does not parse cannot pose as one.
			g := c.group(a.String())
			if _, err := netip.ParseAddr(g); err != nil {
				if _, err := netip.ParsePrefix(g); err != nil {
					t.Fatalf("%s(%s) = %q, neither an address nor a prefix", c.name, a, g)
				}
			}
		}
	})
}

// addr makes an IPv4 address of 4 bytes, an IPv6 one of 16 (or of 4,
// mapped, when six).
func addr(b []byte, six bool) (netip.Addr, bool) {
	switch len(b) {
	case 4:
		a := netip.AddrFrom4([4]byte(b))
		if six {
			return netip.AddrFrom16(a.As16()), true
		}
		return a, true
	case 16:
		return netip.AddrFrom16([16]byte(b)), true
	}
	return netip.Addr{}, false
}
