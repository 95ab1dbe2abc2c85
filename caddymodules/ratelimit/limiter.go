package ratelimit

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"

	"github.com/glassmkr/guardian/shared/mono"
)

//go:embed bucket.lua
var bucketLua string

var bucketScript = redis.NewScript(bucketLua)

// Bucket is a token bucket's shape.
type Bucket struct {
	// Capacity is the most tokens the bucket holds (the burst).
	Capacity float64 `json:"capacity"`
	// Rate is the refill, in tokens per second.
	Rate float64 `json:"rate"`
}

// Decision is the outcome of one Take.
type Decision struct {
	Allowed bool
	// Limit, Remaining and Reset describe the bucket closest to empty.
	Limit      int
	Remaining  int
	Reset      time.Duration // until that bucket is full again
	RetryAfter time.Duration // until the request would be allowed
	// Source says who decided: "redis", "local" (Redis down, in-memory
	// bucket) or "open" (Redis down, failed open).
	Source string
	// each is what Redis left in each bucket (a decision has one or two),
	// for the in-memory buckets to go on from: at most a millisecond's
	// refill above it, never below (the reply's whole tokens alone are
	// up to one below, and an in-memory bucket left that low would refuse
	// what Redis allows once Redis is back).
	each [2]float64
	// short says which buckets (of one or two) held no token for the
	// decision: those that refused it. each cannot tell: it is an upper
	// bound, 1 for a bucket a millisecond's refill short of a token.
	short [2]bool
}

// Sources of a decision.
const (
	SourceRedis = "redis"
	SourceLocal = "local"
	SourceOpen  = "open"
)

// sourceAbandoned labels, in guardian_ratelimit_degraded_decisions_total,
// the decisions made without Redis because their request ended (its
// client went away) or their limiter was closed (a reload) while Redis
// was asked: Redis was not at fault, and an alert on "open" must not
// fire for clients that close their connections.
const sourceAbandoned = "abandoned"

// Limiter takes tokens from buckets in Redis in one round trip, and
// decides without Redis when Redis is unreachable or slow.
type Limiter struct {
	rdb     redis.UniversalClient
	prefix  string
	timeout time.Duration
	log     *zap.Logger
	now     func() time.Time
	// scriptNow, when set (tests), fixes the script's clock in ms; by
	// default the script reads Redis's clock, shared by every instance.
	scriptNow func() int64

	downUntil atomic.Int64 // nanos: skip Redis until then (0: up)
	// lastOK is when the latest decision Redis answered began (nanos):
	// a failure of a call begun before it says nothing about Redis now.
	lastOK atomic.Int64
	// stateMu orders the changes of the down mark (answered, degrade);
	// lastFail, under it, is when the latest call that marked Redis down
	// began (nanos): an answer to a call begun before it does not clear
	// the mark.
	stateMu   sync.Mutex
	closeOnce sync.Once
	lastFail  int64
	lastWarn  atomic.Int64 // nanos of the last degradation warning
	lastUp    atomic.Int64 // nanos of the last recovery message
	// probes counts decisions that asked a Redis marked down (tests).
	probes atomic.Int64
	// probing is set while a background prober asks Redis (probe); done
	// is closed by Close.
	probing atomic.Bool
	done    chan struct{}
	// probeKey is the prober's bucket key, in the hash tag of the first
	// key of the latest decision Redis failed (its shard, on a cluster).
	probeKey atomic.Pointer[string]
	local    *localBuckets
	// blocked lists addresses this instance saw run out of ip-tier tokens.
	blocked *blockList
	pipe    *pipeliner
	shapes  shapeArgs
}

// Degradation handling.
const (
	// probeEvery is how long Redis is left alone after a failure before
	// one request (only one) tries it again.
	probeEvery = time.Second
	// warnEvery bounds the degradation warning to one per interval.
	warnEvery = 30 * time.Second
)

// NewLimiter returns a Limiter on rdb; keys start with prefix.
func NewLimiter(rdb redis.UniversalClient, prefix string, timeout time.Duration, log *zap.Logger) *Limiter {
	if log == nil {
		log = zap.NewNop()
	}
	l := &Limiter{rdb: rdb, prefix: prefix, timeout: timeout, log: log, now: time.Now, local: newLocalBuckets(), blocked: newBlockList(),
		pipe: newPipeliner(rdb), done: make(chan struct{})}
	live.Lock()
	live.set[l] = struct{}{}
	live.Unlock()
	return l
}

