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
