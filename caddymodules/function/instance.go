package function

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/glassmkr/guardian/shared/logevery"
)

// spec is what an instance needs to start its binary; instances with equal
// specs are shared across config reloads.
type spec struct {
	name          string
	bin           string
	env           []string
	socketDir     string
	startTimeout  time.Duration
	idleTimeout   time.Duration
	stopGrace     time.Duration
	maxConcurrent int
	// warm keeps the function running: started with the config, never
	// stopped for idleness, restarted after a crash.
	warm bool
}

// instance owns the (at most one) running process of a function: it starts
// it on demand, counts requests in flight, stops it when idle and restarts
// it with backoff after a crash.
type instance struct {
	spec    spec
	log     *zap.Logger
	metrics *fnMetrics
	// slots bound the requests in flight to the process, whichever of the
	// routes sharing it they came through (max_concurrent is the
	// process's bound, not each route's).
	slots chan struct{}
	// contended counts, by holder, the requests that came while half the
	// slots or more were taken (see Handler.takeContended).
	contended *budget
	// timeoutLog and failLog hold the per-request lines of a slow or
	// failing process to one per interval: a process down under load
	// would otherwise log every request it refuses.
	timeoutLog, failLog logevery.Gate
	// slowLog holds the line of a probe that found a silent process
	// answering (silentTimeout): under a stalled dependency one comes
	// every few timeouts.
	slowLog logevery.Gate

	bufMu    sync.Mutex
	buffered *budget // bodies held for the process's routes; see bodyBudget
	bufSize  int64

	mu       sync.Mutex
	proc     *process
	starting chan struct{} // non-nil while a start is under way
	starts   uint64        // starts attempted, for tests
	// warmPending is set while a warm-up is scheduled: one retry at a
	// time, however many reloads and failed starts asked for one.
	warmPending bool
	rewarms     uint64 // warm-ups scheduled, for tests
	inflight    int
	lastUsed    time.Time
	idle        *time.Timer
	crashes     int       // consecutive crashes, for backoff
	retryAt     time.Time // no start before this after a crash
	closed      bool
	// drain is the longest timeout of the routes using the instance: how
	// long requests in flight when it is replaced may still run.
	drain time.Duration
	// drained, once the instance is closed with requests in flight, is
	// closed when the last of them ends.
	drained chan struct{}
}

// Backoff after consecutive crashes: 100 ms doubling up to 30 s, so a crash
// loop costs at most a start every 30 s.
const (
	backoffMin = 100 * time.Millisecond
	backoffMax = 30 * time.Second
	// A process that ran this long before crashing resets the backoff.
	healthyRun = 30 * time.Second
)

func backoff(crashes int) time.Duration {
	if crashes <= 0 {
		return 0
	}
	d := backoffMin
	for i := 1; i < crashes && d < backoffMax; i++ {
		d *= 2
	}
	return min(d, backoffMax)
}

func newInstance(s spec, log *zap.Logger) *instance {
	return &instance{spec: s, log: log, metrics: newFnMetrics(s.name), slots: make(chan struct{}, max(s.maxConcurrent, 1)),
		contended: newBudgetOf(int64(max(s.maxConcurrent, 1)), contendedShare)}
}

// bodyBudget is the bound, in bytes, on the request bodies buffered for
// this process's routes together, made by the first route that buffers
// (size: its bound), and that bound.
func (in *instance) bodyBudget(size int64) (*budget, int64) {
	in.bufMu.Lock()
	defer in.bufMu.Unlock()
	if in.buffered == nil {
		in.buffered, in.bufSize = newBudget(size), size
	}
	return in.buffered, in.bufSize
}

// warmUp starts the process if none runs, for functions kept warm.
func (in *instance) warmUp(ctx context.Context) {
	p, err := in.acquire(ctx)
	if err != nil {
		// acquire logged it; the crash watcher or the next request retries.
		in.mu.Lock()
		retry := !in.closed && in.spec.warm
		delay := time.Until(in.retryAt)
		in.mu.Unlock()
		if retry {
			in.rewarm(max(delay, backoffMin))
		}
		return
	}
	in.release(p)
}

// rewarm schedules a warm-up after delay, unless one is already
// scheduled: every config's Start and every failed start asks for one, and
// each would otherwise keep its own chain of retries going until a start
// succeeds.
func (in *instance) rewarm(delay time.Duration) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.warmPending || in.closed {
		return
	}
	in.warmPending = true
	in.rewarms++
	time.AfterFunc(delay, func() {
		in.mu.Lock()
		in.warmPending = false
		in.mu.Unlock()
		in.warmUp(context.Background())
	})
}

