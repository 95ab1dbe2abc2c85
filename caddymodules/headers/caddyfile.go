package headers

import (
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("guardian_headers", parseCaddyfile)
	// First in a site, before anything that could answer.
	httpcaddyfile.RegisterDirectiveOrder("guardian_headers", httpcaddyfile.Before, "tracing")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens:
//
//	guardian_headers {
//	    hsts            <value>
//	    frame_options   <value>
//	    referrer_policy <value>
//	    permissions_policy <value>
//	}
//
// Every setting is optional; the defaults are the security posture's.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		field := d.Val()
		var target *string
		switch field {
		case "hsts":
			target = &h.HSTS
		case "frame_options":
			target = &h.FrameOptions
		case "referrer_policy":
			target = &h.ReferrerPolicy
		case "permissions_policy":
			target = &h.PermissionsPolicy
		default:
			return d.Errf("unknown guardian_headers setting %q", field)
		}
		if !d.NextArg() {
			return d.ArgErr()
		}
		*target = d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	return nil
}

var _ caddyfile.Unmarshaler = (*Handler)(nil)
