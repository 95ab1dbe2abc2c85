package guardian

import (
	"context"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func TestClientBucket(t *testing.T) {
	if got := ClientBucket(context.Background()); got != "" {
		t.Errorf("outside a Caddy request: %q", got)
	}
	ctx := context.WithValue(context.Background(), caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: "2001:db8::5"})
	if got := ClientBucket(ctx); got != "2001:db8::/64" {
		t.Errorf("Caddy's client address 2001:db8::5: %q", got)
	}
}
