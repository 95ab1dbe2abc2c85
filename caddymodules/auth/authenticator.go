package auth

import (
	"context"
	"crypto/hmac"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"
	"golang.org/x/sync/singleflight"

	"github.com/glassmkr/guardian/shared/apikey"
	"github.com/glassmkr/guardian/shared/identity"
	"github.com/glassmkr/guardian/shared/logevery"
	"github.com/glassmkr/guardian/shared/pgdsn"
	"github.com/glassmkr/guardian/shared/session"
)

// Reasons a credential is refused. Clients see one answer for all of them
// (401 invalid_credentials); logs and the audit log see the reason.
var (
	ErrMalformed   = errors.New("malformed credential")
	ErrUnknown     = errors.New("unknown key")
	ErrRevoked     = errors.New("revoked credential")
	ErrExpired     = errors.New("expired session")
	ErrBadToken    = errors.New("invalid session token")
	ErrUnavailable = errors.New("credential store unavailable")
	// ErrNotCached: the caller forbade a lookup and the cache had nothing.
	ErrNotCached = errors.New("credential not cached and lookups refused")
)

// staleAfter is how old a cache entry may be while the notification
// listener is down: revocations then reach this instance by re-reading.
const staleAfter = time.Second

// maxEntries bounds the key and session caches and maxTokens the token
// cache; when one is full, an arbitrary half is dropped.
const (
	maxEntries = 100_000
	maxTokens  = 20_000
)

// Authenticator checks keys and sessions against PostgreSQL, caching what
// it learns. Every instance LISTENs for revocations (see migration 0004)
// and drops affected entries at once; while that listener is down,
// entries older than staleAfter are re-read, and if PostgreSQL itself is
// down a cached entry is still served: no revocation can commit then.
type Authenticator struct {
	db     *pgxpool.Pool
	dsn    string
	hasher *apikey.Hasher
	secret []byte
	log    *zap.Logger
	now    func() time.Time

	mu       sync.RWMutex
	keys     map[[32]byte]*keyEntry
	sessions map[string]*sessionEntry
	// tokens caches verified session tokens (signature and claims), so a
	// warm session costs a map lookup, not a JWT verification.
	tokens map[string]*session.Claims
	// gen counts the notifications and clears applied to the caches. A
	// lookup caches its row only if no notification naming its credential
	// (or a session's user), and no clear, was applied since it began: a
	// row read before a revocation committed, whose notification was
	// applied while the query was in flight, would otherwise be cached
	// after the drop and trusted for as long as the listener stays up.
	// notices[g%noticeLogSize] is what made generation g (movedFor).
	gen     uint64
	notices [noticeLogSize]notice
	// byUser lists the cached sessions of each user, so that a user's
	// notification drops them without a scan of every session under the
	// write lock (any role that can connect may send notifications).
	byUser map[string][]string

	listening     atomic.Bool
	listenerCheck time.Duration // Config.ListenerCheck
	// One line per interval, not one per request or notification: the
	// "serving from cache" warning, malformed notifications, and
	// credentials refused because the store could not be reached.
	staleLog, badNoticeLog, unavailableLog logevery.Gate
	touch                                  *toucher
	lookups                                *lookups
	keyFlight                              singleflight.Group // key lookups in flight, by hash
	sessFlight                             singleflight.Group // session lookups in flight, by id
	cancel                                 context.CancelFunc
	done                                   chan struct{}
}

type keyEntry struct {
	id identity.Identity
	// endsAt is when the key stops working: its revocation (which may lie
	// ahead, in a rotation's grace window) or its expiry, on the edge's
	// clock (endOnEdge); zero if never.
	endsAt  time.Time
	fetched time.Time
}

type sessionEntry struct {
	id      identity.Identity
	revoked bool
	expires time.Time
	fetched time.Time
}

// Config configures NewAuthenticator.
type Config struct {
	DSN           string // runtime role
	Pepper        []byte
	SessionSecret []byte
	// TouchInterval is how often last-used times are written. Default 10s.
	TouchInterval time.Duration
	// ListenerCheck is how long the revocation listener waits in silence
	// before it pings its connection. Default DefaultListenerCheck.
	ListenerCheck time.Duration
	Log           *zap.Logger
}

