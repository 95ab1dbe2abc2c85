package auth

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestAbandonedLookupsKeepTheirPlaces: a client that sends made-up keys
// and goes away at once cannot have more than maxLookupsPerClient of them
// looked up: the query goes on without it, so its place stays taken until
// the query ends, not until the client leaves. The key table is locked so
// that the queries stay in flight.
func TestAbandonedLookupsKeepTheirPlaces(t *testing.T) {
	t.Parallel()
	_, a, tx := lockedKeys(t)
	const ip = "198.51.100.31"
	for i := range maxLookupsPerClient {
		key := mustGenerate(t)
		h := a.hasher.Sum(key)
		ctx, cancel := context.WithCancel(clientCtx(ip))
		done := make(chan error, 1)
		go func() {
			_, err := a.Key(ctx, key, true)
			done <- err
		}()
		waitFor(t, "the lookup in flight", func() bool {
			a.lookups.mu.Lock()
			defer a.lookups.mu.Unlock()
			return a.lookups.inFlight[ip][string(h[:])] > 0
		})
		cancel()
		if err := <-done; !errors.Is(err, ErrUnavailable) {
			t.Fatalf("abandoned lookup %d: %v", i, err)
		}
	}
	// Every client has gone; every query still waits on the lock.
	ctx, cancel := context.WithTimeout(clientCtx(ip), time.Second)
	defer cancel()
	if _, err := a.Key(ctx, mustGenerate(t), true); !errors.Is(err, ErrNotCached) {
		t.Fatalf("one more made-up key after %d abandoned lookups: %v, want refused unchecked", maxLookupsPerClient, err)
	}
	// Once the queries end, the places are free again.
	_ = tx.Rollback(context.Background())
	waitFor(t, "the places to be released", func() bool {
		a.lookups.mu.Lock()
		defer a.lookups.mu.Unlock()
		return len(a.lookups.inFlight[ip]) == 0
	})
	if _, err := a.Key(clientCtx(ip), mustGenerate(t), true); !errors.Is(err, ErrUnknown) {
		t.Fatalf("a made-up key once the queries ended: %v", err)
	}
}
