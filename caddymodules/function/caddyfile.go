package function

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"
)

func init() {
	httpcaddyfile.RegisterHandlerDirective("guardian_function", parseCaddyfile)
	// A terminal handler, like reverse_proxy: after every middleware.
	httpcaddyfile.RegisterDirectiveOrder("guardian_function", httpcaddyfile.After, "reverse_proxy")
}

func parseCaddyfile(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	m := new(Handler)
	err := m.UnmarshalCaddyfile(h.Dispenser)
	return m, err
}

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens:
//
//	guardian_function <name> {
//	    bin            <path>
//	    env            <VAR>|<VAR>=<FROM> [...]
//	    socket_dir     <dir>
//	    start_timeout  <duration>
//	    idle_timeout   <duration>
//	    timeout        <duration>
//	    max_concurrent <n>
//	    queue_timeout  <duration>
//	    min_warm       <0|1>
//	    buffer_body    <size>
//	}
//
// bin is required; env may repeat; the rest have defaults (see Handler).
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // directive name
	if !d.NextArg() {
		return d.Err("guardian_function needs a function name")
	}
	h.Name = d.Val()
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		field := d.Val()
		switch field {
		case "env":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return d.ArgErr()
			}
			h.Env = append(h.Env, args...)
			continue
		case "bin", "socket_dir", "start_timeout", "idle_timeout", "timeout", "max_concurrent", "queue_timeout", "min_warm", "buffer_body":
		default:
			return d.Errf("unknown guardian_function setting %q", field)
		}
		if !d.NextArg() {
			return d.ArgErr()
		}
		val := d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
		switch field {
		case "bin":
			h.Bin = val
		case "socket_dir":
			h.SocketDir = val
		case "max_concurrent":
			n, err := strconv.Atoi(val)
			if err != nil || n <= 0 {
				return d.Errf("max_concurrent must be a positive integer, got %q", val)
			}
			h.MaxConcurrent = n
		case "buffer_body":
			n, err := humanize.ParseBytes(val)
			if err != nil || n == 0 || n > maxBufferBody {
				return d.Errf("buffer_body must be a size from 1 byte to 1GiB, got %q", val)
			}
			h.BufferBody = int64(n)
		case "min_warm":
			n, err := strconv.Atoi(val)
			if err != nil || n < 0 || n > 1 {
				return d.Errf("min_warm must be 0 or 1, got %q", val)
			}
			h.MinWarm = n
		default:
			dur, err := caddy.ParseDuration(val)
			if err != nil || dur < 0 {
				return d.Errf("%s: invalid duration %q", field, val)
			}
			if dur == 0 && field != "idle_timeout" {
				// 0 would read as unset and give the default, not "no
				// limit": said rather than done quietly.
				return d.Errf("%s must be longer than 0 (without it, the default applies)", field)
			}
			cd := caddy.Duration(dur)
			switch field {
			case "start_timeout":
				h.StartTimeout = cd
			case "idle_timeout":
				h.IdleTimeout = &cd
			case "timeout":
				h.Timeout = cd
			case "queue_timeout":
				h.QueueTimeout = cd
			}
		}
	}
	return nil
}

var _ caddyfile.Unmarshaler = (*Handler)(nil)