// Timeouts of the pool's own dials and of its check of an idle connection,
// so that a PostgreSQL that stops answering (a hung host, a silent
// network) fails a lookup with an error that says so (storeDown), not
// with the lookup's own deadline, which looks the same as a wait for a
// connection of a full pool. An acquire pings its idle connections one
// after another, so all of them pinged in vain and a dial must still end
// within lookupTimeout: 8 x 250 ms + 2 s = 4 s. (A ping on a working
// connection takes well under a millisecond on one host.)
const (
	maxConns       = 8
	connectTimeout = 2 * time.Second
	pingTimeout    = 250 * time.Millisecond
)

// NewAuthenticator connects lazily to PostgreSQL and starts the
// revocation listener and the last-used writer; Close stops them.
func NewAuthenticator(cfg Config) (*Authenticator, error) {
	pcfg, err := pgdsn.Pool("auth: the PostgreSQL DSN", cfg.DSN)
	if err != nil {
		return nil, err
	}
	pcfg.MaxConns = maxConns
	if pcfg.ConnConfig.ConnectTimeout == 0 || pcfg.ConnConfig.ConnectTimeout > connectTimeout {
		pcfg.ConnConfig.ConnectTimeout = connectTimeout
	}
	pcfg.PingTimeout = pingTimeout
	pool, err := pgxpool.NewWithConfig(context.Background(), pcfg)
	if err != nil {
		return nil, fmt.Errorf("auth: %w", err)
	}
	if cfg.TouchInterval <= 0 {
		cfg.TouchInterval = 10 * time.Second
	}
	if cfg.ListenerCheck <= 0 {
		cfg.ListenerCheck = DefaultListenerCheck
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	ctx, cancel := context.WithCancel(context.Background())
	a := &Authenticator{
		db: pool, dsn: cfg.DSN, hasher: apikey.NewHasher(cfg.Pepper), secret: cfg.SessionSecret, log: cfg.Log, now: time.Now,
		keys: map[[32]byte]*keyEntry{}, sessions: map[string]*sessionEntry{}, byUser: map[string][]string{}, tokens: map[string]*session.Claims{},
		cancel: cancel, done: make(chan struct{}), lookups: newLookups(), listenerCheck: cfg.ListenerCheck,
	}
	a.touch = newToucher(pool, cfg.TouchInterval, cfg.Log)
	liveAuthenticators.Lock()
	liveAuthenticators.set[a] = struct{}{}
	liveAuthenticators.Unlock()
	go a.listen(ctx)
	go a.touch.run(ctx)
	return a, nil
}

// Close stops the listener, writes pending last-used times and closes the
// pool.
func (a *Authenticator) Close() error {
	liveAuthenticators.Lock()
	delete(liveAuthenticators.set, a)
	liveAuthenticators.Unlock()
	a.cancel()
	<-a.done
	// After the periodic flush has returned: one that the cancel cut short
	// puts its times back, and they must be in this last flush.
	<-a.touch.stopped
	a.touch.flush(context.Background())
	a.db.Close()
	return nil
}

// Destruct implements caddy.Destructor.
func (a *Authenticator) Destruct() error { return a.Close() }

// Listening reports whether revocation notifications are flowing.
func (a *Authenticator) Listening() bool { return a.listening.Load() }

func (a *Authenticator) fresh(fetched time.Time) bool {
	return a.listening.Load() || a.now().Sub(fetched) < staleAfter
}

// keyQuery reads a key's row and, on PostgreSQL's clock (the one its
// revoked_at and expires_at were written with), whether the key has ended
// and how many seconds it has left (both NULL if it never ends; seconds
// by epoch, as an infinite end cannot be subtracted).
const keyQuery = `SELECT k.id, k.customer_id, k.kind, coalesce(k.scope, ''), coalesce(k.server_id::text, ''), k.key_hash,
	least(k.revoked_at, k.expires_at) <= now(),
	(extract(epoch FROM least(k.revoked_at, k.expires_at)) - extract(epoch FROM now()))::float8
FROM api_keys k WHERE k.key_hash = $1`

// Key authenticates an API key. Malformed keys are refused without I/O;
// with lookup false, so is any key not already cached.
func (a *Authenticator) Key(ctx context.Context, raw string, lookup bool) (*identity.Identity, error) {
	p, err := apikey.Parse(raw)
	if err != nil {
		return nil, ErrMalformed // the parser's reason is not worth an allocation
	}
	h := a.hasher.Sum(raw)
	a.mu.RLock()
	e, gen := a.keys[h], a.gen
	a.mu.RUnlock()
	if e != nil && a.fresh(e.fetched) {
		return a.keyResult(e)
	}
	if !lookup {
		return nil, ErrNotCached
	}
	return a.keyMiss(ctx, h, p.Kind, e, gen)
}

// keyMiss looks a key up that the cache did not hold fresh. Requests
// missing the cache for one key at once share one query, unless a
// revocation was applied between their arrivals (flightKey). (Apart from Key
// so that the closure's captures do not move Key's variables to the heap
// on the cache-hit path.)
func (a *Authenticator) keyMiss(ctx context.Context, h [32]byte, kind apikey.Kind, e *keyEntry, gen uint64) (*identity.Identity, error) {
	if err := ctx.Err(); err != nil { // the client went away
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	cred := string(h[:])
	release, ok := a.lookups.acquire(ctx, cred)
	if !ok {
		return nil, ErrNotCached
	}
	v, err := shared(ctx, &a.keyFlight, flightKey(cred, gen), release, func(qctx context.Context) (any, error) {
		return a.lookupKey(qctx, h, kind, e, gen)
	})
	if err != nil {
		return nil, err
	}
	return a.keyResult(v.(*keyEntry))
}

// flightKey names the shared lookup of cred for requests that saw the
// caches at gen. A request that arrives after a revocation was applied
// (gen moved) must not join a lookup that may have read the row before
// the revocation committed: it would be admitted with that row.
func flightKey(cred string, gen uint64) string {
	return cred + ":" + strconv.FormatUint(gen, 10)
}

// lookupTimeout bounds a lookup that requests share: one request going
// away must not cut it short for the others.
const lookupTimeout = 5 * time.Second

// shared runs fn once for all callers asking for key at the same time, on
// a context of its own (bounded by lookupTimeout); each caller stops
// waiting when its own ctx ends. release (the caller's lookup place,
// lookups.acquire) is called when the query ends, not when the caller
// stops waiting: a client that sends made-up keys and goes away at once
// would otherwise keep any number of queries running, past
// maxLookupsPerClient.
func shared(ctx context.Context, g *singleflight.Group, key string, release func(), fn func(context.Context) (any, error)) (any, error) {
	ch := g.DoChan(key, func() (any, error) {
		qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), lookupTimeout)
		defer cancel()
		return fn(qctx)
	})
	select {
	case r := <-ch:
		release()
		return r.Val, r.Err
	case <-ctx.Done():
		go func() { // ends within lookupTimeout, with the query
			<-ch
			release()
		}()
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, ctx.Err())
	}
}

