// Package auth is the guardian_auth Caddy module: it authenticates every
// request to a protected route before any function runs. It reads an API
// key from "Authorization: Bearer" or a session from the guardian_token
// cookie, refuses malformed keys without I/O, checks the credential kind
// and scope the route requires, refuses cross-site state changes made with
// the cookie, and hands the identity to the function runtime in the
// request variable identity.VarKey.
//
// Request variables set:
//   - identity.VarKey ("guardian.identity"): *identity.Identity once the
//     credential is valid (also when the route then refuses it, for the
//     audit log; the request goes no further then)
//   - VarFailure ("guardian.auth_failure"): the reason a credential was
//     refused, for the audit log (never the credential)
//
// Read: "guardian.ip_blocked" (set by the rate limiter): credentials that
// would need a database lookup are then refused.
package auth

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/glassmkr/guardian/caddymodules/guardian"
	"github.com/glassmkr/guardian/shared/audit"
	"github.com/glassmkr/guardian/shared/identity"
	"github.com/glassmkr/guardian/shared/problem"
	"github.com/glassmkr/guardian/shared/session"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// VarFailure is the request variable that says why authentication failed.
const VarFailure = "guardian.auth_failure"

// varIPBlocked mirrors ratelimit.VarIPBlocked: set on requests from an
// address out of brute-force tokens.
const varIPBlocked = "guardian.ip_blocked"

// authenticators are shared by every route and kept across config reloads
// (with their caches), keyed by their configuration.
var authenticators = caddy.NewUsagePool()

// Credential kinds a route may accept.
const (
	AllowSession   = "session"
	AllowKey       = "key"
	AllowCollector = "collector"
)

var scopeRank = map[string]int{"read": 1, "write": 2, "admin": 3}

// Handler authenticates requests to one route.
type Handler struct {
	// Allow lists the credentials the route accepts: "session", "key"
	// (account keys) and "collector" (collector keys). Default: session
	// and key.
	Allow []string `json:"allow,omitempty"`
	// Scope is the least scope every method needs: read, write or admin.
	// Default: read. Collector keys carry no scope and are admitted only
	// by routes that allow "collector".
	Scope string `json:"scope,omitempty"`
	// MethodScopes overrides Scope for some methods, e.g. {"DELETE": "admin"}.
	MethodScopes map[string]string `json:"method_scopes,omitempty"`
	// SessionScope, when set, is the scope a session needs for any method,
	// in place of Scope and MethodScopes, which then bind keys alone: the
	// audit log is every signed-in user's to read, but only an admin key's
	// among programmatic ones.
	SessionScope string `json:"session_scope,omitempty"`
	// Optional lets requests without any credential through anonymously.
	// A credential that is presented must still be valid, unless
	// IgnoreInvalid is also set.
	Optional bool `json:"optional,omitempty"`
	// IgnoreInvalid, with Optional, treats an invalid credential as none
	// (a stale session cookie is cleared): for sign-in, where a visitor
	// with an expired session must still be able to sign in.
	IgnoreInvalid bool `json:"ignore_invalid,omitempty"`
	// LoginRedirect, when set, sends a browser (a GET asking for HTML)
	// without a valid credential to this path instead of answering 401:
	// for dashboard pages.
	LoginRedirect string `json:"login_redirect,omitempty"`
	// TrustedOrigins are origins (scheme://host[:port]) besides the
	// request's own from which cookie-authenticated state changes are
	// accepted.
	TrustedOrigins []string `json:"trusted_origins,omitempty"`

	allow        map[string]bool
	authKey      string
	auth         *Authenticator
	cookieDomain string
	log          *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.guardian_auth",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision joins the shared authenticator for the edge's settings.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.log = ctx.Logger()
	if err := h.Validate(); err != nil {
		return err
	}
	appIface, err := ctx.App("guardian")
	if err != nil {
		return fmt.Errorf("guardian_auth: %w", err)
	}
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("guardian_auth: %w", err)
	}
	app := appIface.(*guardian.App)
	sec := app.Secrets()
	sum := sha256.New()
	for _, part := range [][]byte{[]byte(app.PGAppDSN()), sec.KeyPepper, sec.SessionSecret} {
		sum.Write(part)
		sum.Write([]byte{0})
	}
	key := hex.EncodeToString(sum.Sum(nil))
	v, _, err := authenticators.LoadOrNew(key, func() (caddy.Destructor, error) {
		return NewAuthenticator(Config{DSN: app.PGAppDSN(), Pepper: sec.KeyPepper, SessionSecret: sec.SessionSecret, Log: ctx.Logger().Named("authenticator")})
	})
	if err != nil {
		return fmt.Errorf("guardian_auth: %w", err)
	}
	h.authKey = key
	h.init(v.(*Authenticator), app.CookieDomain())
	return nil
}