// Close stops the pipeliner and closes the Redis client; later calls do
// nothing.
func (l *Limiter) Close() error {
	var err error
	l.closeOnce.Do(func() {
		live.Lock()
		delete(live.set, l)
		live.Unlock()
		close(l.done)
		l.pipe.close()
		err = l.rdb.Close()
	})
	return err
}

// Destruct implements caddy.Destructor.
func (l *Limiter) Destruct() error { return l.Close() }

// bucketKind starts every bucket key with the encoding of bucket.lua's
// values (b2: one 16-byte string), so that a Caddy still running the
// earlier version, which keeps a hash per bucket, never meets these keys
// during a switch of versions (it would fail open on them, WRONGTYPE).
const bucketKind = "b2:"

// IPKey is the bucket key of a client address (with its bucket's shape
// before it, when not the posture's); the hash tag keeps each key's
// bucket whole on a cluster.
func (l *Limiter) IPKey(ip string) string { return l.prefix + bucketKind + "ip:{" + ip + "}" }

// AccountKey is the bucket of a customer.
func (l *Limiter) AccountKey(customer string) string {
	return l.prefix + bucketKind + "{a:" + customer + "}"
}

// CredentialKey is the bucket of one key or session of a customer: it
// shares the account's hash tag, so both buckets live in one slot and one
// script can charge them atomically on Redis Cluster.
func (l *Limiter) CredentialKey(customer, credential string) string {
	return l.prefix + bucketKind + "{a:" + customer + "}:c:" + credential
}

// Take takes one token from every bucket of keys, or from none. When Redis
// cannot answer in time, it decides with in-memory buckets if local is
// set (brute-force surfaces), and otherwise lets the request through.
// keys and buckets pair up: one bucket shape per key, at least one, all
// keys with one hash tag (IPKey alone, or CredentialKey with AccountKey).
func (l *Limiter) Take(ctx context.Context, keys []string, buckets []Bucket, local bool) Decision {
	// Either is a caller's fault, and in a batch it would fail every
	// decision sent with this one (misaligned script arguments, or a
	// script call across slots on a cluster).
	if len(keys) != len(buckets) || len(keys) == 0 {
		panic(fmt.Sprintf("rate limiter: %d keys for %d buckets", len(keys), len(buckets)))
	}
	tag := hashTag(keys[0])
	for _, k := range keys[1:] {
		if hashTag(k) != tag {
			panic(fmt.Sprintf("rate limiter: keys %q and %q have different hash tags", keys[0], k))
		}
	}
	now := l.now()
	// While Redis is marked down, one request a probeEvery tries it (the
	// one that moves downUntil on); the others decide without it rather
	// than each wait out the deadline on a Redis that may hang.
	if until := l.downUntil.Load(); l.nanos(now) >= until &&
		(until == 0 || l.downUntil.CompareAndSwap(until, l.nanos(now.Add(probeEvery)))) {
		if until != 0 {
			l.probes.Add(1)
		}
		d, err := l.takeRedis(ctx, keys, buckets)
		if err == nil {
			l.answered(now)
			if local {
				// Redis and the in-memory buckets keep one count: should
				// Redis fail next, the in-memory ones go on from what it
				// left, not from full; and what they allowed while it was
				// away, which Redis never saw, still counts once it is
				// back. A Redis that flaps under a flood must not give an
				// address its budget twice.
				d = l.local.reconcile(now, keys, buckets, d)
			}
			return d
		}
		// A closed limiter (its config replaced while this request ran)
		// says nothing about Redis, and neither does the request's own
		// end (its client went away): decide without Redis, but do not
		// mark it down. Otherwise a client closing its connections would
		// switch limiting off for everyone (and the gauge is shared with
		// a new config's limiter).
		if l.callerEnded(ctx, now) || errors.Is(err, errPipelineClosed) {
			// Nor is it a degradation to page anyone about.
			metrics.decisions.WithLabelValues(sourceAbandoned).Inc()
			return l.decideWithout(now, keys, buckets, local)
		}
		// A copy, not a pointer into the caller's slice.
		probe := l.prefix + bucketKind + "probe:{" + hashTag(keys[0]) + "}"
		l.probeKey.Store(&probe)
		l.degrade(now, err)
	}
	if local {
		metrics.decisions.WithLabelValues(SourceLocal).Inc()
	} else {
		metrics.decisions.WithLabelValues(SourceOpen).Inc()
	}
	return l.decideWithout(now, keys, buckets, local)
}

// decideWithout decides without Redis: by the in-memory buckets if local,
// else by letting the request through.
func (l *Limiter) decideWithout(now time.Time, keys []string, buckets []Bucket, local bool) Decision {
	if local {
		return l.local.take(now, keys, buckets)
	}
	return Decision{Allowed: true, Source: SourceOpen}
}