// lookupKey reads a key's row and caches it (unless the caches moved on
// from gen meanwhile). With the store down, a stale entry e is served.
func (a *Authenticator) lookupKey(ctx context.Context, h [32]byte, kind apikey.Kind, e *keyEntry, gen uint64) (*keyEntry, error) {
	var (
		id            identity.Identity
		rowKind       string
		scope         string
		stored        []byte
		ended         *bool
		left          *float64
		keyID, custID string
	)
	hb := h[:]
	began := a.now()
	err := a.db.QueryRow(ctx, keyQuery, hb).Scan(&keyID, &custID, &rowKind, &scope, &id.ServerID, &stored, &ended, &left)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return nil, ErrUnknown
	case err != nil:
		if e != nil && storeDown(err) {
			// Stale, but the store is down: nothing can have been revoked.
			a.warnStale("key", err)
			return e, nil
		}
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	// The index matched on the hash; compare once more in constant time.
	if !hmac.Equal(stored, hb) || rowKind != kind.String() {
		return nil, ErrUnknown
	}
	id.KeyID, id.CustomerID, id.Scope = keyID, custID, scope
	if rowKind == "collector" {
		id.Kind = identity.KindCollector
	} else {
		id.Kind = identity.KindAccount
	}
	e = &keyEntry{id: id, fetched: a.now()}
	if ended != nil && left != nil {
		e.endsAt = endOnEdge(began, *ended, *left)
	}
	a.mu.Lock()
	// Else this request gets the row, the cache does not.
	if !a.movedFor(gen, func(n notice) bool { return n.kind == 'k' && n.key == h }) {
		if len(a.keys) >= maxEntries {
			shrink(a.keys)
		}
		a.keys[h] = e
	}
	a.mu.Unlock()
	return e, nil
}