// init finishes setting up h around an authenticator.
func (h *Handler) init(a *Authenticator, cookieDomain string) {
	h.auth = a
	h.cookieDomain = cookieDomain
	if h.log == nil {
		h.log = zap.NewNop()
	}
	if len(h.Allow) == 0 {
		h.Allow = []string{AllowSession, AllowKey}
	}
	if h.Scope == "" {
		h.Scope = "read"
	}
	h.allow = map[string]bool{}
	for _, k := range h.Allow {
		h.allow[k] = true
	}
}

// knownMethods are the methods a scope may be given for.
var knownMethods = map[string]bool{"GET": true, "HEAD": true, "POST": true, "PUT": true, "PATCH": true, "DELETE": true, "OPTIONS": true}

// Validate rejects unknown credential kinds and scopes, naming the field.
func (h *Handler) Validate() error {
	for _, k := range h.Allow {
		if k != AllowSession && k != AllowKey && k != AllowCollector {
			return fmt.Errorf("guardian_auth: allow: unknown credential kind %q (session, key, collector)", k)
		}
	}
	if h.Scope != "" && scopeRank[h.Scope] == 0 {
		return fmt.Errorf("guardian_auth: scope: unknown scope %q (read, write, admin)", h.Scope)
	}
	for m, s := range h.MethodScopes {
		// Looked up by the request's method, upper case: a key in
		// another case, or a misspelt method, would never apply and
		// leave the method at the route's scope without a word.
		if !knownMethods[m] {
			return fmt.Errorf("guardian_auth: scope %q: not an HTTP method in upper case (GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS)", m)
		}
		if scopeRank[s] == 0 {
			return fmt.Errorf("guardian_auth: scope %s: unknown scope %q", m, s)
		}
	}
	if h.LoginRedirect != "" && (!strings.HasPrefix(h.LoginRedirect, "/") || strings.HasPrefix(h.LoginRedirect, "//") || strings.Contains(h.LoginRedirect, "\\")) {
		return fmt.Errorf("guardian_auth: login_redirect must be a path on this site such as /login, got %q", h.LoginRedirect)
	}
	if h.IgnoreInvalid && !h.Optional {
		return fmt.Errorf("guardian_auth: ignore_invalid applies to optional only")
	}
	if h.SessionScope != "" && scopeRank[h.SessionScope] == 0 {
		return fmt.Errorf("guardian_auth: session_scope: unknown scope %q (read, write, admin)", h.SessionScope)
	}
	for _, o := range h.TrustedOrigins {
		u, err := url.Parse(o)
		if err != nil || u.Scheme == "" || u.Host == "" || u.Path != "" {
			return fmt.Errorf("guardian_auth: trusted_origin %q: want scheme://host[:port]", o)
		}
	}
	return nil
}

// Cleanup releases this config's hold on the authenticator.
func (h *Handler) Cleanup() error {
	if h.authKey != "" {
		key := h.authKey
		h.authKey = "" // once only: a second release would drop another config's hold
		_, err := authenticators.Delete(key)
		return err
	}
	return nil
}

