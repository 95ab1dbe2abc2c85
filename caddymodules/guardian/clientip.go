package guardian

import (
	"context"
	"strings"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/glassmkr/guardian/shared/clientip"
)

// ClientBucket is the clientip.Bucket of the client address Caddy
// determined for the request whose context ctx is (trusting forwarding
// headers only from the server's trusted proxies), or "" outside a Caddy
// request.
func ClientBucket(ctx context.Context) string {
	if ip, ok := caddyhttp.GetVar(ctx, caddyhttp.ClientIPVarKey).(string); ok && ip != "" {
		return clientip.Bucket(ip)
	}
	return ""
}

// LookupsPerClient bounds the credentials guardian_auth looks up at once
// for one client address (ClientBucket). guardian_ratelimit, which
// charges an address only once a lookup has failed, blocks an address it
// refuses until as many tokens are back, so a burst of that many lookups
// after each block costs no more than the tier's refill.
const LookupsPerClient = 16

// LookupsPerNetwork bounds them for one IPv6 /48 (ClientNetwork), its /64s
// together: sixteen addresses' worth, as the limiter's network bucket
// holds sixteen addresses' tokens by default. Without it, each of a /48's
// 65,536 /64s could start LookupsPerClient lookups whenever a block of
// the network lapsed; guardian_ratelimit blocks a refused network until
// its bucket has refilled this many tokens.
const LookupsPerNetwork = 16 * LookupsPerClient

// ClientNetwork is the /48 (clientip.Network) of an IPv6 client address,
// as ClientBucket reads it, and "" for an IPv4 one or outside a Caddy
// request: an IPv4 address is its own network, already counted as a
// client.
func ClientNetwork(ctx context.Context) string {
	ip, ok := caddyhttp.GetVar(ctx, caddyhttp.ClientIPVarKey).(string)
	if !ok || ip == "" {
		return ""
	}
	if n := clientip.Network(ip); strings.IndexByte(n, ':') >= 0 {
		return n
	}
	return ""
}
