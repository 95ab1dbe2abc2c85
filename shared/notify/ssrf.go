package notify

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// Resolver looks host names up; *net.Resolver is one. Tests pass their
// own so that a name can resolve to any address.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// Guard decides which addresses an outgoing webhook may reach
// (ARCHITECTURE §5): never loopback, private, link-local, carrier-grade
// NAT, unspecified, multicast, reserved or cloud-metadata addresses,
// unless the operator allow-listed the target. The webhook client dials
// only addresses the guard returned, so a name cannot be re-resolved to
// something else between the check and the connection.
type Guard struct {
	resolver   Resolver
	allowNets  []netip.Prefix
	allowHosts map[string]bool
}

// BlockedError says why a target was refused. It is permanent: retrying
// cannot help.
type BlockedError struct {
	Host   string
	Addr   netip.Addr
	Reason string
}

func (e *BlockedError) Error() string {
	if e.Addr.IsValid() && e.Addr.String() != e.Host {
		return fmt.Sprintf("webhook target %q refused: it resolves to %s (%s)", e.Host, e.Addr, e.Reason)
	}
	if e.Addr.IsValid() {
		return fmt.Sprintf("webhook target %q refused: %s", e.Host, e.Reason)
	}
	return fmt.Sprintf("webhook target %q refused: %s", e.Host, e.Reason)
}

// NewGuard returns a guard. allow holds the operator's exceptions
// (GUARDIAN_WEBHOOK_ALLOW): CIDRs ("10.0.0.0/8"), addresses ("10.1.2.3")
// or host names ("hooks.internal"). An address inside an allowed CIDR may
// be called whatever it is; an allowed host name may resolve to internal
// addresses, but still never to a cloud-metadata address (a name can be
// re-pointed; an allowed CIDR or address is explicit). resolver may be nil
// for the system's.
func NewGuard(allow []string, resolver Resolver) (*Guard, error) {
	if resolver == nil {
		resolver = net.DefaultResolver
	}
	g := &Guard{resolver: resolver, allowHosts: map[string]bool{}}
	for _, raw := range allow {
		entry := strings.TrimSpace(raw)
		if entry == "" {
			continue
		}
		if p, err := netip.ParsePrefix(entry); err == nil {
			g.allowNets = append(g.allowNets, p.Masked())
			continue
		}
		if a, err := netip.ParseAddr(entry); err == nil {
			a = canonical(a)
			g.allowNets = append(g.allowNets, netip.PrefixFrom(a, a.BitLen()))
			continue
		}
		host := normalizeHost(entry)
		if !validHostName(host) {
			return nil, fmt.Errorf("webhook allow-list: %q is neither a CIDR, an address nor a host name", entry)
		}
		g.allowHosts[host] = true
	}
	return g, nil
}

// Addrs resolves host (a name or a literal address) and returns its
// addresses when every one of them may be called; a name with one
// forbidden address among several is refused whole.
func (g *Guard) Addrs(ctx context.Context, host string) ([]netip.Addr, error) {
	host = normalizeHost(host)
	if host == "" {
		return nil, &BlockedError{Host: host, Reason: "no host"}
	}
	var addrs []netip.Addr
	if a, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{a}
	} else {
		if !validHostName(host) {
			return nil, &BlockedError{Host: host, Reason: "not a valid host name"}
		}
		found, err := g.resolver.LookupNetIP(ctx, "ip", host)
		if err != nil {
			return nil, fmt.Errorf("webhook target %q: %w", host, err)
		}
		if len(found) == 0 {
			return nil, fmt.Errorf("webhook target %q: no address", host)
		}
		addrs = found
	}
	out := make([]netip.Addr, 0, len(addrs))
	for _, a := range addrs {
		a = a.WithZone("")
		if err := g.permit(host, a); err != nil {
			return nil, err
		}
		out = append(out, a)
	}
	return out, nil
}

// permit checks one address of host.
func (g *Guard) permit(host string, a netip.Addr) error {
	c := canonical(a)
	for _, p := range g.allowNets {
		if p.Contains(c) || p.Contains(a) {
			return nil
		}
	}
	reason := Blocked(a)
	if reason == "" {
		return nil
	}
	if g.allowHosts[host] && !hostAllowNeverPermits[reason] {
		return nil
	}
	return &BlockedError{Host: host, Addr: a, Reason: reason}
}

// checkDialed re-checks the address a socket is about to connect to: the
// dialer only ever gets vetted addresses, so this is a second lock on the
// same door.
func (g *Guard) checkDialed(host, address string) error {
	ap, err := netip.ParseAddrPort(address)
	if err != nil {
		return &BlockedError{Host: host, Reason: "unparsable dial address"}
	}
	return g.permit(host, ap.Addr().WithZone(""))
}

const (
	reasonMetadata = "cloud metadata"
	// reasonHidden: an IPv6 form that carries an IPv4 address this guard
	// cannot read for certain (the metadata address could be in it).
	reasonHidden = "hides an IPv4 address"
)

