// Package headers is the guardian_headers Caddy module: it puts the
// security posture's four response headers, and a Permissions-Policy, on
// every response, error responses included.
package headers

import (
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Defaults from the security posture.
const (
	DefaultHSTS           = "max-age=15552000; includeSubDomains"
	DefaultReferrerPolicy = "strict-origin-when-cross-origin"
	DefaultFrameOptions   = "DENY"
	// DefaultPermissionsPolicy turns off the powerful browser features no
	// Guardian page uses, for its pages and anything framed in them.
	// WebAuthn (publickey-credentials-get/-create) keeps its default,
	// this origin only: the second-factor pages need it.
	DefaultPermissionsPolicy = "camera=(), microphone=(), geolocation=(), payment=(), usb=()"
)

// Handler sets Strict-Transport-Security, X-Content-Type-Options,
// X-Frame-Options, Referrer-Policy and Permissions-Policy before calling
// the next handler, so
// they are present whatever that handler writes, errors included (Caddy's
// error routes write to the same response). It also drops Caddy's Server
// header, which tells an attacker nothing it needs.
type Handler struct {
	// HSTS is the Strict-Transport-Security value. Default:
	// "max-age=15552000; includeSubDomains".
	HSTS string `json:"hsts,omitempty"`
	// FrameOptions is the X-Frame-Options value. Default: "DENY".
	FrameOptions string `json:"frame_options,omitempty"`
	// ReferrerPolicy is the Referrer-Policy value. Default:
	// "strict-origin-when-cross-origin".
	ReferrerPolicy string `json:"referrer_policy,omitempty"`
	// PermissionsPolicy is the Permissions-Policy value. Default:
	// DefaultPermissionsPolicy.
	PermissionsPolicy string `json:"permissions_policy,omitempty"`

	// Prebuilt one-element values with len == cap, so that setting them
	// allocates nothing and a later Add cannot write into a shared array.
	hsts, nosniff, frame, referrer, permissions []string
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.guardian_headers",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision fills in defaults and prebuilds the header values.
func (h *Handler) Provision(caddy.Context) error {
	if h.HSTS == "" {
		h.HSTS = DefaultHSTS
	}
	if h.FrameOptions == "" {
		h.FrameOptions = DefaultFrameOptions
	}
	if h.ReferrerPolicy == "" {
		h.ReferrerPolicy = DefaultReferrerPolicy
	}
	if h.PermissionsPolicy == "" {
		h.PermissionsPolicy = DefaultPermissionsPolicy
	}
	one := func(v string) []string { return []string{v}[:1:1] }
	h.hsts, h.nosniff, h.frame, h.referrer = one(h.HSTS), one("nosniff"), one(h.FrameOptions), one(h.ReferrerPolicy)
	h.permissions = one(h.PermissionsPolicy)
	return nil
}

// ServeHTTP sets the headers and calls next.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	hdr := w.Header()
	hdr["Strict-Transport-Security"] = h.hsts
	hdr["X-Content-Type-Options"] = h.nosniff
	hdr["X-Frame-Options"] = h.frame
	hdr["Referrer-Policy"] = h.referrer
	hdr["Permissions-Policy"] = h.permissions
	delete(hdr, "Server")
	return next.ServeHTTP(w, r)
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