// nanos is t as the down marks count time (mono.Nanos): a step of the
// wall clock moves no mark.
func (l *Limiter) nanos(t time.Time) int64 { return mono.Nanos(t) }

// callerEnded reports whether a call begun at began ended for its caller's
// reasons: the context is done, or the context's deadline, sooner than the
// limiter's own, has passed (the wait's timer may fire before the context
// notices its deadline). Such a call says nothing about Redis.
func (l *Limiter) callerEnded(ctx context.Context, began time.Time) bool {
	if ctx.Err() != nil {
		return true
	}
	d, ok := ctx.Deadline()
	return ok && d.Before(began.Add(l.timeout)) && !time.Now().Before(d)
}

// storeLater sets a to t unless it holds a later time already.
func storeLater(a *atomic.Int64, t int64) {
	for last := a.Load(); t > last; last = a.Load() {
		if a.CompareAndSwap(last, t) {
			return
		}
	}
}

// answered records a decision Redis answered, of a call begun at began: it
// clears the down mark, unless a call begun later has failed since (that
// one knows more about Redis now than this one).
func (l *Limiter) answered(began time.Time) {
	storeLater(&l.lastOK, l.nanos(began))
	if l.downUntil.Load() == 0 {
		return // up: the usual case, without the lock
	}
	l.stateMu.Lock()
	defer l.stateMu.Unlock()
	if l.downUntil.Load() == 0 || l.nanos(began) <= l.lastFail {
		return
	}
	l.downUntil.Store(0)
	// Once per warnEvery, as the warning: a flapping Redis must not fill
	// the log.
	if last := l.lastUp.Load(); l.nanos(began)-last >= int64(warnEvery) && l.lastUp.CompareAndSwap(last, l.nanos(began)) {
		l.log.Info("rate limiter: Redis answers again; limiting by Redis resumed")
	}
}

// probe asks Redis every probeEvery while it is marked down, so that the
// mark, redis_up and the alert on it clear once Redis is back even on a
// limiter no request uses meanwhile (a route seldom taken, re-auth's,
// would otherwise report Redis down until its next request). It asks as
// a request would: a decision by the bucket script, on a bucket of its
// own in the hash tag of the key that failed. A PING would pass on a
// Redis that refuses the script's writes (out of memory, MISCONF,
// LOADING, READONLY) and, on a cluster, on another shard than the one
// that is down.
func (l *Limiter) probe() {
	t := time.NewTicker(probeEvery)
	defer t.Stop()
	for {
		select {
		case <-l.done:
			l.probing.Store(false)
			return
		case <-t.C:
		}
		if l.downUntil.Load() == 0 {
			l.probing.Store(false)
			// A failure that came just now found probing still set: go
			// on for it.
			if l.downUntil.Load() == 0 || !l.probing.CompareAndSwap(false, true) {
				return
			}
			continue
		}
		began := time.Now() // l.now is the request path's (tests move it)
		key := l.prefix + bucketKind + "probe"
		if k := l.probeKey.Load(); k != nil {
			key = *k
		}
		_, err := l.takeRedis(context.Background(), []string{key}, probeBucket)
		if err == nil {
			l.answered(began)
		}
	}
}

// probeBucket is the prober's bucket: one that never runs out.
var probeBucket = []Bucket{{Capacity: 1e9, Rate: 1e9}}

// degrade records a Redis failure of a call begun at began: requests skip
// Redis for probeEvery, the metric shows it, and a warning is logged at
// most once per warnEvery. A call that began before one Redis has
// answered since says nothing about Redis now: a timeout of the outage,
// reported after Redis came back, would otherwise switch Redis off again
// for probeEvery.
func (l *Limiter) degrade(began time.Time, err error) {
	l.stateMu.Lock()
	if l.nanos(began) <= l.lastOK.Load() {
		l.stateMu.Unlock()
		return
	}
	l.lastFail = max(l.lastFail, l.nanos(began))
	l.downUntil.Store(l.nanos(began.Add(probeEvery)))
	// An answer to a later call that came meanwhile may have found no
	// mark yet and left without the lock: clear the mark for it. (It
	// stores lastOK before it looks at the mark, and this looks at
	// lastOK after storing the mark, so one of the two sees the other.)
	up := l.lastOK.Load() > l.lastFail
	if up {
		l.downUntil.Store(0)
	}
	l.stateMu.Unlock()
	if !up && l.probing.CompareAndSwap(false, true) {
		go l.probe()
	}
	metrics.redisErrors.Inc()
	if up {
		return
	}
	last := l.lastWarn.Load()
	if l.nanos(began)-last >= int64(warnEvery) && l.lastWarn.CompareAndSwap(last, l.nanos(began)) {
		l.log.Warn("rate limiter: Redis unreachable or slow; failing open (brute-force routes use per-instance buckets)",
			zap.Error(err), zap.Duration("next_warning_after", warnEvery))
	}
}

