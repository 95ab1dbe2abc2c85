// Package ratelimit is the guardian_ratelimit Caddy module: the security
// posture's three token-bucket tiers, kept in Redis and charged by one Lua
// script in one round trip.
//
//   - ip tier (before authentication): 100 tokens, 10/s per client address,
//     for requests without a valid credential. In mode "always" every
//     request of the route is charged first (sign-in, sign-up, re-auth:
//     brute-force surfaces). In mode "failures" only requests whose
//     authentication failed (or whose client went away while it was
//     checked) are charged, after the fact; once an address is
//     out of tokens this instance marks it, so its next credentials that
//     are not already known good are refused without a database lookup.
//     An IPv6 address is counted by its /64, charged with its /48's
//     network bucket in the same call.
//   - account tier (after authentication): 1,000 tokens, 100/s per key (or
//     session) and 5,000, 500/s per customer, taken from both or neither.
//     An API key that authentication refuses (scope, kind) never reaches
//     it: the ip tier charges it to the same buckets (with its own key
//     and account shapes, the posture's unless set) and answers 429
//     instead once they are empty. A session's refusals are not charged.
//
// If Redis is unreachable or slower than the timeout, the request passes
// (fail open, logged once per 30 s, metric guardian_ratelimit_redis_up 0),
// except the ip tier, which falls back to per-instance buckets.
//
// Request variables read: identity.VarKey, auth.VarFailure. Set: VarIPBlocked,
// VarAuditFold.
package ratelimit

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/glassmkr/guardian/caddymodules/guardian"
	"github.com/glassmkr/guardian/shared/clientip"
	"github.com/glassmkr/guardian/shared/identity"
	"github.com/glassmkr/guardian/shared/problem"
)

func init() {
	caddy.RegisterModule(Handler{})
	// The series exist from the start, at 0, so that a rule on their rate
	// has something to compare.
	metrics.decisions.WithLabelValues(SourceOpen)
	metrics.decisions.WithLabelValues(SourceLocal)
	metrics.decisions.WithLabelValues(sourceAbandoned)
}

// VarIPBlocked is set (to true) on requests from an address this instance
// knows to be out of ip-tier tokens; the auth module then refuses
// credentials it would have to look up.
const VarIPBlocked = "guardian.ip_blocked"

// VarAuditFold is set (to true) on a request without a valid credential
// that this tier refused unchecked, or that came from an address already
// blocked. guardian_audit counts such a request instead of writing its
// row: the failure that blocked the address has one (rate_limited), and
// a row for each request after it would let any client grow the audit
// log, which is never purged of rows without an account, at the edge's
// speed. Requests with an identity are always written.
const VarAuditFold = "guardian.audit_fold"

// varFailure mirrors auth.VarFailure (importing auth would tie the modules).
const varFailure = "guardian.auth_failure"

// reasonIPBlocked mirrors the auth module's failure reason for a
// credential it did not look up because this address is out of tokens.
const reasonIPBlocked = "ip_blocked"

// Tiers and modes.
const (
	TierIP        = "ip"
	TierAccount   = "account"
	ModeAlways    = "always"
	ModeFailures  = "failures"
	defaultPrefix = "guardian:rl:"
)

// Bounds of a bucket's capacity and rate (tokens per second).
const (
	maxCapacity = 1e9
	minRate     = 0.001
)

// networkFactor sizes the default network bucket from the IP bucket.
const networkFactor = 16

// defaultNetwork is the network bucket of a route that sets none: ip's
// networkFactor times, within the bounds Validate holds every bucket to.
func defaultNetwork(ip Bucket) Bucket {
	return Bucket{Capacity: min(ip.Capacity*networkFactor, maxCapacity), Rate: min(ip.Rate*networkFactor, maxCapacity)}
}

// Defaults from the security posture.
var (
	DefaultIP      = Bucket{Capacity: 100, Rate: 10}
	DefaultKey     = Bucket{Capacity: 1000, Rate: 100}
	DefaultAccount = Bucket{Capacity: 5000, Rate: 500}
)

var limiters = caddy.NewUsagePool()

