// Package problem is the guardian_problem Caddy module: the one error
// renderer of the edge. Placed in handle_errors, it turns whatever error a
// handler returned into an RFC 9457 problem+json response.
package problem

import (
	"errors"
	"html/template"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/glassmkr/guardian/shared/audit"
	"github.com/glassmkr/guardian/shared/identity"
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
type Handler struct {
	log *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.guardian_problem",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision takes the logger for server errors.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.log = ctx.Logger()
	return nil
}

// ServeHTTP writes the problem; it does not call next. A browser
// navigating to a page (it asks for HTML, not JSON) gets the same problem
// as a small HTML page instead of a JSON document it would show raw.
//
// Its request_id is the one the client can quote and support can find:
// the audit row's (sent as Request-Id too) on an audited route, else a new
// one, sent as Request-Id and logged with the error of a 5xx but 503
// (Caddy logs handled errors only at debug level).
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, _ caddyhttp.Handler) error {
	err, _ := r.Context().Value(caddyhttp.ErrorCtxKey).(error)
	id, _ := caddyhttp.GetVar(r.Context(), identity.RequestIDVarKey).(string)
	if id == "" {
		id = identity.NewRequestID()
		w.Header().Set("Request-Id", id)
	}
	p := fromError(err, id)
	// A 503 is a refusal the edge chose (busy, a dependency away), said
	// where it was decided; logging each would flood the log under load.
	if p.Status >= 500 && p.Status != http.StatusServiceUnavailable && h.log != nil {
		// The path may hold a key or token a client pasted there.
		h.log.Error("request failed", zap.String("request_id", id), zap.Int("status", p.Status),
			zap.String("method", r.Method), zap.String("path", audit.RedactPath(r.URL.Path)), zap.Error(err))
	}
	if wantsHTML(r) {
		writeHTML(w, p)
		return nil
	}
	problem.Write(w, p)
	return nil
}

// wantsHTML reports a browser's navigation: a GET, or a form's POST, that
// accepts HTML and does not ask for JSON, to a path outside the API. API
// clients (Accept */*, JSON or none; JSON bodies) get JSON, and so does
// every request under /api/ and /github/, whatever it accepts: their
// errors are problem+json by contract (docs/api.md).
func wantsHTML(r *http.Request) bool {
	if apiPath(r.URL.Path) {
		return false
	}
	switch r.Method {
	case http.MethodGet, http.MethodHead:
	case http.MethodPost:
		ct := r.Header.Get("Content-Type")
		if !strings.HasPrefix(ct, "application/x-www-form-urlencoded") && !strings.HasPrefix(ct, "multipart/form-data") {
			return false
		}
	default:
		return false
	}
	accept := r.Header.Get("Accept")
	return strings.Contains(accept, "text/html") && !strings.Contains(accept, "json")
}

// apiPath reports a path under /api/ or /github/, in any letter case
// (Caddy's path matchers ignore it).
func apiPath(path string) bool {
	for _, prefix := range []string{"/api/", "/github/"} {
		if len(path) >= len(prefix) && strings.EqualFold(path[:len(prefix)], prefix) {
			return true
		}
	}
	return false
}

var errorPage = template.Must(template.New("error").Parse(`<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{.Title}} · Guardian</title>
<link rel="stylesheet" href="/static/app.css">
</head><body>
<main>
<h1>{{.Title}}</h1>
<p role="alert">{{.Detail}}</p>
{{if .RequestID}}<p>Request id (quote it to support): <code>{{.RequestID}}</code></p>{{end}}
<p><a href="/settings/keys">Settings</a> · <a href="/login">Sign in</a></p>
</main>
</body></html>
`))

// writeHTML sends p as a page with p's status. No script runs on it.
func writeHTML(w http.ResponseWriter, p *problem.Problem) {
	id, _ := p.Extra["request_id"].(string)
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Security-Policy", "default-src 'none'; style-src 'self'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'")
	h.Del("Content-Length")
	w.WriteHeader(p.Status)
	_ = errorPage.Execute(w, map[string]string{"Title": p.Title, "Detail": p.Detail, "RequestID": id})
}

// FromError maps a handler error to the problem sent to the client, with
// the error's own id as its request_id.
func FromError(err error) *problem.Problem { return fromError(err, "") }

// fromError is FromError with request id id ("": the error's own).
func fromError(err error, id string) *problem.Problem {
	status := http.StatusInternalServerError
	var he caddyhttp.HandlerError
	if errors.As(err, &he) {
		if he.StatusCode >= 400 && he.StatusCode <= 599 {
			status = he.StatusCode
		}
		if id == "" {
			id = he.ID
		}
	}
	var p *problem.Problem
	if errors.As(err, &p) && p.Status >= 400 && p.Status <= 599 {
		cp := *p
		p = &cp
	} else {
		p = problem.New(status, problem.CodeForStatus(status), problem.DetailForStatus(status))
	}
	if id != "" {
		p = withRequestID(p, id)
	}
	return p
}

// withRequestID is a copy of p whose request_id is id (p's Extra may be
// shared with a package-level problem).
func withRequestID(p *problem.Problem, id string) *problem.Problem {
	cp := *p
	extra := make(map[string]any, len(p.Extra)+1)
	for k, v := range p.Extra {
		extra[k] = v
	}
	extra["request_id"] = id
	cp.Extra = extra
	return &cp
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
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddyfile.Unmarshaler       = (*Handler)(nil)
)
