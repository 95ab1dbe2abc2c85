package clientip

import (
	"context"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
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

func TestFromContext(t *testing.T) {
	if got := FromContext(context.Background()); got != "" {
		t.Errorf("outside a Caddy request: %q", got)
	}
	ctx := context.WithValue(context.Background(), caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: "2001:db8::5"})
	if got := FromContext(ctx); got != "2001:db8::/64" {
		t.Errorf("Caddy's client address 2001:db8::5: %q", got)
	}
}
