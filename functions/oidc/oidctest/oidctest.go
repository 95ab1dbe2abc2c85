// Package oidctest is a real, local OpenID Connect provider for the oidc
// function's tests and for `make up` (cmd/dev-oidc): discovery, JWKS,
// authorization (approved at once, as a configurable user) and token
// endpoints, built on github.com/oauth2-proxy/mockoidc.
//
// On top of mockoidc it enforces what Guardian's client must send: the one
// allowed redirect URI, a nonce, and PKCE with S256 only (a request
// without them is refused, so a client that forgets one fails its tests).
// Tests can also make it misbehave the way a hostile or broken provider
// would: a different nonce, another audience, an unverified e-mail, a
// token signed with a key that is not in its JWKS.
//
// mockoidc keeps its sessions in plain maps, so this provider serves one
// request at a time; a sign-in is a handful of requests.
package oidctest

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/oauth2-proxy/mockoidc"
)

// Config is a provider's settings.
type Config struct {
	// Issuer is the issuer URL, "http://HOST:PORT/oidc" (mockoidc serves
	// under /oidc). Empty: derived from the listening address.
	Issuer string
	// ClientID and ClientSecret are the one client's credentials.
	ClientID, ClientSecret string
	// RedirectURI, when set, is the only redirect URI accepted.
	RedirectURI string
	// User is who signs in when no user was queued (QueueUser). Zero:
	// DemoUser().
	User User
}

// User is the account that approves an authorization request, with the
// knobs tests use to make the ID token wrong.
type User struct {
	Subject       string
	Email         string
	EmailVerified bool
	Name          string
	// HostedDomain is Google's "hd" claim (a Workspace domain); "" for none.
	HostedDomain string

	// Nonce, when not nil, replaces the nonce the client asked for.
	Nonce *string
	// Audience, when set, replaces the client id as the token's audience.
	Audience []string
	// AuthAge, when set, dates auth_time that long before the token (a
	// user the provider did not authenticate anew).
	AuthAge time.Duration
	// NoAuthTime leaves auth_time out, as Google does unless the client
	// asked for session age claims.
	NoAuthTime bool
}

// DemoUser is the default user.
func DemoUser() User {
	return User{Subject: "demo-google-subject", Email: "demo@example.com", EmailVerified: true, Name: "Demo User"}
}

// Provider is a running OpenID provider.
type Provider struct {
	m      *mockoidc.MockOIDC
	cfg    Config
	ln     net.Listener
	mu     sync.Mutex // one request at a time (mockoidc's maps are not locked)
	forge  bool       // sign the next token with a key not in the JWKS
	rogue  *mockoidc.Keypair
	issuer string
	// lastAuthorize is the latest authorization request's parameters.
	lastAuthorize url.Values
}

// Start listens on addr ("127.0.0.1:0" for any free port) and serves.
func Start(addr string, cfg Config) (*Provider, error) {
	if cfg.ClientID == "" || cfg.ClientSecret == "" {
		return nil, errors.New("oidctest: client id and secret are required")
	}
	if cfg.User.Subject == "" {
		cfg.User = DemoUser()
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	m, err := mockoidc.NewServer(key)
	if err != nil {
		return nil, err
	}
	m.ClientID, m.ClientSecret = cfg.ClientID, cfg.ClientSecret
	m.CodeChallengeMethodsSupported = []string{"S256"}
	rogueKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, err
	}
	p := &Provider{m: m, cfg: cfg, rogue: &mockoidc.Keypair{PrivateKey: rogueKey, PublicKey: &rogueKey.PublicKey}}
	// Key ids are computed lazily by mockoidc; compute them now.
	if _, err := m.Keypair.KeyID(); err != nil {
		return nil, err
	}
	if _, err := p.rogue.KeyID(); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	public := ln.Addr().String()
	if cfg.Issuer != "" {
		u, err := url.Parse(cfg.Issuer)
		if err != nil || u.Scheme != "http" || u.Host == "" || strings.TrimSuffix(u.Path, "/") != mockoidc.IssuerBase || u.RawQuery != "" {
			ln.Close()
			return nil, fmt.Errorf("oidctest: issuer must look like http://HOST:PORT%s", mockoidc.IssuerBase)
		}
		public = u.Host
	}
	// mockoidc derives its issuer from the listener's address: present the
	// public one.
	p.ln = &namedListener{Listener: ln, addr: hostAddr(public)}
	if err := m.AddMiddleware(p.guard); err != nil {
		ln.Close()
		return nil, err
	}
	if err := m.Start(p.ln, nil); err != nil {
		ln.Close()
		return nil, err
	}
	p.issuer = m.Issuer()
	return p, nil
}

// Issuer is the provider's issuer URL.
func (p *Provider) Issuer() string { return p.issuer }

// Addr is the address the provider listens on.
func (p *Provider) Addr() string { return p.ln.(*namedListener).Listener.Addr().String() }

// QueueUser makes u the user of the next authorization request.
func (p *Provider) QueueUser(u User) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.m.QueueUser(&u)
}

