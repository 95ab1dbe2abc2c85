package auth

import (
	"context"
	"strings"
	"sync"

	"github.com/glassmkr/guardian/caddymodules/guardian"
)

// maxLookupsPerClient bounds the distinct credentials one client address
// may have looked up (cache misses that go to PostgreSQL) at once.
//
// On API routes the per-IP tier charges a request only once its
// credential has failed (mode failures), so a client sending hundreds of
// made-up keys at once had every one looked up before the first was
// charged, again after every short block: the limiter held back nothing
// of a burst, and the burst held the pool's 8 connections from everyone
// else's lookups. Past the bound a lookup is refused as unchecked
// (ErrNotCached), which the limiter answers 429. Requests with a
// credential already being looked up join its one query (keyMiss,
// sessionMiss) without counting again: a fresh key's first burst of
// requests all miss the cache together, and a burst repeating one
// made-up key is one query. Cached credentials never count.
const maxLookupsPerClient = guardian.LookupsPerClient

// maxLookupsPerNetwork bounds them for an IPv6 /48, all its /64s (each a
// client) together: a site holds 65,536 /64s, and one bound per client
// alone let it start that many bursts whenever a block of its network
// lapsed. A credential two of its /64s look up at once counts twice.
const maxLookupsPerNetwork = guardian.LookupsPerNetwork

// lookups counts, per client, the credentials being looked up and the
// requests waiting on each, and per IPv6 network the credentials its
// clients have in flight.
type lookups struct {
	mu       sync.Mutex
	inFlight map[string]map[string]int // client: credential: requests
	networks map[string]int            // IPv6 /48: credentials of its clients in flight
}

func newLookups() *lookups {
	return &lookups{inFlight: map[string]map[string]int{}, networks: map[string]int{}}
}

// acquire counts a lookup of cred for ctx's client, returning its
// release; ok is false when the client has maxLookupsPerClient other
// credentials in flight, or its IPv6 network maxLookupsPerNetwork.
// Outside a Caddy request (no client address) nothing is counted.
func (l *lookups) acquire(ctx context.Context, cred string) (release func(), ok bool) {
	client := guardian.ClientBucket(ctx)
	if client == "" {
		return func() {}, true
	}
	network := ""
	if strings.IndexByte(client, ':') >= 0 { // parsed again only for IPv6
		network = guardian.ClientNetwork(ctx)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	creds := l.inFlight[client]
	if creds[cred] == 0 && (len(creds) >= maxLookupsPerClient || (network != "" && l.networks[network] >= maxLookupsPerNetwork)) {
		return nil, false
	}
	if creds == nil {
		creds = map[string]int{}
		l.inFlight[client] = creds
	}
	if creds[cred] == 0 && network != "" {
		l.networks[network]++
	}
	creds[cred]++
	return func() {
		l.mu.Lock()
		defer l.mu.Unlock()
		if creds[cred]--; creds[cred] <= 0 {
			delete(creds, cred)
			if len(creds) == 0 {
				delete(l.inFlight, client)
			}
			if network != "" {
				if l.networks[network]--; l.networks[network] <= 0 {
					delete(l.networks, network)
				}
			}
		}
	}, true
}
