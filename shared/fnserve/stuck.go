package fnserve

import (
	"context"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/glassmkr/guardian/shared/problem"
)

// ProbePath is the path the function runtime (caddymodules/function) asks
// for when a process has let requests time out unanswered. It is not in
// canonical form, so no handler runs for it: a 404 shows the server
// serving. When handlers are stuck (stuckHandlers) the answer is instead
// 503 with StuckHeader, which the runtime takes for hung as it takes no
// answer: a handler deadlocked on a lock, or blocked somewhere that does
// not honour its request's end, leaves the server answering and every
// request that needs the lock timing out, and the 404 alone would keep
// such a process running until Caddy restarted.
const ProbePath = "/guardian-probe/"

// StuckHeader, on a 503 answer to ProbePath, counts the handlers found
// stuck.
const StuckHeader = "Guardian-Stuck-Handlers"

// stuckGrace is how long a handler may keep running once its request has
// ended (the runtime gave up on it, or the client went away) before a
// probe counts it stuck. Handlers return at once when their request ends
// (every query, wait and call takes its context); the longest that does
// not, a password hash, takes a fraction of a second. The probe waits this
// long only when some handler's request has ended, within the runtime's
// probe wait.
const stuckGrace = time.Second

// running is the handlers in progress, so that a probe can tell a process
// whose handlers are stuck from one whose handlers are slow.
type running struct {
	mu   sync.Mutex
	head *call
}

// call is one handler in progress, linked into running while it runs.
// Calls are reused (callPool); gen tells a call's uses apart.
type call struct {
	ctx        context.Context
	gen        uint64
	prev, next *call
}

var callPool = sync.Pool{New: func() any { return new(call) }}

// track runs h, with each call linked into t while it runs.
func (t *running) track(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := t.enter(r.Context())
		defer t.leave(c)
		h.ServeHTTP(w, r)
	})
}

func (t *running) enter(ctx context.Context) *call {
	c := callPool.Get().(*call)
	t.mu.Lock()
	c.ctx, c.prev, c.next = ctx, nil, t.head
	c.gen++
	if t.head != nil {
		t.head.prev = c
	}
	t.head = c
	t.mu.Unlock()
	return c
}

func (t *running) leave(c *call) {
	t.mu.Lock()
	if c.prev != nil {
		c.prev.next = c.next
	} else {
		t.head = c.next
	}
	if c.next != nil {
		c.next.prev = c.prev
	}
	c.gen++ // ended: a probe holding the old generation no longer sees it
	c.ctx, c.prev, c.next = nil, nil, nil
	t.mu.Unlock()
	callPool.Put(c)
}

// ended is the running calls whose request has ended, by generation.
func (t *running) ended() map[*call]uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	var m map[*call]uint64
	for c := t.head; c != nil; c = c.next {
		if c.ctx.Err() != nil {
			if m == nil {
				m = map[*call]uint64{}
			}
			m[c] = c.gen
		}
	}
	return m
}

// stuckHandlers counts the handlers whose request had ended and that are
// still running grace later (the same use of the call, by generation).
// It returns at once when no request has ended.
func (t *running) stuckHandlers(ctx context.Context, grace time.Duration) int {
	ended := t.ended()
	if len(ended) == 0 {
		return 0
	}
	timer := time.NewTimer(grace)
	defer timer.Stop()
	select {
	case <-timer.C:
	case <-ctx.Done():
		return 0
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for c, gen := range ended {
		if c.gen == gen {
			n++
		}
	}
	return n
}

// probes answers ProbePath: 503 with StuckHeader when t has stuck
// handlers, else on to h (whose 404 for the path shows the server
// serving).
func (t *running) probes(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == ProbePath {
			if n := t.stuckHandlers(r.Context(), stuckGrace); n > 0 {
				w.Header().Set(StuckHeader, strconv.Itoa(n))
				problem.Write(w, problem.New(http.StatusServiceUnavailable, "handlers_stuck",
					strconv.Itoa(n)+" handlers still running after their request ended"))
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}
