package fnserve

import (
	"context"
	"net/http"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/glassmkr/guardian/shared/problem"
)

// ProbePath is the path the function runtime (caddymodules/function) asks
// for when a process has let requests time out unanswered. It is not in
// canonical form, so no handler runs for it: a 404 shows the server
// serving. When handlers are stuck (stuckHandlers: their request over,
// still running long after they began) the answer is instead 503 with
// StuckHeader, which the runtime takes for hung as it takes no answer: a
// handler deadlocked on a lock, or blocked somewhere that does not heed
// its request's end, leaves the server answering and every request that
// needs the lock timing out, and the 404 alone would keep such a process
// running until Caddy restarted.
const ProbePath = "/guardian-probe/"

// StuckHeader, on a 503 answer to ProbePath, counts the handlers found
// stuck.
const StuckHeader = "Guardian-Stuck-Handlers"

// EnvStuckAfter sets how old a handler whose request has ended must be to
// count as stuck (a Go duration; default DefaultStuckAfter). A function
// reads it from its settings: `env GUARDIAN_FUNCTION_STUCK_AFTER` in the
// Caddyfile.
const EnvStuckAfter = "GUARDIAN_FUNCTION_STUCK_AFTER"

// DefaultStuckAfter is EnvStuckAfter's default. Handlers return once
// their request ends (every query and wait takes its context), except
// work that must not end with it: secretscan's revocation of a leaked key
// runs up to 30 s more. A request lasts at most its route's timeout (30 s
// by default), so a handler still running two minutes after it began,
// its request over, is not finishing anything.
const DefaultStuckAfter = 2 * time.Minute

// stuckAfter is EnvStuckAfter's value, or its default if it is unset or
// not a positive duration.
func stuckAfter() time.Duration {
	if d, err := time.ParseDuration(os.Getenv(EnvStuckAfter)); err == nil && d > 0 {
		return d
	}
	return DefaultStuckAfter
}

// running is the handlers in progress, so that a probe can tell a process
// whose handlers are stuck from one whose handlers are slow.
type running struct {
	after time.Duration // see EnvStuckAfter
	mu    sync.Mutex
	head  *call
}

// call is one handler in progress, linked into running while it runs.
type call struct {
	ctx        context.Context
	start      time.Time
	prev, next *call
}

var callPool = sync.Pool{New: func() any { return new(call) }}

// track runs h, with each call linked into t while it runs.
func (t *running) track(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := t.enter(r.Context(), time.Now())
		defer t.leave(c)
		h.ServeHTTP(w, r)
	})
}

func (t *running) enter(ctx context.Context, now time.Time) *call {
	c := callPool.Get().(*call)
	t.mu.Lock()
	c.ctx, c.start, c.prev, c.next = ctx, now, nil, t.head
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
	t.mu.Unlock()
	c.ctx, c.prev, c.next = nil, nil, nil
	callPool.Put(c)
}

// stuckHandlers counts the handlers whose request has ended and that
// began longer than t.after before now.
func (t *running) stuckHandlers(now time.Time) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for c := t.head; c != nil; c = c.next {
		if now.Sub(c.start) > t.after && c.ctx.Err() != nil {
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
			if n := t.stuckHandlers(time.Now()); n > 0 {
				w.Header().Set(StuckHeader, strconv.Itoa(n))
				problem.Write(w, problem.New(http.StatusServiceUnavailable, "handlers_stuck",
					strconv.Itoa(n)+" handlers still running after their request ended"))
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}
