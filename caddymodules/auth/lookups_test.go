package auth

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	"github.com/glassmkr/guardian/shared/apikey"
)

// clientCtx is a Caddy request's context whose client address is ip.
func clientCtx(ip string) context.Context {
	return context.WithValue(context.Background(), caddyhttp.VarsCtxKey, map[string]any{caddyhttp.ClientIPVarKey: ip})
}

// A burst of made-up keys from one address gets maxLookupsPerClient
// lookups at once; the rest are refused unchecked (the limiter's 429)
// without touching PostgreSQL. Another address is not affected. The key
// table is locked so that the lookups stay in flight.
func TestLookupsInFlightAreBoundedPerClient(t *testing.T) {
	t.Parallel()
	w := newWorld(t)
	a := w.authenticator(t)
	ctx := context.Background()
	tx, err := w.pg.Owner.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	const burst = 40
	var refused sync.WaitGroup
	var all sync.WaitGroup
	results := make(chan error, burst+1)
	refused.Add(burst - maxLookupsPerClient)
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
		t.Fatalf("not %d of %d lookups refused while the others were in flight", burst-maxLookupsPerClient, burst)
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
		default:
			counts[err.Error()]++
		}
	}
	if counts["refused"] != burst-maxLookupsPerClient || counts["looked up"] != maxLookupsPerClient+1 {
		t.Fatalf("outcomes %v, want %d refused and %d looked up (one from another address)", counts, burst-maxLookupsPerClient, maxLookupsPerClient+1)
	}
}
