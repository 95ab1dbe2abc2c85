package auth

import (
	"context"
	"sync"

	"github.com/glassmkr/guardian/shared/clientip"
)

// maxLookupsPerClient bounds the credential lookups (cache misses that go
// to PostgreSQL) one client address may have in flight at once.
//
// On API routes the per-IP tier charges a request only once its
// credential has failed (mode failures), so a client sending hundreds of
// made-up keys at once had every one looked up before the first was
// charged, again after every short block: the limiter held back nothing
// of a burst, and the burst held the pool's 8 connections from everyone
// else's lookups. Past the bound a lookup is refused as unchecked
// (ErrNotCached), which the limiter answers 429. Cached credentials never
// count, so a busy client with a key already checked is not affected; a
// browser's first page of a fresh session makes a few lookups at most.
const maxLookupsPerClient = 16

// lookups counts the lookups in flight per client.
type lookups struct {
	mu       sync.Mutex
	inFlight map[string]int
}

func newLookups() *lookups { return &lookups{inFlight: map[string]int{}} }

// acquire takes one of ctx's client's lookups, returning its release; ok
// is false when the client has them all in flight. Outside a Caddy
// request (no client address) nothing is counted.
func (l *lookups) acquire(ctx context.Context) (release func(), ok bool) {
	client := clientip.FromContext(ctx)
	if client == "" {
		return func() {}, true
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.inFlight[client] >= maxLookupsPerClient {
		return nil, false
	}
	l.inFlight[client]++
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.inFlight[client]--; l.inFlight[client] <= 0 {
			delete(l.inFlight, client)
		}
	}, true
}