// Handler applies one tier.
type Handler struct {
	// Tier is "ip" or "account".
	Tier string `json:"tier"`
	// Mode applies to the ip tier: "always" (default) or "failures".
	Mode string `json:"mode,omitempty"`
	// RefuseBlocked (mode failures): a request from an address this
	// instance knows to be out of tokens is answered 429 before the
	// handlers after this one run, instead of being marked for
	// guardian_auth to refuse what it would have to look up. For routes
	// whose function checks the credential itself (a webhook's
	// signature): nothing at the edge can tell a good one from a guess.
	// Such a route also passes on at most guardian.LookupsPerClient
	// requests of one address at once (LookupsPerNetwork of an IPv6 /48),
	// the rest waiting for a place (checking).
	RefuseBlocked bool `json:"refuse_blocked,omitempty"`
	// IP, Key and Account shape the buckets. Defaults: 100/10, 1000/100,
	// 5000/500 (capacity/per second).
	IP *Bucket `json:"ip,omitempty"`
	// Network (ip tier) is the bucket an IPv6 /48's addresses share, each
	// /64 still with its IP bucket: one network holds 65,536 /64s, and
	// without it each would bring its own budget. Default: 16 times IP's
	// capacity and rate (sixteen /64s of a site at full speed at once).
	// In mode failures a refused network is blocked until this bucket has
	// guardian.LookupsPerNetwork tokens back (failureBlock): 1.6 s at the
	// default rate, longer at a lower one.
	Network *Bucket `json:"network,omitempty"`
	Key     *Bucket `json:"key,omitempty"`
	Account *Bucket `json:"account,omitempty"`
	// Timeout bounds the Redis round trip before failing open. Default 50ms.
	Timeout caddy.Duration `json:"timeout,omitempty"`
	// Prefix starts every Redis key. Default "guardian:rl:".
	Prefix string `json:"prefix,omitempty"`
	// SpeculateBelow (account tier): a read is passed on while its
	// decision is made, its answer held until then (speculate.go), while
	// at most this many requests of the route are in flight. Only for
	// routes whose GET and HEAD change nothing. Default 0: off.
	SpeculateBelow *int `json:"speculate_below,omitempty"`

	limiter  *Limiter
	poolKey  string
	log      *zap.Logger
	ipLimits []Bucket
	// v6Limits are an IPv6 client's buckets: its /64's, then its /48's.
	v6Limits []Bucket
	acLimits []Bucket
	// ipShape names the ip bucket's shape in its key ("" for the
	// posture's 100/10). Routes of one shape share an address's bucket
	// (sign-in, re-auth and failed key checks draw on one brute-force
	// budget); a route with another shape gets a bucket of its own, so a
	// larger bucket's tokens cannot pay for guesses on the others.
	ipShape string
	// netShape names the network bucket's shape when it is not the
	// default for the route's IP bucket.
	netShape string
	// keyShape is the same for the credential bucket of the account tier
	// ("" for the posture's 1,000/100): a route with a tighter bucket per
	// key or session (re-auth's) must not share the Redis key of the
	// usual one, which would refill it at its own rate.
	keyShape string
	// accountShape is the same for the customer's bucket ("" for the
	// posture's 5,000/500): a route with a tighter one would otherwise cut
	// the customer's whole budget to its size, while the usual routes
	// refilled it at theirs.
	accountShape string
	// spec is the account tier's speculation state; nil when off.
	spec           *speculation
	speculateBelow int64
	// checking bounds the requests per client passed on at once
	// (RefuseBlocked); nil otherwise.
	checking *checking
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.guardian_ratelimit",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision fills in defaults and joins the shared limiter.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.log = ctx.Logger()
	appIface, err := ctx.App("guardian")
	if err != nil {
		return fmt.Errorf("guardian_ratelimit: %w", err)
	}
	rs := appIface.(*guardian.App).Redis()
	if h.Prefix == "" {
		h.Prefix = rs.Prefix
	}
	h.defaults()
	if err := h.Validate(); err != nil {
		return err
	}
	if err := registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return err
	}
	sum := sha256.Sum256([]byte(fmt.Sprintf("%v|%s|%v|%s|%d", rs.Addrs, rs.Password, rs.Cluster, h.Prefix, h.Timeout)))
	h.poolKey = hex.EncodeToString(sum[:])
	v, _, err := limiters.LoadOrNew(h.poolKey, func() (caddy.Destructor, error) {
		return NewLimiter(redis.NewUniversalClient(&redis.UniversalOptions{
			Addrs:         rs.Addrs,
			Password:      rs.Password,
			IsClusterMode: rs.Cluster,
			DialTimeout:   time.Duration(h.Timeout) * 4,
			ReadTimeout:   time.Duration(h.Timeout),
			WriteTimeout:  time.Duration(h.Timeout),
			MaxRetries:    -1, // a retry would be a second round trip
			DialerRetries: 1,
			PoolSize:      64,
		}), h.Prefix, time.Duration(h.Timeout), ctx.Logger().Named("limiter")), nil
	})
	if err != nil {
		return err
	}
	h.init(v.(*Limiter))
	return nil
}