var errReply = errors.New("rate limiter: unexpected script reply")

// bucketSHA is the script's EVALSHA argument, boxed once.
var bucketSHA any = bucketScript.Hash()

func (l *Limiter) takeRedis(ctx context.Context, keys []string, buckets []Bucket) (Decision, error) {
	shapes, nowMs := l.scriptArgs(buckets)
	// One decision of a batch of concurrent requests' (one EVALSHA, or
	// EVAL, which loads the script, on NOSCRIPT).
	res, err := l.pipe.run(ctx, l.timeout, keys, shapes, nowMs)
	if err != nil {
		return Decision{}, err
	}
	return decode(res, buckets)
}

// scriptArgs returns a decision's arguments for bucket.lua: the buckets'
// capacities and rates, and the script's clock (-1: Redis's own).
func (l *Limiter) scriptArgs(buckets []Bucket) (shapes []any, nowMs int64) {
	shapes = make([]any, 0, 2*len(buckets))
	for _, b := range buckets {
		capacity, rate := l.shapes.get(b)
		shapes = append(shapes, capacity, rate)
	}
	nowMs = -1
	if l.scriptNow != nil {
		nowMs = l.scriptNow()
	}
	return shapes, nowMs
}

// maxShapes bounds the bucket shapes whose arguments are kept boxed; a
// limiter sees a handful (one per configured tier).
const maxShapes = 64

// shapeArgs keeps the script arguments of bucket shapes boxed: a float64
// put in an interface is an allocation, per bucket and decision.
type shapeArgs struct {
	mu   sync.Mutex                 // serialises additions
	list atomic.Pointer[[]shapeArg] // read without the lock
}

type shapeArg struct {
	b              Bucket
	capacity, rate any
}

// get returns b's capacity and rate as script arguments.
func (s *shapeArgs) get(b Bucket) (capacity, rate any) {
	if p := s.list.Load(); p != nil {
		for _, e := range *p {
			if e.b == b {
				return e.capacity, e.rate
			}
		}
	}
	e := shapeArg{b: b, capacity: b.Capacity, rate: b.Rate}
	s.mu.Lock()
	defer s.mu.Unlock()
	var cur []shapeArg
	if p := s.list.Load(); p != nil {
		cur = *p
	}
	if len(cur) < maxShapes && !slices.ContainsFunc(cur, func(x shapeArg) bool { return x.b == b }) {
		next := append(slices.Clip(cur), e)
		s.list.Store(&next)
	}
	return e.capacity, e.rate
}

// decode turns the script's reply into a Decision.
func decode(res []int64, buckets []Bucket) (Decision, error) {
	if len(res) != 1+3*len(buckets) {
		return Decision{}, fmt.Errorf("%w: %d values for %d buckets", errReply, len(res), len(buckets))
	}
	d := Decision{Allowed: res[0] == 1, Remaining: math.MaxInt, Source: SourceRedis}
	for i, b := range buckets {
		remaining, full, retry := res[1+3*i], res[2+3*i], res[3+3*i]
		if i < len(d.each) {
			d.each[i] = left(b, remaining, full)
			d.short[i] = retry > 0 // a wait for a token: under one held
		}
		if int(remaining) < d.Remaining {
			d.Remaining, d.Limit, d.Reset = int(remaining), int(b.Capacity), time.Duration(full)*time.Millisecond
		}
		if r := time.Duration(retry) * time.Millisecond; r > d.RetryAfter {
			d.RetryAfter = r
		}
	}
	d.Remaining = max(d.Remaining, 0)
	return d, nil
}

// left is how many tokens the script left in bucket b, from its reply's
// whole tokens (floored) and milliseconds until full (rounded up): the
// bucket held t with cap - full*rate/1000 <= t < cap - (full-1)*rate/1000
// and remaining <= t < remaining+1. The upper bound is returned, so an
// in-memory bucket going on from it is never stricter than Redis.
func left(b Bucket, remaining, full int64) float64 {
	t := b.Capacity - float64(full-1)*b.Rate/1000
	return max(min(t, float64(remaining)+1, b.Capacity), 0)
}

// localBuckets are per-instance token buckets for when Redis is down.
type localBuckets struct {
	mu sync.Mutex
	m  map[string]*localBucket
}

