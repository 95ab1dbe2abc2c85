package audit

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("guardian_audit", parseCaddyfile)
	httpcaddyfile.RegisterDirectiveOrder("guardian_audit", httpcaddyfile.Before, "basic_auth")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens:
//
//	guardian_audit {
//	    spool_dir       <dir>
//	    max_spool_bytes <n>
//	    timeout         <duration>
//	    linger          <duration>|off
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		field := d.Val()
		if !d.NextArg() {
			return d.ArgErr()
		}
		val := d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
		switch field {
		case "spool_dir":
			h.SpoolDir = val
		case "max_spool_bytes":
			n, err := strconv.ParseInt(val, 10, 64)
			if err != nil || n <= 0 {
				return d.Errf("max_spool_bytes must be a positive number of bytes, got %q", val)
			}
			h.MaxSpoolBytes = n
		case "timeout":
			dur, err := caddy.ParseDuration(val)
			if err != nil || dur <= 0 {
				return d.Errf("timeout: invalid duration %q", val)
			}
			h.Timeout = caddy.Duration(dur)
		case "linger":
			if val == "off" {
				h.Linger = -1
				break
			}
			dur, err := caddy.ParseDuration(val)
			if err != nil || dur <= 0 || dur > MaxLinger {
				return d.Errf("linger: want a duration up to 1s, or off; got %q", val)
			}
			h.Linger = caddy.Duration(dur)
		default:
			return d.Errf("unknown guardian_audit setting %q", field)
		}
	}
	if h.SpoolDir == "" {
		return d.Err("guardian_audit needs spool_dir")
	}
	return nil
}

var _ caddyfile.Unmarshaler = (*Handler)(nil)