func (h *Handler) defaults() {
	if h.Mode == "" {
		h.Mode = ModeAlways
	}
	if h.IP == nil {
		h.IP = &DefaultIP
	}
	if h.Network == nil && h.Tier != TierAccount {
		n := defaultNetwork(*h.IP)
		h.Network = &n
	}
	if h.Key == nil {
		h.Key = &DefaultKey
	}
	if h.Account == nil {
		h.Account = &DefaultAccount
	}
	if h.Timeout <= 0 {
		h.Timeout = caddy.Duration(50 * time.Millisecond)
	}
	if h.Prefix == "" {
		h.Prefix = defaultPrefix
	}
}

// init finishes setting up h around a limiter.
func (h *Handler) init(l *Limiter) {
	h.defaults()
	h.limiter = l
	h.ipLimits = []Bucket{*h.IP}
	if h.Network != nil {
		h.v6Limits = []Bucket{*h.IP, *h.Network}
		if *h.Network != defaultNetwork(*h.IP) {
			h.netShape = shape(*h.Network)
		}
	}
	h.acLimits = []Bucket{*h.Key, *h.Account}
	if *h.IP != DefaultIP {
		h.ipShape = shape(*h.IP)
	}
	if *h.Key != DefaultKey {
		h.keyShape = shape(*h.Key)
	}
	if *h.Account != DefaultAccount {
		h.accountShape = shape(*h.Account)
	}
	if h.Tier == TierAccount && h.SpeculateBelow != nil && *h.SpeculateBelow > 0 {
		h.spec, h.speculateBelow = newSpeculation(*h.SpeculateBelow), int64(*h.SpeculateBelow)
	}
	if h.log == nil {
		h.log = zap.NewNop()
	}
	if h.Tier == TierIP && h.Mode == ModeFailures && h.RefuseBlocked {
		h.checking = newChecking()
	}
}

// hold takes c's places on a refuse_blocked route (checking): its
// address's, then its network's, both within one checkWait.
func (h *Handler) hold(ctx context.Context, c client) (release func(), ok bool) {
	deadline := time.Now().Add(checkWait)
	releaseIP, ok := h.checking.acquire(ctx, c.ip, guardian.LookupsPerClient, deadline)
	if !ok || c.net == "" {
		return releaseIP, ok
	}
	releaseNet, ok := h.checking.acquire(ctx, c.net, guardian.LookupsPerNetwork, deadline)
	if !ok {
		releaseIP()
		return nil, false
	}
	return func() { releaseNet(); releaseIP() }, true
}

// shape names a bucket's capacity and rate in its Redis key.
func shape(b Bucket) string {
	return strconv.FormatFloat(b.Capacity, 'g', -1, 64) + "/" + strconv.FormatFloat(b.Rate, 'g', -1, 64) + ":"
}

