package ratelimit

import (
	"context"
	"errors"
	"hash/maphash"
	"net/http"
	"sync/atomic"
)

// Speculation hides the account tier's Redis round trip behind the work
// it guards, on routes that ask for it (speculate_below: their GET and
// HEAD must change nothing) and while CPU is to spare. A read whose
// credential's buckets had tokens to spare at their last decision on this
// route, with at most speculate_below requests of the route in flight, is
// passed on while its decision is made. Its answer is held in a gate until
// the decision comes: the client never sees a byte, a status or a header
// of it before then, and for a refusal it gets the 429 alone, the
// function's answer dropped. What a refusal costs is the function's work
// on a read, and it happens only when the buckets emptied since the last
// decision seen on the route (another route, instance or credential of
// the customer spent them, or a burst larger than what was left came
// within one round trip). Writes, and credentials with few tokens left or
// none seen yet, wait for the decision first, as without speculation. At
// saturation (requests in flight past the bound) nothing is speculated:
// the goroutine it takes would cost throughput, and latency is then
// queueing, not the round trip.

// specSlots is the number of credentials whose last decision is kept
// (per handler; one slot per credential key's hash, a collision reads as
// unknown).
const specSlots = 1024

// speculation is a handler's record of its credentials' last decisions
// and of its requests in flight.
type speculation struct {
	seed     maphash.Seed
	bound    int // speculate_below
	inFlight atomic.Int64
	// slots hold a credential key's hash with its lowest bit set when its
	// last decision left tokens to spare, clear when it did not; 0: none.
	slots [specSlots]atomic.Uint64
}

func newSpeculation(bound int) *speculation {
	return &speculation{seed: maphash.MakeSeed(), bound: bound}
}

func (s *speculation) slot(key string) (*atomic.Uint64, uint64) {
	h := maphash.String(s.seed, key)
	return &s.slots[h%specSlots], h &^ 1
}

// plenty reports whether key's last decision here left tokens to spare.
func (s *speculation) plenty(key string) bool {
	slot, h := s.slot(key)
	return slot.Load() == h|1
}

// remember records key's decision d. Only Redis's decisions count: one
// made without Redis (failed open, or an in-memory bucket) says nothing
// of the buckets.
func (s *speculation) remember(key string, d Decision) {
	slot, h := s.slot(key)
	if d.Source == SourceRedis && s.spare(d) {
		h |= 1
	}
	if slot.Load() != h {
		slot.Store(h)
	}
}

// spare: an allowed decision that left at least a quarter of its
// tightest bucket, and at least the bound on requests in flight, so that
// the requests speculated on it until the next decision fit in what is
// left.
func (s *speculation) spare(d Decision) bool {
	return d.Allowed && d.Remaining >= d.Limit/4 && d.Remaining >= s.bound
}

// speculable is a method whose request may run before its decision: a
// read, which the function answers without changing anything.
func speculable(method string) bool { return method == http.MethodGet || method == http.MethodHead }

// gate holds a speculated request's answer until its decision comes: the
// header map, status and body the handlers after the limiter write go to
// it, and are passed on (the decision allowed) or dropped (refused) once
// the decision is known.
type gate struct {
	w        http.ResponseWriter
	hdr      http.Header
	decision <-chan decided
	h        *Handler // answers the decision's RateLimit headers
	d        Decision
	decided  bool
	released bool // allowed: writes go to w
	panicked any  // the decision's panic, raised again if asked again
}

// decided is a decision made aside, or the panic that stopped it.
type decided struct {
	d        Decision
	panicked any
}

// decideAside makes a speculated read's decision, records it for the
// credential's next reads as soon as it is made (not when the function
// first writes, which may be after its query: meanwhile a refused
// credential would still be taken for plenty), and hands it over. A panic
// (a caller's mistake in Take) is handed over too, to be raised on the
// request's goroutine, where net/http confines it to the request: here it
// would end the process.
func (h *Handler) decideAside(ctx context.Context, keys []string, out chan<- decided) {
	h.spec.decideWith(keys[0], out, func() Decision { return h.take(ctx, keys) })
}

// decideWith is decideAside with the decision made by take.
func (s *speculation) decideWith(key string, out chan<- decided, take func() Decision) {
	sent := false
	defer func() {
		if p := recover(); p != nil || !sent {
			if p == nil {
				p = errDecisionAbandoned // runtime.Goexit: no value to recover
			}
			out <- decided{panicked: p}
		}
	}()
	d := take()
	s.remember(key, d)
	out <- decided{d: d}
	sent = true
}

// errDecisionAbandoned is raised for a decision whose goroutine ended
// without one.
var errDecisionAbandoned = errors.New("rate limiter: a speculated decision ended without a result")

// decide waits for the decision, once, and on an allowed one opens the
// gate: the RateLimit headers, then the held headers, go to w's. The held
// ones are added, as the proxy adds a function's to what the edge set,
// never replacing the edge's (its security headers).
func (g *gate) decide() Decision {
	if g.decided {
		return g.d
	}
	if g.panicked != nil {
		panic(g.panicked) // asked again after the panic (serve's recover)
	}
	got := <-g.decision
	if got.panicked != nil {
		g.panicked = got.panicked
		panic(got.panicked)
	}
	g.d, g.decided = got.d, true
	if g.d.Allowed {
		_ = g.h.answer(g.w, g.d) // allowed: sets the headers, refuses nothing
		dst := g.w.Header()
		for k, v := range g.hdr {
			dst[k] = append(dst[k], v...)
		}
		g.released = true
	}
	return g.d
}

// serve runs next on the gate. A handler that aborts (http.ErrAbortHandler:
// the proxy's copy of an answer failed) once its answer was refused
// anyway ends as the refusal, not as a dropped connection.
func (g *gate) serve(next interface {
	ServeHTTP(http.ResponseWriter, *http.Request) error
}, r *http.Request) (err error) {
	defer func() {
		if p := recover(); p != nil {
			if p != http.ErrAbortHandler || g.released || g.decide().Allowed {
				panic(p)
			}
			err = nil // decided: refused; the caller answers the 429
		}
	}()
	return next.ServeHTTP(g, r)
}

// Header is the held header map until the gate opens, then w's (for
// trailers, which are set after the body).
func (g *gate) Header() http.Header {
	if g.released {
		return g.w.Header()
	}
	return g.hdr
}

// WriteHeader waits for the decision; a refused answer's status is
// dropped. An informational (1xx) answer is dropped either way: it would
// open the gate and copy its headers into w's, where the final answer
// would carry them (its sender clears them from the map it holds).
func (g *gate) WriteHeader(code int) {
	if code < http.StatusOK {
		return
	}
	if g.decide(); g.released {
		g.w.WriteHeader(code)
	}
}

// Write waits for the decision; a refused answer's body is dropped
// (reported written, so that the handler finishes as usual).
func (g *gate) Write(b []byte) (int, error) {
	if g.decide(); g.released {
		return g.w.Write(b)
	}
	return len(b), nil
}

// Flush waits for the decision and flushes an allowed answer.
func (g *gate) Flush() {
	if g.decide(); g.released {
		_ = http.NewResponseController(g.w).Flush()
	}
}