// errBackoff reports that the function crashed recently and is not yet
// due for a restart; retryAfter says when it is.
type errBackoff struct{ retryAfter time.Duration }

func (e errBackoff) Error() string {
	return fmt.Sprintf("function crashed recently; next start in %s", e.retryAfter.Round(time.Millisecond))
}

// acquire returns a ready process and counts a request in flight on it;
// the caller must call release. It starts the binary if none runs, and
// concurrent callers share one start.
func (in *instance) acquire(ctx context.Context) (*process, error) {
	for {
		in.mu.Lock()
		if in.closed {
			in.mu.Unlock()
			return nil, errors.New("function runtime is shutting down")
		}
		if p := in.proc; p != nil && !p.exited() {
			in.inflight++
			in.mu.Unlock()
			in.metrics.inFlight.Inc()
			return p, nil
		}
		if wait := in.starting; wait != nil {
			in.mu.Unlock()
			select {
			case <-wait:
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		if delay := time.Until(in.retryAt); delay > 0 {
			in.mu.Unlock()
			if delay > in.spec.startTimeout {
				return nil, errBackoff{delay}
			}
			select {
			case <-time.After(delay):
				continue
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		wait := make(chan struct{})
		in.starting = wait
		in.starts++
		in.mu.Unlock()

		p, err := startProcess(&in.spec, in.log, in.metrics.serverErrors)

		in.mu.Lock()
		in.starting = nil
		close(wait)
		if err != nil {
			in.crashes++
			in.retryAt = time.Now().Add(backoff(in.crashes))
			in.mu.Unlock()
			in.metrics.startFailures.Inc()
			in.log.Error("function failed to start", zap.Error(err), zap.Int("consecutive_failures", in.crashes))
			return nil, err
		}
		if in.closed {
			in.mu.Unlock()
			p.stop(in.spec.stopGrace)
			return nil, errors.New("function runtime is shutting down")
		}
		in.proc = p
		in.inflight++
		in.mu.Unlock()
		in.metrics.inFlight.Inc()
		cold := time.Since(p.started)
		in.metrics.starts.Inc()
		in.metrics.coldStart.Observe(cold.Seconds())
		in.log.Info("function started", zap.Duration("cold_start", cold), zap.Int("pid", p.cmd.Process.Pid))
		go in.watch(p)
		return p, nil
	}
}

// noteTimeout records a route's timeout, so that a replaced instance lets
// that route's requests finish.
func (in *instance) noteTimeout(d time.Duration) {
	in.mu.Lock()
	in.drain = max(in.drain, d)
	in.mu.Unlock()
}

// release ends a request on p and arms the idle timer when none is left,
// whichever process the last one ran on: one that ran on a process since
// crashed and ended after its successor's requests must still arm it, or
// the successor stays up until the next request.
func (in *instance) release(p *process) {
	in.metrics.inFlight.Dec()
	in.mu.Lock()
	defer in.mu.Unlock()
	in.inflight--
	in.lastUsed = time.Now()
	if in.inflight == 0 && in.drained != nil {
		close(in.drained)
		in.drained = nil
	}
	if in.inflight == 0 && in.proc != nil && in.spec.idleTimeout > 0 {
		if in.idle == nil {
			in.idle = time.AfterFunc(in.spec.idleTimeout, in.stopIfIdle)
		} else {
			in.idle.Reset(in.spec.idleTimeout)
		}
	}
}

// hungAfter is how many requests in a row a process may let time out
// without answering, each sent to it whole, before it is probed; a
// request it answers in between starts the count again.
const hungAfter = 5

// probeWait bounds the probe of a process suspected hung.
const probeWait = 2 * time.Second

// silentTimeout counts a request p let time out without answering. At
// hungAfter in a row (or concurrent: a slow dependency times out every
// request at once) p is probed with a request its server answers itself,
// before any handler (shared/fnserve: a path not in canonical form). A
// process that answers 404 is slow, not hung, and is left to its
// requests. One that does not answer (its server stopped, the process
// frozen), or that answers 503 with fnserve.StuckHeader (handlers still
// running long past their request's deadline: deadlocked), is killed,
// which its watch takes for a crash: a fresh process for the next
// request, after the crash backoff, and a warm function started again.
// Without this a frozen process answered every request 504 after its full
// timeout, holding a slot each time, until Caddy restarted (a warm one is
// never stopped for idleness).
func (in *instance) silentTimeout(p *process) {
	if p.silent.Add(1) < hungAfter {
		return
	}
	in.mu.Lock()
	stopping := p.stopping // draining for a reload or idleness: its server may be closed already
	in.mu.Unlock()
	if stopping || !p.probing.CompareAndSwap(false, true) {
		return
	}
	go func() {
		defer p.probing.Store(false)
		if p.exited() {
			return
		}
		err := p.probe(probeWait)
		switch {
		case err == nil:
			p.silent.Store(0)
			if n, ok := in.slowLog.Allow(time.Now(), failLogEvery); ok {
				in.log.Warn("function let requests time out unanswered but answers a probe: slow, not hung (logged once per 30 s)",
					zap.Int("requests", hungAfter), zap.Int("pid", p.cmd.Process.Pid), zap.Int64("probes", n))
			}
			return
		case p.exited():
			return // gone meanwhile: its watch has it
		}
		msg := "function answered none of its last requests before their timeout, nor a probe; killing it as hung"
		if errors.Is(err, errStuck) {
			msg = "function answered none of its last requests before their timeout, and handlers are still running long past their request's deadline; killing it as hung"
		}
		in.log.Error(msg, zap.Int("requests", hungAfter), zap.Int("pid", p.cmd.Process.Pid), zap.Error(err))
		p.kill()
	}()
}

// stopIfIdle stops the process when nothing used it for the idle timeout.
// A request that arrives meanwhile keeps it: the check runs under the lock.
func (in *instance) stopIfIdle() {
	in.mu.Lock()
	p := in.proc
	if p == nil || in.spec.warm || in.inflight > 0 || time.Since(in.lastUsed) < in.spec.idleTimeout {
		in.mu.Unlock()
		return
	}
	in.proc = nil
	p.stopping = true
	in.mu.Unlock()
	in.log.Info("function idle, stopping", zap.Duration("idle_timeout", in.spec.idleTimeout))
	p.stop(in.spec.stopGrace)
}

// watch notices when p exits; an exit nobody asked for is a crash.
func (in *instance) watch(p *process) {
	<-p.done
	in.mu.Lock()
	crashed := !p.stopping
	if in.proc == p {
		in.proc = nil
	}
	if crashed {
		if time.Since(p.started) > healthyRun {
			in.crashes = 0
		}
		in.crashes++
		in.retryAt = time.Now().Add(backoff(in.crashes))
	} else {
		in.crashes = 0
	}
	n := in.crashes
	rewarm := crashed && in.spec.warm && !in.closed
	in.mu.Unlock()
	if p.tr != nil {
		p.tr.CloseIdleConnections()
	}
	if crashed {
		in.metrics.crashes.Inc()
		if rewarm {
			in.rewarm(backoff(n))
		}
		in.log.Error("function exited unexpectedly", zap.String("status", exitText(p.cmd)), zap.Int("consecutive_failures", n), zap.Duration("next_start_after", backoff(n)))
	}
}

// Destruct stops the process for good; it runs when the last config using
// this instance is unloaded (caddy.Destructor).
//
// A reload that changes a function's settings unloads the old instance
// while requests may still run on it: Caddy's old servers keep serving
// them after the new config has taken over. Those requests are let finish,
// up to the longest timeout of the instance's routes (an audit export's
// ten minutes), and the process is stopped after them, in the background:
// the reload, which holds Caddy's config lock, does not wait for them.
// An idle process, or any at Caddy's exit, is stopped at once and waited
// for.
func (in *instance) Destruct() error {
	in.mu.Lock()
	in.closed = true
	p := in.proc
	in.proc = nil
	if p != nil {
		p.stopping = true
	}
	if in.idle != nil {
		in.idle.Stop()
	}
	busy := in.inflight
	if busy > 0 && in.drained == nil {
		in.drained = make(chan struct{})
	}
	drained, drain := in.drained, in.drain
	in.mu.Unlock()
	if p == nil {
		return nil
	}
	// At exit there is no later: the process ends right after this, and
	// a stop left to the background would be a SIGKILL (parent death).
	// Caddy's servers have given requests their grace period already.
	if busy == 0 || caddy.Exiting() {
		p.stop(in.spec.stopGrace)
		p.waitExit(in.spec.stopGrace + time.Second)
		return nil
	}
	in.log.Info("function replaced; it stops once its requests end", zap.Int("in_flight", busy), zap.Duration("at_most", drain))
	go func() {
		t := time.NewTimer(drain)
		defer t.Stop()
		select {
		case <-drained:
		case <-t.C:
			in.log.Warn("replaced function still busy at its longest route timeout; stopping it", zap.Duration("waited", drain))
		}
		p.stop(in.spec.stopGrace)
	}()
	return nil
}