// Validate rejects a config that cannot work, naming the field.
func (h *Handler) Validate() error {
	if h.Tier != TierIP && h.Tier != TierAccount {
		return fmt.Errorf("guardian_ratelimit: tier must be ip or account, got %q", h.Tier)
	}
	if h.Mode != "" && h.Mode != ModeAlways && h.Mode != ModeFailures {
		return fmt.Errorf("guardian_ratelimit: mode must be always or failures, got %q", h.Mode)
	}
	if h.SpeculateBelow != nil && (h.Tier != TierAccount || *h.SpeculateBelow < 0 || *h.SpeculateBelow > 1<<20) {
		return fmt.Errorf("guardian_ratelimit: speculate_below applies to the account tier and must be from 0 to %d", 1<<20)
	}
	if h.RefuseBlocked && (h.Tier != TierIP || h.Mode != ModeFailures) {
		return fmt.Errorf("guardian_ratelimit: refuse_blocked applies to the ip tier in mode failures only")
	}
	for name, b := range map[string]*Bucket{"ip": h.IP, "network": h.Network, "key": h.Key, "account": h.Account} {
		// Written so that NaN fails too. Past these bounds the script's
		// arithmetic breaks: PEXPIRE refuses a non-integer expiry (every
		// decision would fail open), and token counts lose their units.
		if b != nil && !(b.Capacity >= 1 && b.Capacity <= maxCapacity && b.Rate >= minRate && b.Rate <= maxCapacity) {
			return fmt.Errorf("guardian_ratelimit: %s: capacity must be from 1 to %g and rate from %g to %g per second, got %g and %g",
				name, float64(maxCapacity), minRate, float64(maxCapacity), b.Capacity, b.Rate)
		}
	}
	return nil
}

// checkTierSettings refuses settings another tier reads, which would be
// ignored here without a word. It runs on the Caddyfile's settings, before
// Provision fills in every bucket's default.
func (h *Handler) checkTierSettings() error {
	if h.Tier == TierAccount && (h.Mode != "" || h.IP != nil || h.Network != nil) {
		return fmt.Errorf("guardian_ratelimit: mode, ip and network apply to the ip tier; the account tier charges every request to its key and account buckets")
	}
	if h.Tier == TierIP && (h.Key != nil || h.Account != nil) {
		return fmt.Errorf("guardian_ratelimit: key and account apply to the account tier")
	}
	return nil
}

// Cleanup releases this config's hold on the limiter.
func (h *Handler) Cleanup() error {
	if h.poolKey != "" {
		key := h.poolKey
		h.poolKey = "" // once only: a second release would drop another config's hold
		_, err := limiters.Delete(key)
		return err
	}
	return nil
}

// ServeHTTP applies the tier.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if h.Tier == TierAccount {
		id, _ := caddyhttp.GetVar(r.Context(), identity.VarKey).(*identity.Identity)
		if id == nil {
			return next.ServeHTTP(w, r) // anonymous on an optional route
		}
		if h.spec == nil {
			if err := h.answer(w, h.takeAccount(r, id)); err != nil {
				return err
			}
			return next.ServeHTTP(w, r)
		}
		return h.serveAccount(w, r, id, next)
	}

	c := h.client(r)
	if h.Mode == ModeAlways {
		d := h.limiter.Take(r.Context(), h.keys(c), h.limits(c), true)
		if !d.Allowed {
			h.block(c, d, func(Bucket, int) time.Duration { return d.RetryAfter })
		}
		if err := h.answer(w, d); err != nil {
			return err
		}
		err := next.ServeHTTP(w, r)
		why, _ := caddyhttp.GetVar(r.Context(), varFailure).(string)
		if why == reasonIPBlocked {
			// Auth refused to look the credential up (too many lookups
			// from this address at once).
			caddyhttp.SetVar(r.Context(), VarAuditFold, true)
			return h.unchecked(w, c)
		}
		return h.chargeRefused(w, r, why, err)
	}

	// Mode failures: charge only what failed authentication.
	blocked := h.blocked(c)
	if blocked {
		if h.RefuseBlocked {
			return h.unchecked(w, c)
		}
		caddyhttp.SetVar(r.Context(), VarIPBlocked, true)
	}
	if h.checking != nil {
		// Held until this request's failure, if any, is charged below.
		release, ok := h.hold(r.Context(), c)
		if !ok {
			return h.unchecked(w, c)
		}
		defer release()
		if h.blocked(c) { // refused while this one waited
			return h.unchecked(w, c)
		}
	}
	err := next.ServeHTTP(w, r)
	why, _ := caddyhttp.GetVar(r.Context(), varFailure).(string)
	if why == reasonIPBlocked {
		caddyhttp.SetVar(r.Context(), VarAuditFold, true)
		return h.unchecked(w, c)
	}
	if !credentialFailure(why) && !abandoned(r, why) {
		return h.chargeRefused(w, r, why, err)
	}
	if blocked {
		// No credential, from an address already blocked: the row of
		// the failure that blocked it stands for this one.
		caddyhttp.SetVar(r.Context(), VarAuditFold, true)
	}
	// The charge must not depend on the client staying: on the request's
	// context, a client gone by now would be charged to this instance's
	// buckets at most, not to Redis's. The limiter's own deadline bounds
	// the wait.
	d := h.limiter.Take(context.WithoutCancel(r.Context()), h.keys(c), h.limits(c), true)
	if !d.Allowed {
		h.block(c, d, func(b Bucket, lookups int) time.Duration { return failureBlock(b, lookups, d) })
	}
	if err == nil {
		// Answered downstream (a function that checks its own
		// credential): its answer has gone out, so a refusal counts from
		// the address's next request.
		return nil
	}
	if lerr := h.answer(w, d); lerr != nil {
		return lerr
	}
	return err
}

