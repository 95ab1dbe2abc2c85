// Package problem is the guardian_problem Caddy module: the one error
// renderer of the edge. Placed in handle_errors, it turns whatever error a
// handler returned into an RFC 9457 problem+json response.
package problem

import (
	"errors"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/glassmkr/guardian/shared/problem"
)

func init() {
	caddy.RegisterModule(Handler{})
	httpcaddyfile.RegisterHandlerDirective("guardian_problem", func(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
		m := new(Handler)
		return m, m.UnmarshalCaddyfile(h.Dispenser)
	})
	httpcaddyfile.RegisterDirectiveOrder("guardian_problem", httpcaddyfile.Before, "respond")
}

// Handler renders the request's error as problem+json. An error that wraps
// a *problem.Problem is sent as that problem; any other error is sent as a
// generic problem for its status, so internal error text (upstream
// addresses, driver messages) never reaches the client. The Caddy error ID
// is included as "request_id" so a customer can quote it to support.
type Handler struct{}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.guardian_problem",
		New: func() caddy.Module { return new(Handler) },
	}
}

// ServeHTTP writes the problem; it does not call next.
func (Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	err, _ := r.Context().Value(caddyhttp.ErrorCtxKey).(error)
	problem.Write(w, FromError(err))
	return nil
}

// FromError maps a handler error to the problem sent to the client.
func FromError(err error) *problem.Problem {
	status := http.StatusInternalServerError
	var id string
	var he caddyhttp.HandlerError
	if errors.As(err, &he) {
		if he.StatusCode >= 400 && he.StatusCode <= 599 {
			status = he.StatusCode
		}
		id = he.ID
	}
	var p *problem.Problem
	if errors.As(err, &p) && p.Status >= 400 && p.Status <= 599 {
		cp := *p
		p = &cp
	} else {
		p = problem.New(status, problem.CodeForStatus(status), problem.DetailForStatus(status))
	}
	if id != "" {
		extra := make(map[string]any, len(p.Extra)+1)
		for k, v := range p.Extra {
			extra[k] = v
		}
		extra["request_id"] = id
		p.Extra = extra
	}
	return p
}

// UnmarshalCaddyfile takes no arguments:
//
//	guardian_problem
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next()
	if d.NextArg() || d.NextBlock(0) {
		return d.ArgErr()
	}
	return nil
}

// Interface guards
var (
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddyfile.Unmarshaler       = (*Handler)(nil)
)
