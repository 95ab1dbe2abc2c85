package auth

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/glassmkr/guardian/shared/testenv"
)

// TestStoreDownTellsAnOutageFromAFailureOfTheEdgesOwn: a stale cached
// credential may serve only while PostgreSQL is away for everyone. When
// it is up for the functions (a full pool on the edge's side, too many
// connections, a refused grant), a revocation may have been committed
// that the edge has not heard of.
func TestStoreDownTellsAnOutageFromAFailureOfTheEdgesOwn(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, refused := pgx.Connect(ctx, fmt.Sprintf("postgres://guardian@127.0.0.1:%d/guardian?connect_timeout=2", testenv.FreePort(t)))
	if refused == nil {
		t.Fatal("connected to a free port")
	}
	for _, tc := range []struct {
		name string
		err  error
		down bool
	}{
		{"connection refused", refused, true},
		{"a certificate refused", fmt.Errorf("connect: %w", &tls.CertificateVerificationError{Err: errors.New("x509: certificate signed by unknown authority")}), false},
		{"connection reset", fmt.Errorf("read: %w", &net.OpError{Op: "read", Err: errors.New("connection reset by peer")}), true},
		{"EOF mid-query", fmt.Errorf("query: %w", io.ErrUnexpectedEOF), true},
		{"shutting down", &pgconn.PgError{Code: "57P01"}, true},
		{"starting up", &pgconn.PgError{Code: "57P03"}, true},
		{"too many connections", &pgconn.PgError{Code: "53300"}, false},
		{"grant refused", &pgconn.PgError{Code: "42501"}, false},
		{"waited for a connection of a full pool", context.DeadlineExceeded, false},
		{"pool closed", errors.New("closed pool"), false},
	} {
		if got := storeDown(tc.err); got != tc.down {
			t.Errorf("%s (%v): storeDown = %v, want %v", tc.name, tc.err, got, tc.down)
		}
	}
}

// A lookup that finds PostgreSQL silent pings every idle connection in
// turn, then dials: all of it must end before the lookup's own deadline,
// or its error is the deadline's, which storeDown cannot tell from a full
// pool's.
func TestASilentLookupFailsBeforeItsDeadline(t *testing.T) {
	if worst := maxConns*pingTimeout + connectTimeout; worst >= lookupTimeout {
		t.Fatalf("%d pings of %s and a dial of %s take %s, not within the lookup's %s", maxConns, pingTimeout, connectTimeout, worst, lookupTimeout)
	}
}

// TestStaleCredentialsServeThroughAnOutage: with PostgreSQL cut off (its
// connections reset, new ones refused), a cached key and session whose
// entries went stale keep working, and the outage is logged; a key never
// seen is refused as unavailable.
func TestStaleCredentialsServeThroughAnOutage(t *testing.T) {
	t.Parallel()
	o := newOutage(t, 0)
	o.cached(t, "before the outage")
	o.proxy.cut()
	o.servesStale(t, "cut")
}

// TestStaleCredentialsServeThroughASilentOutage: when PostgreSQL stops
// answering without closing anything (a hung host, a network dropping
// packets), the listener notices within its check, and a cached key and
// session keep working: the pool's own timeouts fail their lookups with
// errors that say PostgreSQL is away, not with the lookup's deadline. A
// quiet listener meanwhile still hears revocations after its checks.
func TestStaleCredentialsServeThroughASilentOutage(t *testing.T) {
	t.Parallel()
	o := newOutage(t, 100*time.Millisecond)
	doomed := o.w.c.AccountKey(t, "read")
	o.cached(t, "before the outage", bearer("GET", "/", doomed))
	time.Sleep(350 * time.Millisecond) // a few quiet checks
	o.w.c.Revoke(t, doomed)
	waitFor(t, "the revocation after quiet checks", func() bool { return do(t, o.h, bearer("GET", "/", doomed)).status == http.StatusUnauthorized })
	o.proxy.silent.Store(true)
	o.servesStale(t, "silence")
}