// ServeHTTP authenticates the request and calls next, or returns a
// problem for the error route.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	cred, fromCookie, present, ambiguous := credential(r)
	if ambiguous {
		switch {
		case h.Optional && h.IgnoreInvalid:
			h.clearSessionCookies(w, r)
			return next.ServeHTTP(w, r)
		case h.wantsLogin(r):
			caddyhttp.SetVar(r.Context(), VarFailure, "ambiguous_session")
			h.clearSessionCookies(w, r)
			http.Redirect(w, r, h.LoginRedirect, http.StatusSeeOther)
			return nil
		}
		h.clearSessionCookies(w, r)
		return h.refuse(w, r, "ambiguous_session", false, refuseInvalid)
	}
	if !present {
		if h.Optional {
			return next.ServeHTTP(w, r)
		}
		if h.wantsLogin(r) {
			caddyhttp.SetVar(r.Context(), VarFailure, "missing")
			http.Redirect(w, r, h.LoginRedirect, http.StatusSeeOther)
			return nil
		}
		return h.refuse(w, r, "missing", false, refuseMissing)
	}
	// An address the limiter found out of tokens gets no database lookups.
	lookup := caddyhttp.GetVar(r.Context(), varIPBlocked) != true
	var id *identity.Identity
	var err error
	if fromCookie {
		id, err = h.auth.Session(r.Context(), cred, lookup)
	} else {
		id, err = h.auth.Key(r.Context(), cred, lookup)
	}
	if err != nil {
		if errors.Is(err, ErrUnavailable) {
			// A lookup cut short because the client went away says
			// nothing about the store: no error line, or any client
			// could write them at will by closing its connections.
			if r.Context().Err() == nil {
				h.auth.WarnUnavailable(err)
			}
			w.Header().Set("Retry-After", "2")
			return h.refuse(w, r, "store_unavailable", false, refuseUnavailable)
		}
		// An uncached credential from an address out of tokens was never
		// checked: it may be valid, so its cookie stays, and the answer is
		// left to the limiter (429), not a sign-in page.
		checked := !errors.Is(err, ErrNotCached)
		if h.Optional && h.IgnoreInvalid {
			if fromCookie && checked {
				http.SetCookie(w, session.ClearCookie(h.cookieDomain))
			}
			return next.ServeHTTP(w, r)
		}
		if checked && h.wantsLogin(r) {
			caddyhttp.SetVar(r.Context(), VarFailure, reason(err))
			if fromCookie {
				http.SetCookie(w, session.ClearCookie(h.cookieDomain))
			}
			http.Redirect(w, r, h.LoginRedirect, http.StatusSeeOther)
			return nil
		}
		return h.refuse(w, r, reason(err), fromCookie && checked, refuseInvalid)
	}
	// Known from here on, refused or not: the audit log names the caller.
	caddyhttp.SetVar(r.Context(), identity.VarKey, id)
	if !h.accepts(id.Kind) {
		return h.refuse(w, r, "kind_not_allowed", false, refuseKind[id.Kind])
	}
	if need := h.scopeFor(r.Method, id.Kind); id.Kind != identity.KindCollector && scopeRank[id.Scope] < scopeRank[need] {
		return h.refuse(w, r, "insufficient_scope", false, refuseScope[need])
	}
	if fromCookie && !safeMethod(r.Method) && crossSite(r, h.TrustedOrigins) {
		return h.refuse(w, r, "cross_site", false, refuseCrossSite)
	}
	return next.ServeHTTP(w, r)
}

