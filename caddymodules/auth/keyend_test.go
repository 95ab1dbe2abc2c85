package auth

import (
	"context"
	"math"
	"net/http"
	"sync/atomic"
	"testing"
	"time"
)

// TestAKeyEndsOnPostgresClock: a key's revocation and expiry are written
// with PostgreSQL's clock; an edge whose clock is behind must not admit a
// revoked key for the difference, nor one whose grace window is over, and
// an edge whose clock is ahead must not end a key early.
func TestAKeyEndsOnPostgresClock(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		skew time.Duration // the edge's clock minus PostgreSQL's
	}{
		{"edge an hour behind", -time.Hour},
		{"edge an hour ahead", time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			w := newWorld(t)
			a := w.authenticator(t)
			var offset atomic.Int64
			offset.Store(int64(tc.skew))
			a.now = func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
			h := handler(a, Handler{})
			ctx := context.Background()
			a.mu.Lock()
			gen := a.gen
			a.mu.Unlock()
			w.c.Revoke(t, w.read)
			if _, err := w.db.Exec(ctx, "UPDATE api_keys SET revoked_at = now() + interval '10 minutes' WHERE customer_id = $1 AND scope = 'write'", w.customer); err != nil {
				t.Fatal(err)
			}
			if _, err := w.db.Exec(ctx, "UPDATE api_keys SET expires_at = 'infinity' WHERE customer_id = $1 AND scope = 'admin'", w.customer); err != nil {
				t.Fatal(err)
			}
			// The three changes' notifications first: one arriving during a
			// lookup would keep its row out of the cache, which the last
			// check below counts on.
			for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
				a.mu.Lock()
				seen := a.gen - gen
				a.mu.Unlock()
				if seen >= 3 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("%d of the 3 notifications arrived", seen)
				}
			}
			if got := do(t, h, bearer("GET", "/", w.read)); got.status != http.StatusUnauthorized {
				t.Fatalf("a key revoked a moment ago: %+v", got)
			}
			if got := do(t, h, bearer("GET", "/", w.admin)); got.status != http.StatusOK {
				t.Fatalf("a key that never expires: %+v", got)
			}
			if got := do(t, h, bearer("GET", "/", w.write)); got.status != http.StatusOK {
				t.Fatalf("a key with 10 minutes of its grace window left: %+v", got)
			}
			// Ten minutes later on the edge's clock (the entry is cached:
			// no notification, no second lookup), the window is over.
			offset.Add(int64(10*time.Minute + time.Second))
			if got := do(t, h, bearer("GET", "/", w.write)); got.status != http.StatusUnauthorized {
				t.Fatalf("10 minutes later on the edge's clock: %+v", got)
			}
		})
	}
}

func TestEndOnEdge(t *testing.T) {
	began := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name  string
		ended bool
		left  float64
		want  time.Time
	}{
		{"ended is ended whatever is left", true, 30, began},
		{"no time left is ended", false, 0, began},
		{"NaN is ended", false, math.NaN(), began},
		{"seconds left count from before the query", false, 1.5, began.Add(1500 * time.Millisecond)},
		{"an infinite end is never", false, math.Inf(1), time.Time{}},
		{"an end past a Duration is never", false, 1e12, time.Time{}},
	} {
		if got := endOnEdge(began, tc.ended, tc.left); !got.Equal(tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}