// hostAllowNeverPermits are the reasons an allowed host name does not
// override (an allowed CIDR or address still does): an allowed name is
// meant to reach an internal service, and its DNS answer must not lead to
// the metadata address, another link-local service (a container agent's
// credentials at 169.254.170.2), or a form that may hide either.
var hostAllowNeverPermits = map[string]bool{reasonMetadata: true, "link-local": true, reasonHidden: true}

var (
	metadataAddrs = []netip.Addr{
		netip.MustParseAddr("169.254.169.254"), // AWS, GCP, Azure, OpenStack, DigitalOcean...
		netip.MustParseAddr("fd00:ec2::254"),   // AWS over IPv6
		netip.MustParseAddr("168.63.129.16"),   // Azure's host endpoint
		netip.MustParseAddr("100.100.100.200"), // Alibaba Cloud
	}
	blockedNets = []struct {
		p      netip.Prefix
		reason string
	}{
		{netip.MustParsePrefix("0.0.0.0/8"), "unspecified"},
		{netip.MustParsePrefix("100.64.0.0/10"), "carrier-grade NAT"},
		{netip.MustParsePrefix("192.0.0.0/24"), "reserved"},
		{netip.MustParsePrefix("192.0.2.0/24"), "reserved"},
		{netip.MustParsePrefix("198.18.0.0/15"), "reserved"},
		{netip.MustParsePrefix("198.51.100.0/24"), "reserved"},
		{netip.MustParsePrefix("203.0.113.0/24"), "reserved"},
		{netip.MustParsePrefix("240.0.0.0/4"), "reserved"},       // and 255.255.255.255
		{netip.MustParsePrefix("::/96"), reasonHidden},           // IPv4-compatible
		{netip.MustParsePrefix("::ffff:0:0:0/96"), reasonHidden}, // IPv4-translated (SIIT)
		{netip.MustParsePrefix("100::/64"), "reserved"},          // discard
		{netip.MustParsePrefix("2001:db8::/32"), "reserved"},
		{netip.MustParsePrefix("2001::/32"), reasonHidden}, // Teredo
		{netip.MustParsePrefix("fec0::/10"), "private"},    // site-local, deprecated
		// Local-use NAT64 (RFC 8215): the IPv4 address sits where the
		// network's own prefix length (/48 to /96) puts it, which cannot
		// be known here; refused whole rather than read at one place.
		{netip.MustParsePrefix("64:ff9b:1::/48"), reasonHidden},
	}
	nat64     = []netip.Prefix{netip.MustParsePrefix("64:ff9b::/96")}
	sixToFour = netip.MustParsePrefix("2002::/16")
)

// Blocked says why a may not be called from a webhook, or "" when it may.
// IPv4-mapped, NAT64 and 6to4 IPv6 addresses are judged by the IPv4
// address they carry.
func Blocked(a netip.Addr) string {
	if !a.IsValid() {
		return "invalid"
	}
	a = canonical(a.WithZone(""))
	for _, m := range metadataAddrs {
		if a == m {
			return reasonMetadata
		}
	}
	switch {
	case a.IsUnspecified():
		return "unspecified"
	case a.IsLoopback():
		return "loopback"
	case a.IsPrivate():
		return "private"
	case a.IsMulticast(), a.IsInterfaceLocalMulticast(), a.IsLinkLocalMulticast():
		return "multicast"
	case a.IsLinkLocalUnicast():
		return "link-local"
	}
	for _, b := range blockedNets {
		if b.p.Contains(a) {
			return b.reason
		}
	}
	return ""
}

// canonical returns the IPv4 address an IPv6 address stands for, when it
// stands for one (mapped, NAT64, 6to4), else a itself.
func canonical(a netip.Addr) netip.Addr {
	if a.Is4In6() {
		return a.Unmap()
	}
	if a.Is6() {
		b := a.As16()
		for _, p := range nat64 {
			if p.Contains(a) {
				return netip.AddrFrom4([4]byte{b[12], b[13], b[14], b[15]})
			}
		}
		if sixToFour.Contains(a) {
			return netip.AddrFrom4([4]byte{b[2], b[3], b[4], b[5]})
		}
	}
	return a
}

func normalizeHost(h string) string {
	h = strings.ToLower(strings.TrimSpace(h))
	h = strings.TrimPrefix(strings.TrimSuffix(h, "]"), "[")
	return strings.TrimSuffix(h, ".")
}

// validHostName accepts DNS names of letters, digits, hyphens and dots
// (and underscores, which some internal names use).
func validHostName(h string) bool {
	if h == "" || len(h) > 253 {
		return false
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// IsPermanent reports whether err can never succeed on a retry.
func IsPermanent(err error) bool {
	var b *BlockedError
	var p *permanentError
	return errors.As(err, &b) || errors.As(err, &p)
}

// permanentError marks a failure that retrying cannot fix.
type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Permanent wraps err so that the dispatcher does not retry it.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err}
}