// noticeLogSize is how many generations back movedFor can tell what
// moved them: a lookup that began further back is not cached. A
// notification takes microseconds to apply and a lookup about a
// millisecond, so even a flood of made-up notifications leaves lookups
// cached.
const noticeLogSize = 1024

// movedFor reports whether, since generation gen, a notification that
// named matches, or a clear, was applied (a.mu held). Notifications about
// other credentials do not stop a lookup's row from being cached: any
// role that can connect may send them, and with one global generation a
// steady trickle of made-up ones kept every lookup from being cached.
func (a *Authenticator) movedFor(gen uint64, named func(notice) bool) bool {
	if a.gen-gen >= noticeLogSize {
		return true
	}
	for g := gen + 1; g <= a.gen; g++ {
		if n := a.notices[g%noticeLogSize]; n.kind == 'x' || named(n) {
			return true
		}
	}
	return false
}

// moved records what made the next generation (a.mu held).
func (a *Authenticator) moved(n notice) {
	a.gen++
	a.notices[a.gen%noticeLogSize] = n
}

// sessionMiss looks a session up that the cache did not hold fresh, as
// keyMiss does a key.
func (a *Authenticator) sessionMiss(ctx context.Context, sid string, e *sessionEntry, gen uint64, now time.Time) (*sessionEntry, error) {
	if err := ctx.Err(); err != nil { // the client went away
		return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	release, ok := a.lookups.acquire(ctx, sid)
	if !ok {
		return nil, ErrNotCached
	}
	v, err := shared(ctx, &a.sessFlight, flightKey(sid, gen), release, func(qctx context.Context) (any, error) {
		var userID, custID, role string
		var expires time.Time
		var revoked bool
		err := a.db.QueryRow(qctx, sessionQuery, sid).Scan(&userID, &custID, &expires, &revoked, &role)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
			return nil, ErrRevoked
		case err != nil && (e == nil || !storeDown(err)):
			return nil, fmt.Errorf("%w: %w", ErrUnavailable, err)
		case err != nil:
			a.warnStale("session", err)
			return e, nil
		}
		scope := "write"
		if role == "admin" {
			scope = "admin"
		}
		fresh := &sessionEntry{
			id:      identity.Identity{Kind: identity.KindSession, CustomerID: custID, UserID: userID, SessionID: sid, Scope: scope},
			revoked: revoked, expires: expires, fetched: now,
		}
		a.mu.Lock()
		if !a.movedFor(gen, func(n notice) bool { // as in lookupKey
			return n.kind == 's' && n.id == sid || n.kind == 'u' && n.id == userID
		}) {
			if len(a.sessions) >= maxEntries {
				shrink(a.sessions)
				a.indexUsers()
			}
			if _, known := a.sessions[sid]; !known {
				a.byUser[userID] = append(a.byUser[userID], sid)
			}
			a.sessions[sid] = fresh
		}
		a.mu.Unlock()
		return fresh, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*sessionEntry), nil
}

// staleWarnEvery bounds how often an outage's "serving from cache"
// warning is repeated.
const staleWarnEvery = 30 * time.Second

// storeDown reports whether a lookup's error means PostgreSQL itself is
// away (refused, reset, silent, or saying it is shutting down or starting
// up), so that no one can have revoked anything meanwhile and a stale
// cached entry may serve. Errors that leave PostgreSQL up for others do
// not: a full pool on the edge's side (a plain context error from the
// wait for a connection), "too many connections", or a refusal of the
// edge's role, while the functions on their own connections may still
// commit a revocation the edge has not heard of.
func storeDown(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		// 57P: operator intervention (shutting down, starting up); 08:
		// connection exception.
		return strings.HasPrefix(pgErr.Code, "57P") || strings.HasPrefix(pgErr.Code, "08")
	}
	if pgconn.Timeout(err) {
		return true // sent, or connecting, and no answer in time
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return false // the wait for one of the pool's connections
	}
	// A failure to connect counts by its cause: the network's (refused,
	// unreachable, no such host), not one that leaves PostgreSQL up for
	// others (a certificate refused).
	var netErr net.Error
	return errors.As(err, &netErr) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.ECONNREFUSED)
}