// With the default check, a listening connection that goes silent is
// noticed within seconds (DefaultListenerCheck and a ping's timeout), not
// the half-minute it once took, during which every cached entry, revoked
// or not, was trusted.
func TestTheDefaultCheckFindsASilentListenerSoon(t *testing.T) {
	t.Parallel()
	o := newOutage(t, 0)
	o.cached(t, "before the silence")
	start := time.Now()
	o.proxy.silent.Store(true)
	for o.a.Listening() {
		if time.Since(start) > 15*time.Second {
			t.Fatalf("a silent listener went unnoticed for %s", time.Since(start))
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("noticed after %s", time.Since(start))
}

// TestALookupPastItsDeadlineServesStaleAndSaysSo: a lookup that
// PostgreSQL does not answer within lookupTimeout (here, the key table
// locked) serves a stale cached key as an outage does, and says so in the
// log and the metric: lookups run apart from the requests waiting for
// them, so their deadline is never a client that left.
func TestALookupPastItsDeadlineServesStaleAndSaysSo(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	a, h, logs := w.observed(t)
	if got := do(t, h, bearer("GET", "/", w.admin)); got.status != http.StatusOK {
		t.Fatal(got)
	}
	ctx := context.Background()
	tx, err := w.pg.Owner.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, "LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	a.now = func() time.Time { return time.Now().Add(time.Hour) }
	a.listening.Store(false)
	if got := do(t, h, bearer("GET", "/", w.admin)); got.status != http.StatusOK {
		t.Fatalf("a stale key whose lookup found no answer in time: %+v", got)
	}
	if n := logs.FilterMessageSnippet("serving cached credentials").Len(); n != 1 {
		t.Errorf("%d warnings that a stale key was served, want 1", n)
	}
}

// outage is an Authenticator reaching PostgreSQL through a proxy a test
// can cut or silence, and its handler, with the world's credentials.
type outage struct {
	w     *world
	a     *Authenticator
	h     *Handler
	proxy *cutter
	logs  *observer.ObservedLogs
}

// newOutage starts the Authenticator (listenerCheck 0: the default) and
// waits for its listener, whose start empties the caches.
func newOutage(t *testing.T, listenerCheck time.Duration) *outage {
	t.Helper()
	w := newWorld(t)
	u, err := url.Parse(w.pg.AppDSN)
	if err != nil {
		t.Fatal(err)
	}
	proxy := cuttable(t, u.Host)
	u.Host = proxy.addr
	core, logs := observer.New(zap.DebugLevel)
	a, err := NewAuthenticator(Config{DSN: u.String(), Pepper: pepper, SessionSecret: secret, Log: zap.New(core), ListenerCheck: listenerCheck})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	waitFor(t, "the listener", a.Listening)
	return &outage{w: w, a: a, h: handler(a, Handler{}), proxy: proxy, logs: logs}
}

// cached checks that the world's read key and session, and more, are
// admitted (and so cached).
func (o *outage) cached(t *testing.T, when string, more ...*http.Request) {
	t.Helper()
	for _, r := range append([]*http.Request{bearer("GET", "/", o.w.read), withCookie("GET", "/", o.w.token)}, more...) {
		if got := do(t, o.h, r); got.status != http.StatusOK {
			t.Fatalf("%s: %+v", when, got)
		}
	}
}

// servesStale waits for the listener to notice what happened to
// PostgreSQL (entries go stale only then: while it listens, no revocation
// can pass unheard), makes every entry stale, and checks that the cached
// credentials still work, that this is logged, and that a key never seen
// is refused as unavailable.
func (o *outage) servesStale(t *testing.T, what string) {
	t.Helper()
	waitFor(t, "the listener to notice the "+what, func() bool { return !o.a.Listening() })
	if v := testutil.ToFloat64(notifyMetrics.listening); v != 0 {
		t.Errorf("revocation_listener_up %v while a listener is down", v)
	}
	keys0 := testutil.ToFloat64(notifyMetrics.staleServed.WithLabelValues("key"))
	sessions0 := testutil.ToFloat64(notifyMetrics.staleServed.WithLabelValues("session"))
	o.a.now = func() time.Time { return time.Now().Add(time.Hour) }
	o.cached(t, "a cached credential after the "+what)
	if o.logs.FilterMessageSnippet("serving cached credentials").Len() == 0 {
		t.Error("serving stale credentials was not logged")
	}
	if testutil.ToFloat64(notifyMetrics.staleServed.WithLabelValues("key")) <= keys0 ||
		testutil.ToFloat64(notifyMetrics.staleServed.WithLabelValues("session")) <= sessions0 {
		t.Error("stale credentials served were not counted")
	}
	refused0 := testutil.ToFloat64(notifyMetrics.unavailable)
	if got := do(t, o.h, bearer("GET", "/", o.w.write)); got.status != http.StatusServiceUnavailable {
		t.Fatalf("a key never seen, after the %s: %+v", what, got)
	}
	if testutil.ToFloat64(notifyMetrics.unavailable) <= refused0 {
		t.Error("the refusal of an uncached key while the store is away was not counted")
	}
}

// cutter forwards TCP connections to a PostgreSQL until cut, when it
// resets them and refuses new ones, or silenced, when it keeps every
// connection open and accepts new ones but carries nothing either way
// (a hung host, a network dropping packets).
type cutter struct {
	addr   string
	ln     net.Listener
	silent atomic.Bool
	mu     sync.Mutex
	conns  []net.Conn
}

func cuttable(t *testing.T, target string) *cutter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &cutter{addr: ln.Addr().String(), ln: ln}
	t.Cleanup(c.cut)
	go func() {
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			c.mu.Lock()
			c.conns = append(c.conns, in)
			c.mu.Unlock()
			if c.silent.Load() {
				continue // held open, never answered
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			c.mu.Lock()
			c.conns = append(c.conns, out)
			c.mu.Unlock()
			go c.pipe(out, in)
			go c.pipe(in, out)
		}
	}()
	return c
}

// pipe copies from src to dst until either ends, dropping what it reads
// once the cutter is silenced.
func (c *cutter) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !c.silent.Load() {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			dst.Close()
			return
		}
	}
}

func (c *cutter) cut() {
	c.ln.Close()
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, conn := range c.conns {
		if tc, ok := conn.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // a reset, as a crashed server's host sends
		}
		conn.Close()
	}
	c.conns = nil
}
