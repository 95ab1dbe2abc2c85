package ratelimit

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/glassmkr/guardian/caddymodules/guardian"
)

// heldCheck is a next handler that holds each request until open is closed,
// counting those inside it, then fails it as a forged signature would.
type heldCheck struct {
	open         chan struct{}
	inside, most atomic.Int64
	calls        atomic.Int64
}

func newHeldCheck() *heldCheck { return &heldCheck{open: make(chan struct{})} }

func (g *heldCheck) ServeHTTP(w http.ResponseWriter, r *http.Request) error {
	g.calls.Add(1)
	n := g.inside.Add(1)
	for {
		m := g.most.Load()
		if n <= m || g.most.CompareAndSwap(m, n) {
			break
		}
	}
	<-g.open
	g.inside.Add(-1)
	return failAuth("bad_signature")(w, r)
}

// A refuse_blocked route (a webhook whose function checks the signature)
// passes on at most LookupsPerClient requests of one address at once; the
// others wait, and once the failures charged block the address they are
// refused without reaching the function. Before, every request of a burst
// found the address unblocked and was checked and audited.
func TestARefuseBlockedRoutePassesOnABoundedBurstPerAddress(t *testing.T) {
	t.Parallel()
	h := newTestHandler(t, Handler{Tier: TierIP, Mode: ModeFailures, RefuseBlocked: true, IP: &Bucket{Capacity: 3, Rate: 0.01}})
	g := newHeldCheck()
	const burst = 40
	statuses := make(chan int, burst)
	var wg sync.WaitGroup
	for range burst {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, _ := status(h.ServeHTTP(httptest.NewRecorder(), request("192.0.2.60"), g))
			statuses <- s
		}()
	}
	waitUntil(t, "the first requests inside", func() bool { return g.inside.Load() == guardian.LookupsPerClient })
	// Another address is not held back.
	if s, _ := status(h.ServeHTTP(httptest.NewRecorder(), request("192.0.2.61"), ok)); s != 200 {
		t.Fatalf("another address: %d", s)
	}
	close(g.open)
	wg.Wait()
	close(statuses)
	refused := 0
	for s := range statuses {
		if s == 429 {
			refused++
		}
	}
	// The first 3 failures were paid for: each let one waiter in before
	// the 4th set the block. Every other waiter was refused unchecked.
	if most, calls := g.most.Load(), g.calls.Load(); most != guardian.LookupsPerClient || calls > guardian.LookupsPerClient+3 || refused < burst-int(calls) {
		t.Fatalf("%d inside at most, %d passed on, %d refused; want %d, at most %d, and the rest refused",
			most, calls, refused, guardian.LookupsPerClient, guardian.LookupsPerClient+3)
	}
	noPlacesLeft(t, h.checking)
}

// An IPv6 /48's /64s share LookupsPerNetwork places, each /64 still at
// most LookupsPerClient of them.
func TestARefuseBlockedRoutePassesOnABoundedBurstPerNetwork(t *testing.T) {
	t.Parallel()
	h := newTestHandler(t, Handler{Tier: TierIP, Mode: ModeFailures, RefuseBlocked: true})
	g := newHeldCheck()
	subnets := guardian.LookupsPerNetwork/guardian.LookupsPerClient + 2
	var wg sync.WaitGroup
	for sub := range subnets {
		for range guardian.LookupsPerClient {
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := request("192.0.2.1")
				r.RemoteAddr = fmt.Sprintf("[2001:db8:6:%x::1]:40000", sub)
				h.ServeHTTP(httptest.NewRecorder(), r, g)
			}()
		}
	}
	// Every request has taken its network's place or waits for one.
	waitUntil(t, "every request at the network's places", func() bool {
		h.checking.mu.Lock()
		defer h.checking.mu.Unlock()
		p := h.checking.places["n:2001:db8:6::/48"]
		return p != nil && p.refs == subnets*guardian.LookupsPerClient
	})
	if n := g.inside.Load(); n != guardian.LookupsPerNetwork {
		t.Fatalf("%d requests of one /48 inside, want %d", n, guardian.LookupsPerNetwork)
	}
	close(g.open)
	wg.Wait()
	// The network's bucket (1,600) pays for every failure: those that
	// waited were slowed, not refused.
	if calls := g.calls.Load(); calls != int64(subnets*guardian.LookupsPerClient) {
		t.Fatalf("%d requests passed on, want all %d", calls, subnets*guardian.LookupsPerClient)
	}
}