// refuse records why (for the audit log), sets the response headers the
// refusal needs and returns it. Refusals are prebuilt: a flood of bad
// credentials must cost as little as possible.
func (h *Handler) refuse(w http.ResponseWriter, r *http.Request, why string, clearCookie bool, ref *refusal) error {
	caddyhttp.SetVar(r.Context(), VarFailure, why)
	if ref.challenge != nil {
		w.Header()["Www-Authenticate"] = ref.challenge
	}
	if clearCookie {
		http.SetCookie(w, session.ClearCookie(h.cookieDomain))
	}
	if ce := h.log.Check(zap.DebugLevel, "request refused"); ce != nil {
		// The path may hold a key or token a client pasted there.
		ce.Write(zap.String("reason", why), zap.String("method", r.Method), zap.String("path", audit.RedactPath(r.URL.Path)))
	}
	// Built by hand rather than with caddyhttp.Error, which walks the call
	// stack for a trace on every call.
	return caddyhttp.HandlerError{Err: ref.problem, StatusCode: ref.problem.Status, ID: requestID(), Trace: "guardian_auth"}
}

// refusal is a prebuilt answer: the problem and its WWW-Authenticate.
type refusal struct {
	problem   *problem.Problem
	challenge []string
}

func challenge(v string) []string { return []string{v}[:1:1] }

var (
	refuseMissing = &refusal{
		problem.New(http.StatusUnauthorized, "unauthenticated", "sign in or send an API key as a Bearer token"),
		challenge(`Bearer realm="guardian"`),
	}
	// refuseInvalid is the one answer for malformed, unknown, revoked and
	// expired credentials, so none can be told from another.
	refuseInvalid = &refusal{
		problem.New(http.StatusUnauthorized, "invalid_credentials", "the credential is not valid"),
		challenge(`Bearer realm="guardian", error="invalid_token"`),
	}
	refuseUnavailable = &refusal{
		problem.New(http.StatusServiceUnavailable, "auth_unavailable", "authentication is temporarily unavailable; try again shortly"),
		nil,
	}
	refuseCrossSite = &refusal{
		problem.New(http.StatusForbidden, "cross_site", "cross-site requests may not change state with the session cookie"),
		nil,
	}
	refuseKind = map[string]*refusal{
		identity.KindSession:   {problem.New(http.StatusForbidden, "insufficient_scope", "this route does not accept sessions"), nil},
		identity.KindAccount:   {problem.New(http.StatusForbidden, "insufficient_scope", "this route does not accept account keys"), nil},
		identity.KindCollector: {problem.New(http.StatusForbidden, "insufficient_scope", "this route does not accept collector keys"), nil},
	}
	refuseScope = func() map[string]*refusal {
		m := map[string]*refusal{}
		for scope := range scopeRank {
			p := problem.New(http.StatusForbidden, "insufficient_scope", "this request needs the "+scope+" scope")
			p.Extra = map[string]any{"required_scope": scope}
			m[scope] = &refusal{p, challenge(`Bearer realm="guardian", error="insufficient_scope", scope="` + scope + `"`)}
		}
		return m
	}()
)

// requestID is a short random id for matching a refusal to its log line.
func requestID() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func reason(err error) string {
	switch {
	case errors.Is(err, ErrMalformed):
		return "malformed"
	case errors.Is(err, ErrUnknown):
		return "unknown_key"
	case errors.Is(err, ErrRevoked):
		return "revoked"
	case errors.Is(err, ErrExpired):
		return "expired"
	case errors.Is(err, ErrBadToken):
		return "bad_token"
	case errors.Is(err, ErrNotCached):
		return "ip_blocked"
	}
	return "invalid"
}

func (h *Handler) accepts(kind string) bool {
	switch kind {
	case identity.KindSession:
		return h.allow[AllowSession]
	case identity.KindAccount:
		return h.allow[AllowKey]
	case identity.KindCollector:
		return h.allow[AllowCollector]
	}
	return false
}

func (h *Handler) scopeFor(method, kind string) string {
	if kind == identity.KindSession && h.SessionScope != "" {
		return h.SessionScope
	}
	if s, ok := h.MethodScopes[method]; ok {
		return s
	}
	return h.Scope
}

