package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/glassmkr/guardian/shared/identity"
)

func TestGateBoundsEachCustomerAlone(t *testing.T) {
	g := newGate(2, 20*time.Millisecond)
	ctx := context.Background()
	if !g.enter(ctx, "a") || !g.enter(ctx, "a") {
		t.Fatal("a customer's first two queries were refused")
	}
	if g.enter(ctx, "a") {
		t.Fatal("a third query of the same customer got in")
	}
	if !g.enter(ctx, "b") {
		t.Fatal("another customer waited for the first's queries")
	}
	g.leave("b")
	// A waiter gets the place given back within its wait.
	got := make(chan bool, 1)
	g.wait = 10 * time.Second
	go func() { got <- g.enter(ctx, "a") }()
	time.Sleep(10 * time.Millisecond)
	g.leave("a")
	if !<-got {
		t.Fatal("a waiter did not get the place given back")
	}
	g.leave("a")
	g.leave("a")
	if len(g.slots) != 0 {
		t.Fatalf("entries left after every query ended: %v", g.slots)
	}
	// A cancelled wait gives up and leaves nothing behind.
	g.enter(ctx, "c")
	g.enter(ctx, "c")
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if g.enter(cctx, "c") {
		t.Fatal("a cancelled wait got a place")
	}
	g.leave("c")
	g.leave("c")
	if len(g.slots) != 0 {
		t.Fatalf("entries left: %v", g.slots)
	}
}

func TestGateUnderConcurrency(t *testing.T) {
	g := newGate(2, time.Second)
	var mu sync.Mutex
	in, most := 0, 0
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			if !g.enter(context.Background(), "a") {
				return
			}
			mu.Lock()
			in++
			most = max(most, in)
			mu.Unlock()
			time.Sleep(time.Millisecond)
			mu.Lock()
			in--
			mu.Unlock()
			g.leave("a")
		})
	}
	wg.Wait()
	if most > 2 || len(g.slots) != 0 {
		t.Fatalf("at most %d at once (want 2), entries left %v", most, g.slots)
	}
}

// A customer with QueriesPerCustomer audit-log reads under way is
// answered 429 for another, JSON page and export alike, before any query.
func TestAThirdQueryOfACustomerIsRefused(t *testing.T) {
	for _, path := range []string{"/api/v1/audit", "/api/v1/audit?format=csv"} {
		hd := &handler{log: zap.NewNop(), exportCap: MaxExportRows, queries: newGate(QueriesPerCustomer, time.Millisecond)}
		for range QueriesPerCustomer {
			hd.queries.enter(context.Background(), "c")
		}
		r := httptest.NewRequest("GET", path, nil)
		r.Header.Set(identity.HeaderKind, identity.KindSession)
		r.Header.Set(identity.HeaderCustomer, "c")
		r.Header.Set(identity.HeaderUser, "u")
		w := httptest.NewRecorder()
		hd.api(w, r)
		if w.Code != http.StatusTooManyRequests || !strings.Contains(w.Body.String(), "too_many_queries") || w.Header().Get("Retry-After") == "" {
			t.Errorf("%s: %d %s", path, w.Code, w.Body)
		}
	}
}