// warnStale logs, at most once per staleWarnEvery, that credentials are
// being served from the cache because the store is unreachable: during an
// outage every request would otherwise add a line. It is counted however
// the lookup failed, its own deadline included: lookups run apart from
// the requests waiting for them (shared), so no client's leaving ends one.
func (a *Authenticator) warnStale(kind string, err error) {
	notifyMetrics.staleServed.WithLabelValues(kind).Inc()
	if n, ok := a.staleLog.Allow(time.Now(), staleWarnEvery); ok {
		a.log.Warn("credential store unreachable; serving cached credentials (logged once per 30 s)", zap.String("kind", kind),
			zap.Int64("served", n), zap.Error(err))
	}
}

// WarnUnavailable counts a refusal (store_unavailable_refusals_total) and
// logs, at most once per staleWarnEvery and with the
// number of refusals since, that a credential was refused because the
// store could not be reached: during an outage every request with an
// uncached credential would otherwise add an error line.
func (a *Authenticator) WarnUnavailable(err error) {
	notifyMetrics.unavailable.Inc()
	if n, ok := a.unavailableLog.Allow(time.Now(), staleWarnEvery); ok {
		a.log.Error("credential store unavailable; credentials not in the cache are refused (logged once per 30 s)",
			zap.Int64("refused", n), zap.Error(err))
	}
}

// endOnEdge is when a key ends on the edge's clock, given what PostgreSQL
// said on its own (ended, or left seconds to go) and began, the edge's
// time before it asked: early by the query's duration at most, never late
// by however far the edge's clock is behind PostgreSQL's. Zero (never)
// for an end too far ahead to count in a time.Duration, infinity too.
func endOnEdge(began time.Time, ended bool, left float64) time.Time {
	switch {
	case ended || !(left > 0): // NaN too
		return began
	case left >= float64(math.MaxInt64)/float64(time.Second):
		return time.Time{}
	}
	return began.Add(time.Duration(left * float64(time.Second)))
}

func (a *Authenticator) keyResult(e *keyEntry) (*identity.Identity, error) {
	if !e.endsAt.IsZero() && !a.now().Before(e.endsAt) {
		return nil, ErrRevoked
	}
	a.touch.key(e.id.KeyID, a.now())
	// The cached identity itself: never written after it is cached (a
	// changed key is a new entry), and read-only for every module after
	// auth (identity.VarKey), so no copy per request.
	return &e.id, nil
}

const sessionQuery = `SELECT s.user_id, s.customer_id, s.expires_at, s.revoked_at IS NOT NULL, u.role
FROM sessions s JOIN users u ON u.id = s.user_id WHERE s.id = $1`

// Session authenticates a session token; with lookup false, only from
// the cache.
func (a *Authenticator) Session(ctx context.Context, token string, lookup bool) (*identity.Identity, error) {
	now := a.now()
	a.mu.RLock()
	c := a.tokens[token]
	a.mu.RUnlock()
	if c == nil && !lookup {
		return nil, ErrNotCached
	}
	if c == nil {
		var err error
		if c, err = session.Verify(a.secret, token, now); err != nil {
			return nil, fmt.Errorf("%w: %w", ErrBadToken, err)
		}
		a.mu.Lock()
		if len(a.tokens) >= maxTokens {
			shrink(a.tokens)
		}
		a.tokens[token] = c
		a.mu.Unlock()
	} else if !c.ValidAt(now) {
		return nil, ErrExpired
	}
	sid := c.SessionID()
	a.mu.RLock()
	e, gen := a.sessions[sid], a.gen
	a.mu.RUnlock()
	if (e == nil || !a.fresh(e.fetched)) && !lookup {
		return nil, ErrNotCached
	}
	if e == nil || !a.fresh(e.fetched) {
		var err error
		if e, err = a.sessionMiss(ctx, sid, e, gen, now); err != nil {
			return nil, err
		}
	}
	// The token and its row must agree: a token for another user's
	// session, or a session moved between customers, is refused.
	if e.id.UserID != c.UserID() || e.id.CustomerID != c.CustomerID {
		return nil, ErrRevoked
	}
	if e.revoked {
		return nil, ErrRevoked
	}
	if !now.Before(e.expires) {
		return nil, ErrExpired
	}
	a.touch.session(sid, now)
	return &e.id, nil // read-only, as in keyResult
}