// ForgeNextSignature makes the next token response carry tokens signed
// with a key that the provider's JWKS does not hold.
func (p *Provider) ForgeNextSignature() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.forge = true
}

// LastAuthorization is the parameters of the latest authorization request.
func (p *Provider) LastAuthorization() url.Values {
	p.mu.Lock()
	defer p.mu.Unlock()
	return cloneValues(p.lastAuthorize)
}

func cloneValues(v url.Values) url.Values {
	out := url.Values{}
	for k, vs := range v {
		out[k] = append([]string(nil), vs...)
	}
	return out
}

// Close stops the provider.
func (p *Provider) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return p.m.Server.Shutdown(ctx)
}

// guard serialises requests and adds the checks mockoidc leaves out.
func (p *Provider) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p.mu.Lock()
		defer p.mu.Unlock()
		switch r.URL.Path {
		case mockoidc.AuthorizationEndpoint:
			if err := r.ParseForm(); err != nil {
				oauthError(w, "invalid_request", "the request could not be read")
				return
			}
			p.lastAuthorize = cloneValues(r.Form)
			if p.cfg.RedirectURI != "" && r.Form.Get("redirect_uri") != p.cfg.RedirectURI {
				// Never redirect to an unregistered URI.
				oauthError(w, "invalid_request", "redirect_uri is not registered")
				return
			}
			if r.Form.Get("nonce") == "" || r.Form.Get("code_challenge") == "" || r.Form.Get("code_challenge_method") != "S256" {
				oauthError(w, "invalid_request", "nonce and PKCE (S256) are required")
				return
			}
			if len(p.m.UserQueue.Queue) == 0 {
				u := p.cfg.User
				p.m.QueueUser(&u)
			}
		case mockoidc.TokenEndpoint:
			if err := r.ParseForm(); err != nil {
				oauthError(w, "invalid_request", "the request could not be read")
				return
			}
			// client_secret_basic as well as client_secret_post.
			if id, secret, ok := r.BasicAuth(); ok && r.Form.Get("client_id") == "" {
				r.Form.Set("client_id", id)
				r.Form.Set("client_secret", secret)
			}
			if ru := r.Form.Get("redirect_uri"); p.cfg.RedirectURI != "" && ru != "" && ru != p.cfg.RedirectURI {
				oauthError(w, "invalid_grant", "redirect_uri does not match")
				return
			}
			if p.forge {
				p.forge = false
				own := p.m.Keypair
				p.m.Keypair = p.rogue
				defer func() { p.m.Keypair = own }()
			}
		}
		next.ServeHTTP(w, r)
	})
}

func oauthError(w http.ResponseWriter, code, description string) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusBadRequest)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": code, "error_description": description})
}

// The mockoidc.User interface.

// ID is the subject.
func (u *User) ID() string { return u.Subject }

// Userinfo is the userinfo document for scopes.
func (u *User) Userinfo(scopes []string) ([]byte, error) {
	return json.Marshal(u.claims(scopes, nil))
}

// Claims are the ID token's claims for scopes, on top of base.
func (u *User) Claims(scopes []string, base *mockoidc.IDTokenClaims) (jwt.Claims, error) {
	if u.Nonce != nil {
		base.Nonce = *u.Nonce
	}
	if len(u.Audience) > 0 {
		base.Audience = jwt.ClaimStrings(u.Audience)
	}
	return u.claims(scopes, base), nil
}

type idClaims struct {
	*mockoidc.IDTokenClaims
	Subject       string `json:"sub,omitempty"`
	AuthTime      int64  `json:"auth_time,omitempty"`
	Email         string `json:"email,omitempty"`
	EmailVerified *bool  `json:"email_verified,omitempty"`
	Name          string `json:"name,omitempty"`
	HostedDomain  string `json:"hd,omitempty"`
}

func (u *User) claims(scopes []string, base *mockoidc.IDTokenClaims) *idClaims {
	// Subject shadows the registered claims' own "sub", so it is always set.
	c := &idClaims{IDTokenClaims: base, Subject: u.Subject, HostedDomain: u.HostedDomain}
	if base == nil {
		c.IDTokenClaims = &mockoidc.IDTokenClaims{RegisteredClaims: &jwt.RegisteredClaims{}}
	} else if !u.NoAuthTime {
		c.AuthTime = base.IssuedAt.Add(-u.AuthAge).Unix()
	}
	for _, s := range scopes {
		switch s {
		case "email":
			verified := u.EmailVerified
			c.Email, c.EmailVerified = u.Email, &verified
		case "profile":
			c.Name = u.Name
		}
	}
	return c
}

// namedListener reports a chosen address (the issuer's host) as its own.
type namedListener struct {
	net.Listener
	addr net.Addr
}

func (l *namedListener) Addr() net.Addr { return l.addr }

type hostAddr string

func (a hostAddr) Network() string { return "tcp" }
func (a hostAddr) String() string  { return string(a) }

var _ mockoidc.User = (*User)(nil)
