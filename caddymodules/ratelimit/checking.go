package ratelimit

import (
	"context"
	"sync"
	"time"
)

// checking bounds the requests of one client a refuse_blocked route passes
// on at once: guardian.LookupsPerClient per address (an IPv6 one by its
// /64) and guardian.LookupsPerNetwork per IPv6 /48. Such a route's function
// checks the credential itself (a webhook's signature), so a failure is
// charged only once the function has answered; until then every request
// of a burst finds its address unblocked. Without a bound, an address
// with a few dozen requests in flight had them all checked, and audited,
// each time its block lapsed, several times the tier's rate; with it, at
// most as many as a block's length refills (failureBlock).
//
// A request past the bound waits for a place, and is refused unchecked
// only if none comes within checkWait: GitHub's documentation does not
// promise to send a refused report again, so a burst of genuine reports
// from one of its addresses is slowed, not dropped. A place is held until
// the request's failure, if any, has been charged, so a request that gets
// it next sees the block that charge set.
type checking struct {
	mu     sync.Mutex
	places map[string]*places
}

// places is one client's (or network's) slots and the requests that hold
// or wait for them.
type places struct {
	slots chan struct{}
	refs  int
}

// checkWait bounds a request's wait for a place.
const checkWait = 5 * time.Second

func newChecking() *checking { return &checking{places: map[string]*places{}} }

// acquire takes one of key's n places, waiting until deadline at most
// (or until ctx ends); ok is false if none came.
func (c *checking) acquire(ctx context.Context, key string, n int, deadline time.Time) (release func(), ok bool) {
	c.mu.Lock()
	p := c.places[key]
	if p == nil {
		p = &places{slots: make(chan struct{}, n)}
		c.places[key] = p
	}
	p.refs++
	c.mu.Unlock()
	select {
	case p.slots <- struct{}{}:
	default:
		t := time.NewTimer(time.Until(deadline))
		defer t.Stop()
		select {
		case p.slots <- struct{}{}:
		case <-ctx.Done():
			c.drop(key, p)
			return nil, false
		case <-t.C:
			c.drop(key, p)
			return nil, false
		}
	}
	return func() {
		<-p.slots
		c.drop(key, p)
	}, true
}

// drop ends one request's hold on p, forgetting p once nothing holds it.
func (c *checking) drop(key string, p *places) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if p.refs--; p.refs == 0 {
		delete(c.places, key)
	}
}