// drop applies one parsed notification (parseNotice) to the caches.
func (a *Authenticator) drop(n notice) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.moved(n)
	switch n.kind {
	case 'k':
		delete(a.keys, n.key)
	case 's':
		if e, ok := a.sessions[n.id]; ok {
			delete(a.sessions, n.id)
			sids := slices.DeleteFunc(a.byUser[e.id.UserID], func(sid string) bool { return sid == n.id })
			if len(sids) == 0 {
				delete(a.byUser, e.id.UserID)
			} else {
				a.byUser[e.id.UserID] = sids
			}
		}
	case 'u':
		for _, sid := range a.byUser[n.id] {
			delete(a.sessions, sid)
		}
		delete(a.byUser, n.id)
	}
}

// indexUsers rebuilds byUser from the sessions cached (a.mu held), after
// shrink dropped some.
func (a *Authenticator) indexUsers() {
	clear(a.byUser)
	for sid, e := range a.sessions {
		a.byUser[e.id.UserID] = append(a.byUser[e.id.UserID], sid)
	}
}

// clear empties both caches: after a gap in notifications nothing cached
// can be trusted.
func (a *Authenticator) clear() {
	a.mu.Lock()
	a.moved(notice{kind: 'x'}) // every credential
	clear(a.keys)
	clear(a.sessions)
	clear(a.byUser)
	a.mu.Unlock() // verified tokens stay: their rows are re-read
}

// listen keeps a LISTEN connection open, reconnecting with backoff.
func (a *Authenticator) listen(ctx context.Context) {
	defer close(a.done)
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := a.listenOnce(ctx)
		a.listening.Store(false)
		if ctx.Err() != nil {
			return
		}
		a.log.Warn("auth revocation listener down; caching at most 1 s until it is back", zap.Error(err), zap.Duration("retry_in", backoff))
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

// A listening connection that has gone silent (a NAT or firewall that
// forgot it, a hung host) is noticed within DefaultListenerCheck plus
// listenerPingTimeout; until then every cached entry is trusted, revoked
// or not. A ping every two seconds costs PostgreSQL nothing; one slower
// than listenerPingTimeout restarts the listener, which drops the caches
// (their entries are read again), nothing worse.
const (
	// DefaultListenerCheck is Config.ListenerCheck's default.
	DefaultListenerCheck = 2 * time.Second
	listenerPingTimeout  = 2 * time.Second
)

func (a *Authenticator) listenOnce(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	conn, err := pgx.Connect(cctx, a.dsn)
	cancel()
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, "LISTEN guardian_auth"); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	// Anything revoked while we were not listening is unknown: start over.
	a.clear()
	a.listening.Store(true)
	a.log.Info("auth revocation listener up")
	for {
		wctx, cancel := context.WithTimeout(ctx, a.listenerCheck)
		n, err := conn.WaitForNotification(wctx)
		cancel()
		if err != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
			// Quiet for a while: a connection to a PostgreSQL that has
			// gone silent (a hung host, a dropped network) would wait
			// forever, and the caches would be trusted all along.
			pctx, cancel := context.WithTimeout(ctx, listenerPingTimeout)
			err = conn.Ping(pctx)
			cancel()
			if err == nil {
				continue
			}
			return fmt.Errorf("check of the listening connection: %w", err)
		}
		if err != nil {
			return err
		}
		a.apply(n.Payload)
	}
}

// shrink drops about half of m's entries (map order is random enough).
func shrink[K comparable, V any](m map[K]V) {
	i := 0
	for k := range m {
		if i%2 == 0 {
			delete(m, k)
		}
		i++
	}
}