// wantsLogin reports whether a refused request is a browser visiting a
// page, to be sent to the sign-in page.
func (h *Handler) wantsLogin(r *http.Request) bool {
	return h.LoginRedirect != "" && r.Method == http.MethodGet && strings.Contains(r.Header.Get("Accept"), "text/html")
}

// credential returns the request's credential: a Bearer token from the
// Authorization header, which wins when present, else the session cookie.
// An Authorization header of another scheme counts as a bad credential.
//
// More than one session cookie is ambiguous: the cookie is scoped to the
// parent domain (the spec's .glassmkr.com), so another host under it can
// set one of its own beside the user's, with a longer path to be sent
// first, and have the user act in the attacker's account. Such a request
// gets no session at all.
func credential(r *http.Request) (cred string, fromCookie, present, ambiguous bool) {
	if v := r.Header.Get("Authorization"); v != "" {
		scheme, token, ok := strings.Cut(v, " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") {
			return "", false, true, false
		}
		return strings.TrimSpace(token), false, true, false
	}
	cookies := r.CookiesNamed(session.CookieName)
	if len(cookies) > 1 {
		return "", true, true, true
	}
	if len(cookies) == 1 && cookies[0].Value != "" {
		return cookies[0].Value, true, true, false
	}
	return "", false, false, false
}

// clearSessionCookies ends every session cookie the request can have
// carried (see credential): a browser deletes a cookie only when name,
// domain and path all match, and the one planted beside the user's may
// have any path the request's path-matches ("/api", "/api/", ...). So it
// is cleared on each of those, both for the configured domain and
// host-only; clearing "/" alone would delete the user's cookie and leave
// the planted one to be sent alone next time.
func (h *Handler) clearSessionCookies(w http.ResponseWriter, r *http.Request) {
	for _, path := range cookiePaths(r.URL.EscapedPath()) {
		c := session.ClearCookie(h.cookieDomain)
		c.Path = path
		http.SetCookie(w, c)
		if h.cookieDomain != "" {
			c := session.ClearCookie("")
			c.Path = path
			http.SetCookie(w, c)
		}
	}
}

// maxCookiePaths bounds cookiePaths on a path of many segments: a planted
// cookie deeper than that is cleared when a request reaches it.
const maxCookiePaths = 16

// cookiePaths are the cookie paths that path-match p (RFC 6265 5.1.4):
// "/", each segment's prefix without and with its trailing slash, and p
// itself, each once. Past maxCookiePaths, the deepest are left out but p.
func cookiePaths(p string) []string {
	out := []string{"/"}
	add := func(c string) {
		if out[len(out)-1] != c { // "//": the prefix is there already
			out = append(out, c)
		}
	}
	for i := 1; i < len(p); i++ {
		if p[i] == '/' {
			add(p[:i])
			add(p[:i+1])
		}
	}
	if p != "" {
		add(p)
	}
	if len(out) > maxCookiePaths {
		out = append(out[:maxCookiePaths-1], p)
	}
	return out
}

func safeMethod(m string) bool {
	return m == http.MethodGet || m == http.MethodHead || m == http.MethodOptions
}

// crossSite reports whether a browser says the request comes from another
// site: Sec-Fetch-Site "cross-site" or "same-site", or an Origin that is
// neither the request's own nor trusted. Clients that send neither header
// (not browsers) are not refused.
func crossSite(r *http.Request, trusted []string) bool {
	switch r.Header.Get("Sec-Fetch-Site") {
	case "cross-site", "same-site":
		return !trustedOrigin(r.Header.Get("Origin"), trusted)
	}
	origin := r.Header.Get("Origin")
	if origin == "" {
		return false
	}
	if origin == "null" {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil {
		return true
	}
	if u.Host == r.Host {
		return false
	}
	return !trustedOrigin(origin, trusted)
}

func trustedOrigin(origin string, trusted []string) bool {
	for _, t := range trusted {
		if strings.EqualFold(origin, t) {
			return true
		}
	}
	return false
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddy.Destructor            = (*Authenticator)(nil)
)