// A request that finds no place within checkWait is refused unchecked, with
// a Retry-After, and never reaches the function; the address is not
// blocked, so once a place is free the next request is checked again.
func TestARequestWithoutAPlaceWithinTheWaitIsRefusedUnchecked(t *testing.T) {
	t.Parallel()
	// A bucket no failure here empties: only the bound can refuse.
	h := newTestHandler(t, Handler{Tier: TierIP, Mode: ModeFailures, RefuseBlocked: true, IP: &Bucket{Capacity: 1000, Rate: 100}})
	g := newHeldCheck()
	var wg sync.WaitGroup
	for range guardian.LookupsPerClient {
		wg.Add(1)
		go func() {
			defer wg.Done()
			h.ServeHTTP(httptest.NewRecorder(), request("192.0.2.62"), g)
		}()
	}
	waitUntil(t, "the bound's requests inside", func() bool { return g.inside.Load() == guardian.LookupsPerClient })
	rec := httptest.NewRecorder()
	var s int
	var code string
	var waited time.Duration
	answered := make(chan struct{})
	go func() {
		defer close(answered)
		start := time.Now()
		s, code = status(h.ServeHTTP(rec, request("192.0.2.62"), g))
		waited = time.Since(start)
	}()
	select {
	case <-answered:
	case <-time.After(checkWait + 20*time.Second):
		close(g.open) // let it, and the others, go
		t.Fatal("a request past the bound was passed on, or waited past its wait")
	}
	if s != 429 || code != "rate_limited" || rec.Header().Get("Retry-After") == "" {
		t.Fatalf("a request past the bound: %d %q, Retry-After %q; want 429 rate_limited with a Retry-After",
			s, code, rec.Header().Get("Retry-After"))
	}
	if waited < checkWait {
		t.Fatalf("refused after %v, before its wait (%v) was over", waited, checkWait)
	}
	if calls := g.calls.Load(); calls != guardian.LookupsPerClient {
		t.Fatalf("%d requests passed on, want %d", calls, guardian.LookupsPerClient)
	}
	close(g.open)
	wg.Wait()
	if s, _ := status(h.ServeHTTP(httptest.NewRecorder(), request("192.0.2.62"), ok)); s != 200 {
		t.Fatalf("the next request, with places free and no block: %d", s)
	}
	noPlacesLeft(t, h.checking)
}

// A request that waits for a place gives it up when its client goes away.
func TestAWaitForAPlaceEndsWithItsRequest(t *testing.T) {
	t.Parallel()
	c := newChecking()
	var releases []func()
	forever := time.Now().Add(time.Hour)
	for range 2 {
		release, ok := c.acquire(context.Background(), "a", 2, forever)
		if !ok {
			t.Fatal("a free place was refused")
		}
		releases = append(releases, release)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan bool)
	go func() {
		_, ok := c.acquire(ctx, "a", 2, forever)
		done <- ok
	}()
	cancel()
	select {
	case ok := <-done:
		if ok {
			t.Fatal("a place was given past the bound")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the wait for a place outlived its request")
	}
	if _, ok := c.acquire(context.Background(), "a", 2, time.Now()); ok {
		t.Fatal("a place was given past the bound and the deadline")
	}
	for _, release := range releases {
		release()
	}
	noPlacesLeft(t, c)
}

// noPlacesLeft fails t if c still holds places: every request that held or
// waited for one has dropped its hold.
func noPlacesLeft(t *testing.T, c *checking) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.places) != 0 {
		t.Fatalf("places left: %v", c.places)
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
