package main

import (
	"context"
	"sync"
	"time"
)

// gate bounds the audit-log queries one customer runs at once. A filter
// the index does not serve (an action or key that matches little) reads
// the customer's whole history, for up to the route's timeout, on one of
// the few connections every customer's audit pages share: without a
// bound, one customer could hold them all.
type gate struct {
	per  int           // queries at once per customer
	wait time.Duration // how long a query waits for its customer's turn

	mu    sync.Mutex
	slots map[string]*customerSlots
}

type customerSlots struct {
	ch    chan struct{}
	users int // holders and waiters; the entry goes with the last
}

func newGate(per int, wait time.Duration) *gate {
	return &gate{per: per, wait: wait, slots: map[string]*customerSlots{}}
}

// enter waits for one of customer's places, at most g.wait (and while ctx
// lasts), and reports whether it got one; each true needs a leave. A nil
// gate bounds nothing.
func (g *gate) enter(ctx context.Context, customer string) bool {
	if g == nil {
		return true
	}
	g.mu.Lock()
	s := g.slots[customer]
	if s == nil {
		s = &customerSlots{ch: make(chan struct{}, g.per)}
		g.slots[customer] = s
	}
	s.users++
	g.mu.Unlock()
	select {
	case s.ch <- struct{}{}:
		return true
	default:
	}
	t := time.NewTimer(g.wait)
	defer t.Stop()
	select {
	case s.ch <- struct{}{}:
		return true
	case <-t.C:
	case <-ctx.Done():
	}
	g.drop(customer, s)
	return false
}

// leave gives customer's place back.
func (g *gate) leave(customer string) {
	if g == nil {
		return
	}
	g.mu.Lock()
	s := g.slots[customer]
	g.mu.Unlock()
	<-s.ch
	g.drop(customer, s)
}

func (g *gate) drop(customer string, s *customerSlots) {
	g.mu.Lock()
	if s.users--; s.users == 0 {
		delete(g.slots, customer)
	}
	g.mu.Unlock()
}