// failureBlock is how long an address (or IPv6 network) refused for a
// failed credential stays blocked: until its bucket b has refilled as
// many tokens as auth looks up at once for it (lookups:
// guardian.LookupsPerClient for an address, LookupsPerNetwork for a /48),
// not just the next one. Failures are charged once their lookup has
// failed, so once a block lapses, that many lookups go ahead before the
// first is charged; with a block of one token's time, an address kept
// that many lookups going every tenth of a second, some fifteen times the
// tier's rate.
func failureBlock(b Bucket, lookups int, d Decision) time.Duration {
	burst := time.Duration(float64(lookups) / b.Rate * float64(time.Second))
	return max(d.RetryAfter, burst)
}

// client is what the ip tier knows of a request's address.
type client struct {
	// ip names the address's bucket (an IPv6 one by its /64), after the
	// route's shape.
	ip string
	// tag is "" for IPv4; for IPv6 it names the address's /48, after the
	// route's shape ("n:" keeps it apart from any ip): the hash tag of
	// both its buckets.
	tag string
	// net names the /48's network bucket in the block list: tag with the
	// network's shape.
	net string
}

// client returns r's client. No allocation for IPv4 in the usual shape.
func (h *Handler) client(r *http.Request) client {
	bucket := clientIP(r)
	c := client{ip: h.ipShape + bucket}
	if h.v6Limits != nil && strings.IndexByte(bucket, ':') >= 0 { // a parse error would allocate
		if p, err := netip.ParsePrefix(bucket); err == nil && p.Addr().Is6() {
			n, _ := p.Addr().Prefix(48)
			c.tag = h.ipShape + "n:" + n.String()
			c.net = c.tag
			if h.netShape != "" {
				c.net += ":s:" + h.netShape
			}
		}
	}
	return c
}

// keys are the Redis keys of c's buckets. An IPv6 client's two share the
// /48's hash tag, so that one script charges both on Redis Cluster. The
// address's key holds no network shape: routes of one IP shape share it,
// whatever their network buckets.
func (h *Handler) keys(c client) []string {
	if c.net == "" {
		return []string{h.limiter.IPKey(c.ip)}
	}
	tagged := h.limiter.IPKey(c.tag)
	return []string{tagged + ":" + c.ip, tagged + c.net[len(c.tag):]}
}

// limits are the shapes of keys(c)'s buckets.
func (h *Handler) limits(c client) []Bucket {
	if c.net == "" {
		return h.ipLimits
	}
	return h.v6Limits
}

// block marks c out of tokens after decision d refused it, for as long as
// span says of each bucket: its address always, its network too when the
// network bucket was the one short.
func (h *Handler) block(c client, d Decision, span func(b Bucket, lookups int) time.Duration) {
	h.limiter.blocked.add(c.ip, span(*h.IP, guardian.LookupsPerClient))
	if c.net != "" && d.short[1] {
		h.limiter.blocked.add(c.net, span(*h.Network, guardian.LookupsPerNetwork))
	}
}

// blocked reports whether this instance knows c, or its network, to be
// out of tokens.
func (h *Handler) blocked(c client) bool {
	return h.limiter.blocked.has(c.ip) || (c.net != "" && h.limiter.blocked.has(c.net))
}

// takeAccount charges id's credential (key, or session) and customer
// buckets, both or neither.
func (h *Handler) takeAccount(r *http.Request, id *identity.Identity) Decision {
	return h.take(r.Context(), h.accountKeys(id))
}

