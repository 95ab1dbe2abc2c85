package guardian

import (
	"context"

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
// for one client address (ClientBucket). guardian_rate_limit, which
// charges an address only once a lookup has failed, blocks an address it
// refuses until as many tokens are back, so a burst of that many lookups
// after each block costs no more than the tier's refill.
const LookupsPerClient = 16