type localBucket struct {
	tokens float64
	at     time.Time
	fullAt time.Time // from then on the bucket is as good as absent
}

const maxLocalBuckets = 100_000

func newLocalBuckets() *localBuckets { return &localBuckets{m: map[string]*localBucket{}} }

// bound keeps the map under maxLocalBuckets; lb.mu is held.
func (lb *localBuckets) bound(now time.Time) {
	if len(lb.m) < maxLocalBuckets {
		return
	}
	// Full buckets first: forgetting one changes nothing. Forgetting one
	// in use would refill it, the very bucket of an address that emptied
	// it guessing.
	for k, b := range lb.m {
		if !now.Before(b.fullAt) {
			delete(lb.m, k)
		}
	}
	// Still too many in use: the map must stay bounded all the same.
	for k := range lb.m {
		if len(lb.m) < maxLocalBuckets*3/4 {
			break
		}
		delete(lb.m, k)
	}
}

// reconcile joins Redis's decision d over keys with the in-memory
// buckets and returns the decision both allow: each bucket is left with
// the fewer of the tokens Redis left in it and those the in-memory one
// holds, less the one this request takes; an in-memory bucket that is
// empty (spent while Redis was away) refuses what Redis allowed.
func (lb *localBuckets) reconcile(now time.Time, keys []string, buckets []Bucket, d Decision) Decision {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	lb.bound(now)
	refusedHere := false // by an in-memory bucket, Redis having allowed
	for i, k := range keys {
		c := buckets[i]
		if i >= len(d.each) {
			break // Take's callers pass one or two keys
		}
		tokens := min(c.Capacity, d.each[i])
		if b := lb.m[k]; b != nil {
			held := min(c.Capacity, b.tokens+max(now.Sub(b.at).Seconds(), 0)*c.Rate)
			if held < 1 && (d.Allowed || refusedHere) {
				d.short[i] = true // Redis's buckets held a token: this one refuses
			}
			if d.Allowed && held < 1 {
				refusedHere = true
				d.Allowed, d.Remaining, d.Limit = false, 0, int(c.Capacity)
				d.Reset = time.Duration((c.Capacity - held) / c.Rate * float64(time.Second))
				d.RetryAfter = time.Duration((1 - held) / c.Rate * float64(time.Second))
			} else if d.Allowed {
				held--
			}
			tokens = min(tokens, held)
		}
		if tokens >= c.Capacity {
			delete(lb.m, k) // full: as good as absent
			continue
		}
		b := lb.m[k]
		if b == nil {
			b = &localBucket{}
			lb.m[k] = b
		}
		b.tokens, b.at = tokens, now
		b.fullAt = now.Add(time.Duration((c.Capacity - tokens) / c.Rate * float64(time.Second)))
	}
	return d
}

// take is the script's algorithm in memory.
func (lb *localBuckets) take(now time.Time, keys []string, buckets []Bucket) Decision {
	lb.mu.Lock()
	defer lb.mu.Unlock()
	lb.bound(now)
	d := Decision{Allowed: true, Remaining: math.MaxInt, Source: SourceLocal}
	state := make([]*localBucket, len(keys))
	for i, k := range keys {
		b := lb.m[k]
		if b == nil {
			b = &localBucket{tokens: buckets[i].Capacity, at: now}
			lb.m[k] = b
		}
		if now.After(b.at) {
			b.tokens = min(buckets[i].Capacity, b.tokens+now.Sub(b.at).Seconds()*buckets[i].Rate)
			b.at = now
		}
		state[i] = b
		if b.tokens < 1 {
			d.Allowed = false
			if i < len(d.short) {
				d.short[i] = true
			}
		}
	}
	for i, b := range state {
		if d.Allowed {
			b.tokens--
		}
		b.fullAt = now.Add(time.Duration((buckets[i].Capacity - b.tokens) / buckets[i].Rate * float64(time.Second)))
		if r := int(b.tokens); r < d.Remaining {
			d.Remaining, d.Limit = r, int(buckets[i].Capacity)
			d.Reset = time.Duration((buckets[i].Capacity - b.tokens) / buckets[i].Rate * float64(time.Second))
		}
		if b.tokens < 1 {
			if r := time.Duration((1 - b.tokens) / buckets[i].Rate * float64(time.Second)); r > d.RetryAfter {
				d.RetryAfter = r
			}
		}
	}
	d.Remaining = max(d.Remaining, 0)
	return d
}

// seconds renders a duration as whole seconds, rounded up (header values).
func seconds(d time.Duration) string {
	return strconv.FormatInt(int64(math.Ceil(d.Seconds())), 10)
}