// accountKeys are the Redis keys of id's credential and customer buckets.
func (h *Handler) accountKeys(id *identity.Identity) []string {
	cred := id.KeyID
	if cred == "" {
		cred = id.SessionID
	}
	if h.keyShape != "" {
		cred = h.keyShape + cred // only on routes of another shape: the usual path allocates nothing
	}
	account := h.limiter.AccountKey(id.CustomerID)
	if h.accountShape != "" {
		account += ":s:" + h.accountShape // same hash tag: still one slot with the credential's
	}
	return []string{h.limiter.CredentialKey(id.CustomerID, cred), account}
}

// take decides over accountKeys. A credential bucket of its own shape
// guards a brute-force surface (a password check's): without Redis it
// falls back to per-instance buckets, as the address tier does, instead
// of failing open.
func (h *Handler) take(ctx context.Context, keys []string) Decision {
	return h.limiter.Take(ctx, keys, h.acLimits, h.keyShape != "")
}

// serveAccount is the account tier with speculation on (speculate.go):
// a read whose credential had tokens to spare, while few requests are in
// flight, runs while its decision is made; any other request waits for
// the decision first.
func (h *Handler) serveAccount(w http.ResponseWriter, r *http.Request, id *identity.Identity, next caddyhttp.Handler) error {
	keys := h.accountKeys(id)
	n := h.spec.inFlight.Add(1)
	defer h.spec.inFlight.Add(-1)
	if n > h.speculateBelow || !speculable(r.Method) || !h.spec.plenty(keys[0]) {
		d := h.take(r.Context(), keys)
		h.spec.remember(keys[0], d)
		if err := h.answer(w, d); err != nil {
			return err
		}
		return next.ServeHTTP(w, r)
	}
	decision := make(chan decided, 1)
	ctx := r.Context()
	go h.decideAside(ctx, keys, decision)
	g := &gate{w: w, hdr: http.Header{}, decision: decision, h: h}
	err := g.serve(next, r)
	if d := g.decide(); !d.Allowed {
		speculatedRefused.Inc()
		return h.answer(w, d)
	}
	speculatedAllowed.Inc()
	return err
}

// chargeRefused charges an API key that authentication refused for what
// it asked (scope, kind: err is that refusal) to its key and account
// buckets, as the account tier, which the refusal never reaches, would
// have: a key's calls draw on one budget, refused or not, and once it is
// spent the client is told to slow down (429, Retry-After) rather than
// answered at full speed. A session's refusals are not charged: a page of
// another origin can make the holder's browser send them (the cookie goes
// along on some cross-origin requests), and it must not spend the
// customer's account budget, which its collectors share.
func (h *Handler) chargeRefused(w http.ResponseWriter, r *http.Request, why string, err error) error {
	if err == nil || !credentialRefused(why) {
		return err
	}
	id, _ := caddyhttp.GetVar(r.Context(), identity.VarKey).(*identity.Identity)
	if id == nil || id.KeyID == "" {
		return err
	}
	if lerr := h.answer(w, h.takeAccount(r, id)); lerr != nil {
		return lerr
	}
	return err
}

// credentialRefused reports whether an auth failure reason means a valid
// credential was refused for what it asked (cross_site, a cookie's, is
// never a key's).
func credentialRefused(why string) bool {
	return why == "insufficient_scope" || why == "kind_not_allowed"
}

// unchecked answers a request whose credential auth never checked (an
// uncached one, from an address out of tokens or with too many lookups in
// flight): "slow down", not "invalid credential", which a legitimate
// client behind the same address would take for a bad key.
func (h *Handler) unchecked(w http.ResponseWriter, c client) error {
	// Auth's refusal set its invalid_token challenge already.
	w.Header().Del("Www-Authenticate")
	// Too many lookups in flight need no block: the answer still asks for
	// a second's wait, and RateLimit-Reset says the same as Retry-After
	// (0 would tell the client its quota is back already).
	left := max(h.limiter.blocked.left(c.ip), time.Second)
	if c.net != "" {
		left = max(left, h.limiter.blocked.left(c.net))
	}
	return h.answer(w, Decision{Limit: int(h.IP.Capacity), Reset: left, RetryAfter: left, Source: SourceLocal})
}

