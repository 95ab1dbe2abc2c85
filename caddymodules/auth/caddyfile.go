package auth

import (
	"strings"

	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("guardian_auth", parseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("guardian_auth", httpcaddyfile.After, "basic_auth")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens:
//
//	guardian_auth {
//	    allow          session|key|collector ...
//	    scope          [<METHOD>] read|write|admin
//	    session_scope  read|write|admin
//	    optional [ignore_invalid]
//	    trusted_origin <scheme://host[:port]> ...
//	    login_redirect <path>
//	}
//
// Without a block, sessions and account keys with the read scope pass.
// "scope" without a method sets the default; with one, that method's.
// "session_scope" is what a session needs instead, for every method.
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "allow":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			h.Allow = append(h.Allow, args...)
		case "scope":
			args := d.RemainingArgs()
			switch len(args) {
			case 1:
				h.Scope = args[0]
			case 2:
				if h.MethodScopes == nil {
					h.MethodScopes = map[string]string{}
				}
				h.MethodScopes[strings.ToUpper(args[0])] = args[1]
			default:
				return d.ArgErr()
			}
		case "session_scope":
			if !d.NextArg() {
				return d.ArgErr()
			}
			h.SessionScope = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
		case "optional":
			h.Optional = true
			if d.NextArg() {
				if d.Val() != "ignore_invalid" {
					return d.Errf("optional takes only ignore_invalid, got %q", d.Val())
				}
				h.IgnoreInvalid = true
			}
			if d.NextArg() {
				return d.ArgErr()
			}
		case "login_redirect":
			if !d.NextArg() || !strings.HasPrefix(d.Val(), "/") {
				return d.Err("login_redirect takes a path such as /login")
			}
			h.LoginRedirect = d.Val()
			if d.NextArg() {
				return d.ArgErr()
			}
		case "trusted_origin":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			h.TrustedOrigins = append(h.TrustedOrigins, args...)
		default:
			return d.Errf("unknown guardian_auth setting %q", d.Val())
		}
	}
	return h.Validate()
}

var _ caddyfile.Unmarshaler = (*Handler)(nil)
