// Package clientip names whom a request's address counts for, the same
// way for everything that counts per client: the rate limiter's per-IP
// tier, the credential lookups the edge allows each client at once, and
// the second factor's attempts per address. It does not import Caddy, so
// that functions can use it (caddymodules/guardian.ClientBucket reads
// Caddy's client address).
package clientip

import "net/netip"

// Bucket is whom an address's requests are counted against: an IPv4
// address (IPv4-mapped IPv6 ones too) on its own, an IPv6 address by its
// /64. One IPv6 subscriber is given a /64 at least, whose 2^64 addresses
// would otherwise each bring a fresh budget. Anything that does not parse
// is its own bucket.
func Bucket(ip string) string { return group(ip, 64) }

// Network is the wider group an address belongs to, for bounds that one
// site must not be able to take several shares of: an IPv4 address on its
// own, an IPv6 address by its /48 (a site's usual allocation). Anything
// that does not parse is its own group.
func Network(ip string) string { return group(ip, 48) }

// group is ip itself for IPv4 (IPv4-mapped IPv6 too), its prefix of bits
// for IPv6, and ip unchanged when it does not parse.
func group(ip string, bits int) string {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return ip
	}
	a = a.WithZone("").Unmap()
	if a.Is4() {
		return a.String()
	}
	p, _ := a.Prefix(bits)
	return p.String()
}
