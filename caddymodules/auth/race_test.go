package auth

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// gate holds a credential lookup after its query has returned, so that a
// test can commit a revocation while the lookup is in flight.
type gate struct {
	armed   atomic.Bool
	held    chan struct{} // receives when a lookup is held
	release chan struct{}
}

func (g *gate) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	return ctx
}

func (g *gate) TraceQueryEnd(_ context.Context, _ *pgx.Conn, _ pgx.TraceQueryEndData) {
	if g.armed.CompareAndSwap(true, false) {
		g.held <- struct{}{}
		<-g.release
	}
}

// gatedPool swaps the authenticator's pool for one whose next query,
// once armed, waits after returning until released.
func gatedPool(t *testing.T, w *world, a *Authenticator) *gate {
	t.Helper()
	cfg, err := pgxpool.ParseConfig(w.pg.AppDSN)
	if err != nil {
		t.Fatal(err)
	}
	g := &gate{held: make(chan struct{}, 1), release: make(chan struct{})}
	cfg.ConnConfig.Tracer = g
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	old := a.db
	a.db = pool
	t.Cleanup(old.Close) // a.Close closes the gated one
	return g
}

// notified waits until a notification on guardian_auth has been sent,
// seen by a listener of the test's own, and then a moment more for the
// authenticator's listener to apply it.
func notified(t *testing.T, w *world) func() {
	t.Helper()
	conn, err := pgx.Connect(context.Background(), w.pg.AppDSN)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	if _, err := conn.Exec(context.Background(), "LISTEN guardian_auth"); err != nil {
		t.Fatal(err)
	}
	return func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if _, err := conn.WaitForNotification(ctx); err != nil {
			t.Fatalf("no revocation notification: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// A key or session revoked while its first lookup is in flight (the row
// read before the revocation committed, the notification applied before
// the lookup cached the row) must not be cached: nothing would drop it
// again while the listener stays up; nor may a request arriving after
// the revocation share that lookup's row.
func TestRevocationDuringALookupIsNotCachedOver(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, tc := range []struct {
		name   string
		lookup func(a *Authenticator, w *world) error
		revoke string
		arg    func(w *world) any
	}{
		{"key", func(a *Authenticator, w *world) error { _, err := a.Key(ctx, w.read, true); return err },
			"UPDATE api_keys SET revoked_at = now() WHERE customer_id = $1 AND scope = 'read'", func(w *world) any { return w.customer }},
		{"session", func(a *Authenticator, w *world) error { _, err := a.Session(ctx, w.token, true); return err },
			"UPDATE sessions SET revoked_at = now() WHERE id = $1", func(w *world) any { return w.sessionID }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := newWorld(t)
			a := w.authenticator(t)
			g := gatedPool(t, w, a)
			wait := notified(t, w)
			g.armed.Store(true)
			first := make(chan error, 1)
			go func() { first <- tc.lookup(a, w) }()
			<-g.held // the row is read, not yet cached
			if _, err := w.pg.Owner.Exec(ctx, tc.revoke, tc.arg(w)); err != nil {
				t.Fatal(err)
			}
			wait()
			// A request arriving now, with the revocation applied, must
			// not join the lookup in flight: that one read the row before
			// the revocation. It looks up on its own and is refused
			// while the first is still held.
			second := make(chan error, 1)
			go func() { second <- tc.lookup(a, w) }()
			select {
			case err := <-second:
				if !errors.Is(err, ErrRevoked) {
					t.Errorf("a request after the revocation: %v, want ErrRevoked", err)
				}
			case <-time.After(10 * time.Second):
				t.Errorf("a request after the revocation joined the lookup read before it")
			}
			close(g.release)
			if err := <-first; err != nil {
				t.Fatalf("the lookup in flight: %v (it read the row before the revocation)", err)
			}
			if err := tc.lookup(a, w); !errors.Is(err, ErrRevoked) {
				t.Fatalf("after the revocation: %v, want ErrRevoked (a row read before it was cached)", err)
			}
		})
	}
}