// credentialFailure reports whether an auth failure reason means the
// request had no valid credential (as opposed to a valid one refused for
// scope, or the store being down).
func credentialFailure(why string) bool {
	switch why {
	case "", "insufficient_scope", "kind_not_allowed", "cross_site", "store_unavailable":
		return false
	}
	return true
}

// abandoned reports whether auth could not finish checking the request's
// credential because its client went away (store_unavailable, with the
// request's context done). Such a failure is charged: the lookup it
// started runs on, and a client sending made-up keys and closing each
// connection at once would otherwise have them checked for free.
func abandoned(r *http.Request, why string) bool {
	return why == "store_unavailable" && r.Context().Err() != nil
}

// The RateLimit header names in canonical form (http.CanonicalHeaderKey),
// as stored in an http.Header.
const (
	headerLimit     = "Ratelimit-Limit"
	headerRemaining = "Ratelimit-Remaining"
	headerReset     = "Ratelimit-Reset"
)

var tooMany = problem.New(http.StatusTooManyRequests, "rate_limited", "too many requests; retry after the time in Retry-After")

// answer sets the RateLimit headers and, for a refusal, returns the 429.
func (h *Handler) answer(w http.ResponseWriter, d Decision) error {
	if d.Source == SourceOpen {
		return nil // nothing known to report
	}
	hdr := w.Header()
	// A route with two tiers (ip, then account) reports the bucket
	// closest to empty, as one decision over two buckets does; a refusal
	// reports the bucket that refused.
	if prev := hdr[headerRemaining]; d.Allowed && len(prev) == 1 {
		if n, err := strconv.Atoi(prev[0]); err == nil && n <= d.Remaining {
			return nil
		}
	}
	// Every limited request carries the three headers: their values share
	// one string and one slice (two allocations, not six), and the keys
	// are stored in canonical form, which Header.Set would compute each
	// time.
	var buf [60]byte
	b := strconv.AppendInt(buf[:0], int64(d.Limit), 10)
	i := len(b)
	b = strconv.AppendInt(b, int64(d.Remaining), 10)
	j := len(b)
	b = strconv.AppendInt(b, int64(math.Ceil(d.Reset.Seconds())), 10)
	v := string(b)
	vals := []string{v[:i], v[i:j], v[j:]}
	hdr[headerLimit], hdr[headerRemaining], hdr[headerReset] = vals[0:1:1], vals[1:2:2], vals[2:3:3]
	if d.Allowed {
		return nil
	}
	hdr.Set("Retry-After", seconds(max(d.RetryAfter, time.Second)))
	metrics.limited.WithLabelValues(h.Tier).Inc()
	return caddyhttp.HandlerError{Err: tooMany, StatusCode: http.StatusTooManyRequests, ID: "rl", Trace: "guardian_ratelimit"}
}

// clientIP is the per-IP tier's bucket for the request: the address Caddy
// determined (trusting X-Forwarded-For only from the server's
// trusted_proxies), else the connection's peer, as clientip.Bucket counts
// it.
func clientIP(r *http.Request) string {
	if ip := guardian.ClientBucket(r.Context()); ip != "" {
		return ip
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return clientip.Bucket(r.RemoteAddr)
	}
	return clientip.Bucket(host)
}

// blockList remembers, per instance, addresses out of ip-tier tokens.
type blockList struct {
	mu    sync.Mutex
	until map[string]time.Time
}

func newBlockList() *blockList { return &blockList{until: map[string]time.Time{}} }

func (b *blockList) add(ip string, d time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.until) > 100_000 {
		now := time.Now()
		for k, t := range b.until {
			if now.After(t) {
				delete(b.until, k)
			}
		}
	}
	// The later end stands: a refusal on a route that blocks for one
	// token's time (mode always: sign-in) must not cut short a block that
	// waits for a burst of lookups (failureBlock).
	until := time.Now().Add(max(d, 100*time.Millisecond))
	if t, ok := b.until[ip]; !ok || until.After(t) {
		b.until[ip] = until
	}
}

// left is how long ip stays blocked (0 when it is not).
func (b *blockList) left(ip string) time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	return max(time.Until(b.until[ip]), 0)
}

func (b *blockList) has(ip string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	t, ok := b.until[ip]
	if ok && time.Now().After(t) {
		delete(b.until, ip)
		return false
	}
	return ok
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddy.Destructor            = (*Limiter)(nil)
)
