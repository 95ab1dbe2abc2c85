// Package clientip names whom a request's address counts for, the same
// way for every module that counts per client: the rate limiter's per-IP
// tier and the credential lookups the edge allows each client at once.
package clientip

import (
	"context"
	"net/netip"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// Bucket is whom an address's requests are counted against: an IPv4
// address (IPv4-mapped IPv6 ones too) on its own, an IPv6 address by its
// /64. One IPv6 subscriber is given a /64 at least, whose 2^64 addresses
// would otherwise each bring a fresh budget. Anything that does not parse
// is its own bucket.
func Bucket(ip string) string {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return ip
	}
	a = a.WithZone("").Unmap()
	if a.Is4() {
		return a.String()
	}
	p, _ := a.Prefix(64)
	return p.String()
}

// FromContext is the Bucket of the client address Caddy determined for the
// request whose context ctx is (trusting forwarding headers only from the
// server's trusted proxies), or "" outside a Caddy request.
func FromContext(ctx context.Context) string {
	if ip, ok := caddyhttp.GetVar(ctx, caddyhttp.ClientIPVarKey).(string); ok && ip != "" {
		return Bucket(ip)
	}
	return ""
}
