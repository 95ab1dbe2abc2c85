package auth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
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

// TestStaleCredentialsServeThroughAnOutage: with PostgreSQL cut off (its
// connections reset, new ones refused), a cached key and session whose
// entries went stale keep working, and the outage is logged; a key never
// seen is refused as unavailable.
func TestStaleCredentialsServeThroughAnOutage(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	u, err := url.Parse(w.pg.AppDSN)
	if err != nil {
		t.Fatal(err)
	}
	cut := cuttable(t, u.Host)
	u.Host = cut.addr
	core, logs := observer.New(zap.DebugLevel)
	a, err := NewAuthenticator(Config{DSN: u.String(), Pepper: pepper, SessionSecret: secret, Log: zap.New(core)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = a.Close() })
	for deadline := time.Now().Add(10 * time.Second); !a.Listening(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("listener never came up") // (its start empties the caches)
		}
	}
	h := handler(a, Handler{})
	for _, r := range []*http.Request{bearer("GET", "/", w.read), withCookie("GET", "/", w.token)} {
		if got := do(t, h, r); got.status != http.StatusOK {
			t.Fatalf("before the outage: %+v", got)
		}
	}
	cut.cut()
	// Entries go stale only once the listener has lost its connection
	// too (while it listens, no revocation can pass unheard).
	for deadline := time.Now().Add(10 * time.Second); a.Listening(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the listener never noticed the cut")
		}
	}
	a.now = func() time.Time { return time.Now().Add(time.Hour) } // every entry stale
	for _, r := range []*http.Request{bearer("GET", "/", w.read), withCookie("GET", "/", w.token)} {
		if got := do(t, h, r); got.status != http.StatusOK {
			t.Fatalf("a cached credential during the outage: %+v", got)
		}
	}
	if logs.FilterMessageSnippet("serving cached credentials").Len() == 0 {
		t.Error("serving stale credentials was not logged")
	}
	if got := do(t, h, bearer("GET", "/", w.write)); got.status != http.StatusServiceUnavailable {
		t.Fatalf("a key never seen, PostgreSQL away: %+v", got)
	}
}

// cutter forwards TCP connections to a PostgreSQL until cut, when it
// resets them and refuses new ones.
type cutter struct {
	addr  string
	ln    net.Listener
	mu    sync.Mutex
	conns []net.Conn
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
			out, err := net.Dial("tcp", target)
			if err != nil {
				in.Close()
				continue
			}
			c.mu.Lock()
			c.conns = append(c.conns, in, out)
			c.mu.Unlock()
			go func() { _, _ = io.Copy(out, in); out.Close() }()
			go func() { _, _ = io.Copy(in, out); in.Close() }()
		}
	}()
	return c
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
