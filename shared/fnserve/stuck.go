package fnserve

import (
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
// serving. When handlers are stuck (stuckHandlers: still running long
// after the runtime gave up on their request) the answer is instead 503
// with StuckHeader, which the runtime takes for hung as it takes no
// answer: a handler deadlocked on a lock, or blocked where nothing will
// wake it, leaves the server answering and every request that needs the
// lock timing out, and the 404 alone would keep such a process running
// until Caddy restarted.
const ProbePath = "/guardian-probe/"

// StuckHeader, on a 503 answer to ProbePath, counts the handlers found
// stuck.
const StuckHeader = "Guardian-Stuck-Handlers"

// DeadlineHeader carries, on each request the runtime sends, how long the
// runtime waits for the answer (its route's timeout, answer included), in
// milliseconds. The function counts from when its handler starts, on its
// own monotonic clock: a clock step moves no deadline, and the runtime
// started counting earlier (while the request waited for a slot and was
// sent), so the function's deadline is never before the runtime's. A handler's
// request context would not tell: net/http notices a client gone only
// once the body has been read, so a handler blocked before reading it has
// a live context forever. Without the header (a function run by hand) a
// handler never counts as stuck.
const DeadlineHeader = "Guardian-Time-Left-Ms"

// EnvStuckAfter sets how long past its request's deadline a handler must
// still run to count as stuck (a Go duration; default DefaultStuckAfter).
// A function reads it from its settings: `env GUARDIAN_FUNCTION_STUCK_AFTER`
// in the Caddyfile.
const EnvStuckAfter = "GUARDIAN_FUNCTION_STUCK_AFTER"

// DefaultStuckAfter is EnvStuckAfter's default. Once the runtime has given
// up on a request, its handler has nothing left to answer; the work that
// goes on past that on purpose ends sooner: secretscan's revocation of a
// leaked key within 30 s, ingest's wait for its batch within about 90 s
// under a stalled ClickHouse (the batches queued ahead of it, 10 s each).
// Five minutes past the deadline, a handler is not finishing anything.
const DefaultStuckAfter = 5 * time.Minute

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
	deadline   time.Time // from DeadlineHeader; zero without one
	prev, next *call
}

var callPool = sync.Pool{New: func() any { return new(call) }}

// track runs h, with each call linked into t while it runs.
func (t *running) track(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var deadline time.Time
		if v := r.Header[DeadlineHeader]; len(v) == 1 {
			if ms, err := strconv.ParseInt(v[0], 10, 64); err == nil && ms >= 0 {
				deadline = time.Now().Add(time.Duration(ms) * time.Millisecond)
			}
		}
		c := t.enter(deadline)
		defer t.leave(c)
		h.ServeHTTP(w, r)
	})
}

func (t *running) enter(deadline time.Time) *call {
	c := callPool.Get().(*call)
	t.mu.Lock()
	c.deadline, c.prev, c.next = deadline, nil, t.head
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
	c.prev, c.next = nil, nil
	callPool.Put(c)
}

// stuckHandlers counts the handlers still running t.after past their
// request's deadline.
func (t *running) stuckHandlers(now time.Time) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	n := 0
	for c := t.head; c != nil; c = c.next {
		if !c.deadline.IsZero() && now.Sub(c.deadline) > t.after {
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
					strconv.Itoa(n)+" handlers still running long after their request's deadline"))
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}
