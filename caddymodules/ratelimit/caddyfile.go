package ratelimit

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("guardian_ratelimit", parseCaddyfile)
	// The ip tier goes before authentication (guardian_auth follows
	// basic_auth); a route that also has the
	// account tier lists the chain in a route block, in order.
	httpcaddyfile.RegisterDirectiveOrder("guardian_ratelimit", httpcaddyfile.Before, "basic_auth")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens:
//
//	guardian_ratelimit ip|account {
//	    mode    always|failures        # ip tier only; default always
//	    refuse_blocked                 # mode failures: 429 an address out of tokens at once
//	    ip      <capacity> <per_second>
//	    network <capacity> <per_second> # ip tier: shared by an IPv6 /48; default 16 times ip
//	    key     <capacity> <per_second>
//	    account <capacity> <per_second>
//	    timeout <duration>             # Redis deadline before failing open
//	    prefix  <redis key prefix>
//	    speculate_below <n>            # account tier: reads run during their decision, up to n in flight; routes whose GETs change nothing; default 0 (off)
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if !d.NextArg() {
		return d.Err("guardian_ratelimit needs a tier: ip or account")
	}
	h.Tier = d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		field := d.Val()
		args := d.RemainingArgs()
		switch field {
		case "refuse_blocked":
			if len(args) != 0 {
				return d.ArgErr()
			}
			h.RefuseBlocked = true
		case "mode", "timeout", "prefix":
			if len(args) != 1 {
				return d.ArgErr()
			}
			switch field {
			case "mode":
				h.Mode = args[0]
			case "prefix":
				h.Prefix = args[0]
			case "timeout":
				dur, err := caddy.ParseDuration(args[0])
				if err != nil || dur <= 0 {
					return d.Errf("timeout: invalid duration %q", args[0])
				}
				h.Timeout = caddy.Duration(dur)
			}
		case "speculate_below":
			if len(args) != 1 {
				return d.ArgErr()
			}
			n, err := strconv.Atoi(args[0])
			if err != nil {
				return d.Errf("speculate_below: %q is not a whole number", args[0])
			}
			h.SpeculateBelow = &n
		case "ip", "network", "key", "account":
			if len(args) != 2 {
				return d.Errf("%s takes a capacity and a per-second rate", field)
			}
			capacity, err1 := strconv.ParseFloat(args[0], 64)
			rate, err2 := strconv.ParseFloat(args[1], 64)
			if err1 != nil || err2 != nil {
				return d.Errf("%s: capacity and rate must be numbers", field)
			}
			b := &Bucket{Capacity: capacity, Rate: rate}
			switch field {
			case "ip":
				h.IP = b
			case "network":
				h.Network = b
			case "key":
				h.Key = b
			case "account":
				h.Account = b
			}
		default:
			return d.Errf("unknown guardian_ratelimit setting %q", field)
		}
	}
	if err := h.checkTierSettings(); err != nil {
		return err
	}
	return h.Validate()
}

var _ caddyfile.Unmarshaler = (*Handler)(nil)
