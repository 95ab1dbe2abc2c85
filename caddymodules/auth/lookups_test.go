package auth

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/jackc/pgx/v5"

	"github.com/glassmkr/guardian/shared/apikey"
)

// clientCtx is a Caddy request's context whose client address is ip.
func clientCtx(ip string) context.Context {
	return context.WithValue(context.Background(), caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: ip})
}

// lockedKeys is a world and its authenticator, with the key table locked
// (until tx ends) so that lookups stay in flight.
func lockedKeys(t *testing.T) (*world, *Authenticator, pgx.Tx) {
	t.Helper()
	w := newWorld(t)
	a := w.authenticator(t)
	tx, err := w.pg.Owner.Begin(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	if _, err := tx.Exec(context.Background(), "LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	return w, a, tx
}

// A burst of made-up keys from one address gets maxLookupsPerClient
// lookups at once; the rest are refused unchecked (the limiter's 429)
// without touching PostgreSQL. Another address is not affected. The key
// table is locked so that the lookups stay in flight.
func TestLookupsInFlightAreBoundedPerClient(t *testing.T) {
	t.Parallel()
	w, a, tx := lockedKeys(t)
	ctx := context.Background()
	const burst, sameKey = 40, 5
	var refused sync.WaitGroup
	var all sync.WaitGroup
	results := make(chan error, burst+sameKey+1)
	// First a real key's first requests, all at once: they share one
	// place (a fresh key's first burst is not refused).
	for range sameKey {
		all.Add(1)
		go func() {
			defer all.Done()
			_, err := a.Key(clientCtx("198.51.100.9"), w.read, true)
			results <- err
		}()
	}
	waitFor(t, "the key's requests in flight", func() bool {
		a.lookups.mu.Lock()
		defer a.lookups.mu.Unlock()
		for _, n := range a.lookups.inFlight["198.51.100.9"] {
			return n == sameKey
		}
		return false
	})
	// Then made-up keys: the other 15 places, and the rest refused.
	refused.Add(burst - (maxLookupsPerClient - 1))
	for range burst {
		all.Add(1)
		go func() {
			defer all.Done()
			key, _ := apikey.Generate(apikey.Account)
			_, err := a.Key(clientCtx("198.51.100.9"), key, true)
			if errors.Is(err, ErrNotCached) {
				refused.Done()
			}
			results <- err
		}()
	}
	// The others wait on the lock, holding their lookups.
	waited := make(chan struct{})
	go func() { refused.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(30 * time.Second):
		_ = tx.Rollback(ctx)
		t.Fatalf("not %d of %d lookups refused while the others were in flight", burst-(maxLookupsPerClient-1), burst)
	}
	all.Add(1)
	go func() {
		defer all.Done()
		key, _ := apikey.Generate(apikey.Account)
		_, err := a.Key(clientCtx("203.0.113.9"), key, true)
		results <- err
	}()
	_ = tx.Rollback(ctx)
	all.Wait()
	close(results)
	counts := map[string]int{}
	for err := range results {
		switch {
		case errors.Is(err, ErrNotCached):
			counts["refused"]++
		case errors.Is(err, ErrUnknown):
			counts["looked up"]++
		case err == nil:
			counts["valid"]++
		default:
			counts[err.Error()]++
		}
	}
	if counts["valid"] != sameKey || counts["refused"] != burst-(maxLookupsPerClient-1) || counts["looked up"] != maxLookupsPerClient {
		t.Fatalf("outcomes %v, want %d valid, %d refused and %d looked up (one from another address)",
			counts, sameKey, burst-(maxLookupsPerClient-1), maxLookupsPerClient)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}

// Requests missing the cache for one key at once share one query: a
// burst repeating one made-up key costs one lookup, however large.
func TestConcurrentMissesOfOneKeyShareOneQuery(t *testing.T) {
	t.Parallel()
	w, a, tx := lockedKeys(t)
	ctx := context.Background()
	key, _ := apikey.Generate(apikey.Account)
	const n = 200
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := a.Key(clientCtx("198.51.100.10"), key, true)
			errs <- err
		}()
	}
	// All wait on the one query the lock holds back.
	waitFor(t, "every request to join the lookup", func() bool {
		a.lookups.mu.Lock()
		defer a.lookups.mu.Unlock()
		h := a.hasher.Sum(key)
		return a.lookups.inFlight["198.51.100.10"][string(h[:])] == n
	})
	// The authenticator's role sees its own sessions' queries; the shared
	// one reaches the lock a moment after the requests have joined.
	app := w.pg.App(t)
	queries := func() int {
		var n int
		if err := app.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()
			AND usename = current_user AND wait_event_type = 'Lock' AND query LIKE '%api_keys%'`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	waitFor(t, "the lookup to wait on the lock", func() bool { return queries() > 0 })
	time.Sleep(100 * time.Millisecond) // room for any other query to show
	sent := queries()
	_ = tx.Rollback(ctx)
	wg.Wait()
	close(errs)
	for err := range errs {
		if !errors.Is(err, ErrUnknown) {
			t.Fatalf("a made-up key: %v", err)
		}
	}
	if sent != 1 {
		t.Fatalf("%d queries for %d requests with one key", sent, n)
	}
}

// An IPv6 /48's /64s share maxLookupsPerNetwork lookups at once, each
// /64 still at most maxLookupsPerClient of them; a credential already in
// flight is joined, not counted again, and another /48 (or an IPv4
// address) is not affected. Release gives the place back.
func TestLookupsInFlightAreBoundedPerNetwork(t *testing.T) {
	t.Parallel()
	l := newLookups()
	var releases []func()
	refused := 0
	for sub := range maxLookupsPerNetwork/maxLookupsPerClient + 4 {
		ctx := clientCtx(fmt.Sprintf("2001:db8:7:%x::1", sub))
		for k := range maxLookupsPerClient {
			release, ok := l.acquire(ctx, fmt.Sprintf("cred-%d-%d", sub, k))
			if !ok {
				refused++
				continue
			}
			releases = append(releases, release)
		}
	}
	if len(releases) != maxLookupsPerNetwork || refused != 4*maxLookupsPerClient {
		t.Fatalf("%d lookups in flight and %d refused, want %d and %d", len(releases), refused, maxLookupsPerNetwork, 4*maxLookupsPerClient)
	}
	joined, ok := l.acquire(clientCtx("2001:db8:7:0::2"), "cred-0-0")
	if !ok {
		t.Fatal("a credential in flight was not joined at the network's bound")
	}
	if _, ok := l.acquire(clientCtx("2001:db8:7:ffff::1"), "fresh"); ok {
		t.Fatal("a new /64 of the full network got a lookup")
	}
	for _, ip := range []string{"2001:db8:8::1", "192.0.2.7"} {
		release, ok := l.acquire(clientCtx(ip), "fresh")
		if !ok {
			t.Fatalf("%s was refused for another network's lookups", ip)
		}
		release()
	}
	joined()
	releases[0]()
	if release, ok := l.acquire(clientCtx("2001:db8:7:ffff::1"), "fresh"); !ok {
		t.Fatal("a released place was not given back")
	} else {
		release()
	}
	for _, release := range releases[1:] {
		release()
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.inFlight) != 0 || len(l.networks) != 0 {
		t.Fatalf("left after every release: %v %v", l.inFlight, l.networks)
	}
}
