// Package guardian is the "guardian" Caddy app: the edge's shared
// configuration, loaded once when Caddy starts. Without a valid key pepper
// and session secret in the environment Caddy refuses to start, naming the
// variable but never printing its value.
package guardian

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/glassmkr/guardian/shared/config"
)

func init() {
	caddy.RegisterModule(App{})
	httpcaddyfile.RegisterGlobalOption("guardian", parseGlobalOption)
}

// App holds what every Guardian edge module shares. Other modules reach it
// with ctx.App("guardian").
type App struct {
	// Secrets are read from the environment, never from the config, so
	// they do not appear in Caddy's JSON config or its admin API.
	secrets      config.Secrets
	pgAppDSN     string
	cookieDomain string
	redis        RedisSettings
}

// RedisSettings locate the limiter's Redis.
type RedisSettings struct {
	// Addrs has one address (host:port, or a unix socket's path from
	// GUARDIAN_REDIS_SOCKET), or several for a cluster.
	Addrs    []string
	Password string
	// Cluster is set by GUARDIAN_REDIS_CLUSTER=1, or by several addresses.
	Cluster bool
	// Prefix starts the limiter's keys unless a directive sets its own:
	// GUARDIAN_REDIS_PREFIX, default "guardian:rl:". Edges that share a
	// Redis but must not share buckets (tests, staging) set different ones.
	Prefix string
}

// CaddyModule returns the Caddy module information.
func (App) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "guardian",
		New: func() caddy.Module { return new(App) },
	}
}

// Provision loads and validates the edge's settings: the key pepper, the
// session secret, the runtime database role's DSN and the Redis address
// are required.
func (a *App) Provision(ctx caddy.Context) error {
	s, err := config.LoadSecrets(os.LookupEnv)
	l := config.New(os.LookupEnv)
	a.pgAppDSN = l.String(config.PGAppDSN)
	a.cookieDomain = l.Optional(config.CookieDomain, "")
	rs := l.LoadRedis()
	a.redis = RedisSettings{Addrs: rs.Addrs, Password: rs.Password, Cluster: rs.Cluster}
	if rs.Socket != "" {
		// The same server through its unix socket: on one host, a round
		// trip costs less there than over TCP loopback (see BENCH.md).
		a.redis.Addrs = []string{rs.Socket}
	}
	a.redis.Prefix = l.Optional("GUARDIAN_REDIS_PREFIX", "guardian:rl:")
	err = errors.Join(err, checkClientIPHeaders(os.LookupEnv), checkAdminAddr(os.LookupEnv))
	if err := errors.Join(err, l.Err()); err != nil {
		return fmt.Errorf("guardian: %w", err)
	}
	if err := checkSchema(a.pgAppDSN, caddy.Log().Named("guardian")); err != nil {
		return err
	}
	noteCertExpiry(os.LookupEnv, caddy.Log().Named("guardian"))
	if reg := ctx.GetMetricsRegistry(); reg != nil {
		if err := RegisterCollectors(reg, certExpiry); err != nil {
			return fmt.Errorf("guardian: %w", err)
		}
	}
	a.secrets = s
	return nil
}

// Secrets returns the edge's signing material.
func (a *App) Secrets() config.Secrets { return a.secrets }

// PGAppDSN is the runtime role's connection string.
func (a *App) PGAppDSN() string { return a.pgAppDSN }

// Redis returns where the limiter's Redis is.
func (a *App) Redis() RedisSettings { return a.redis }

// CookieDomain is the session cookie's Domain ("" on localhost).
func (a *App) CookieDomain() string { return a.cookieDomain }

// Start implements caddy.App.
func (*App) Start() error { return nil }

// Stop implements caddy.App.
func (*App) Stop() error { return nil }

// parseGlobalOption enables the app:
//
//	{
//	    guardian
//	}
func parseGlobalOption(d *caddyfile.Dispenser, _ any) (any, error) {
	d.Next()
	if d.NextArg() || d.NextBlock(0) {
		return nil, d.ArgErr()
	}
	return httpcaddyfile.App{Name: "guardian", Value: []byte("{}")}, nil
}

// RegisterCollectors registers package-wide Prometheus collectors in a
// config's registry (Caddy's metrics endpoint). A collector that survived
// a reload is already registered there, which is fine.
func RegisterCollectors(reg prometheus.Registerer, cs ...prometheus.Collector) error {
	if reg == nil {
		return nil
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				return err
			}
		}
	}
	return nil
}

// Interface guards
var (
	_ caddy.App         = (*App)(nil)
	_ caddy.Provisioner = (*App)(nil)
)

// ClientIPHeadersEnv names the header the Caddyfile's client_ip_headers
// reads the client's address from, behind a trusted proxy.
const ClientIPHeadersEnv = "GUARDIAN_CLIENT_IP_HEADERS"

// checkAdminAddr refuses an AdminAddrEnv that is set but not a unix
// socket.
func checkAdminAddr(lookup func(string) (string, bool)) error {
	if v, ok := lookup(AdminAddrEnv); ok && !strings.HasPrefix(v, "unix/") {
		return fmt.Errorf("%s must be a unix socket (unix/PATH): functions reach TCP, and Caddy's admin API asks for no credentials", AdminAddrEnv)
	}
	return nil
}

// AdminAddrEnv sets the Caddyfile's admin address. checkAdminAddr
// refuses one that is not a unix socket: functions are kept from unix
// sockets (shared/fnserve) but reach TCP, so an admin API on a TCP port
// would let a compromised function load a config that prints the key
// pepper.
const AdminAddrEnv = "GUARDIAN_ADMIN_ADDR"

// checkClientIPHeaders refuses a ClientIPHeadersEnv that is set but names
// no header, or more than one. Empty, Caddy reads X-Forwarded-For, which a
// Cloudflare Worker writes as it likes; with two, a first header holding a
// trusted proxy's address (a Worker's Cf-Connecting-Ip) falls through to
// the second. Either way a client could choose its own per-IP bucket.
func checkClientIPHeaders(lookup func(string) (string, bool)) error {
	v, ok := lookup(ClientIPHeadersEnv)
	if !ok {
		return nil // the Caddyfile's default, Cf-Connecting-Ip
	}
	if n := len(strings.Fields(v)); n != 1 {
		return fmt.Errorf("%s must name one header (Cf-Connecting-Ip behind Cloudflare, X-Forwarded-For behind another proxy), not %d", ClientIPHeadersEnv, n)
	}
	return nil
}
