package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// maxBatch bounds the decisions sent together.
const maxBatch = 256

// call is one decision waiting for its place in a batch.
type call struct {
	keys   []string
	shapes []any // per key: capacity, rate (boxed once, Limiter.shapes)
	// nowMs is the script's clock in ms (tests), or -1 for Redis's own.
	nowMs    int64
	deadline time.Time
	res      chan callResult
}

// calls are reused once their caller has read the answer (never before:
// the loop may still answer a call its caller stopped waiting for).
var calls = sync.Pool{New: func() any { return &call{res: make(chan callResult, 1)} }}

type callResult struct {
	vals []int64
	err  error
}

// pipeliner sends the decisions of concurrent requests to Redis together:
// one goroutine takes whatever is queued (up to maxBatch) and decides it
// with one script call (bucket.lua decides a batch in order, each decision
// atomic), so a busy edge pays one round trip, one script call and one
// read and write per bucket for many requests instead of one each per
// request. On Redis Cluster (or any client but a single Redis's) the
// batch is split by hash tag, one call per tag, all in one pipeline. A lone request goes out at once, so an idle
// edge waits no longer than before.
type pipeliner struct {
	rdb   redis.UniversalClient
	split bool // split batches by hash tag: the client shards by it
	in    chan *call
	stop  chan struct{}
	done  chan struct{}
}

func newPipeliner(rdb redis.UniversalClient) *pipeliner {
	// A single Redis takes any batch whole; a cluster, a ring or anything
	// else that may route a command by its first key's hash tag gets
	// one call per tag.
	_, single := rdb.(*redis.Client)
	p := &pipeliner{rdb: rdb, split: !single, in: make(chan *call, 4*maxBatch), stop: make(chan struct{}), done: make(chan struct{})}
	go p.loop()
	return p
}

func (p *pipeliner) close() {
	close(p.stop)
	<-p.done
}

var errPipelineClosed = errors.New("rate limiter: closed")

// timers are reused across decisions: a context.WithTimeout per decision
// cost a fifth of the limiter's CPU (a context, a timer, and registering
// with the request's context and removing again).
var timers = sync.Pool{New: func() any {
	t := time.NewTimer(time.Hour)
	t.Stop()
	return t
}}

// run queues one decision over keys (shapes: their capacities and rates;
// nowMs: the script's clock, or -1) and waits for its answer (the
// script's values for it), for ctx's end, or for timeout to pass
// (context.DeadlineExceeded).
func (p *pipeliner) run(ctx context.Context, timeout time.Duration, keys []string, shapes []any, nowMs int64) ([]int64, error) {
	deadline := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	select {
	case <-p.stop: // select below picks at random among ready cases
		return nil, errPipelineClosed
	default:
	}
	timer := timers.Get().(*time.Timer)
	timer.Reset(time.Until(deadline))
	defer func() {
		timer.Stop() // since Go 1.23 no stale tick survives Stop
		timers.Put(timer)
	}()
	c := calls.Get().(*call)
	c.keys, c.shapes, c.nowMs, c.deadline = keys, shapes, nowMs, deadline
	select {
	case p.in <- c:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-timer.C:
		return nil, context.DeadlineExceeded
	case <-p.stop:
		return nil, errPipelineClosed
	}
	select {
	case r := <-c.res:
		c.keys, c.shapes = nil, nil
		calls.Put(c)
		return r.vals, r.err
	case <-ctx.Done():
		return nil, ctx.Err() // the answer, when it comes, is dropped
	case <-timer.C:
		return nil, context.DeadlineExceeded
	case <-p.done:
		// The loop has stopped (a config reload closed this limiter):
		// a call it did not take will never be answered.
		select {
		case r := <-c.res:
			return r.vals, r.err
		default:
			return nil, errPipelineClosed
		}
	}
}

func (p *pipeliner) loop() {
	defer close(p.done)
	batch := make([]*call, 0, maxBatch)
	for {
		var first *call
		select {
		case first = <-p.in:
		case <-p.stop:
			return
		}
		batch = append(batch[:0], first)
		// Let the requests already runnable reach their decisions first:
		// at 128 requests in flight this made ~22 decisions per round trip
		// instead of ~8, and cut Redis's CPU per decision by a quarter.
		// Alone, it costs a lone decision well under a microsecond.
		runtime.Gosched()
	fill:
		for len(batch) < maxBatch {
			select {
			case c := <-p.in:
				batch = append(batch, c)
			default:
				break fill
			}
		}
		p.send(batch)
	}
}

// send decides a batch, bounded by the latest deadline in it (each
// caller also stops waiting at its own).
func (p *pipeliner) send(batch []*call) {
	deadline := batch[0].deadline
	for _, c := range batch[1:] {
		if c.deadline.After(deadline) {
			deadline = c.deadline
		}
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	groups := [][]*call{batch}
	if p.split {
		groups = byHashTag(batch)
	}
	cmds := make([]*redis.Cmd, len(groups))
	for i, g := range groups {
		cmds[i] = scriptCmd(ctx, "evalsha", bucketSHA, g)
	}
	if len(cmds) == 1 {
		_ = p.rdb.Process(ctx, cmds[0])
	} else {
		pipe := p.rdb.Pipeline()
		for _, cmd := range cmds {
			_ = pipe.Process(ctx, cmd)
		}
		_, _ = pipe.Exec(ctx)
	}
	for i, g := range groups {
		vals, err := cmds[i].Int64Slice()
		if err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") {
			// Redis forgot the script (restart, SCRIPT FLUSH): EVAL loads it.
			cmd := scriptCmd(ctx, "eval", bucketLua, g)
			_ = p.rdb.Process(ctx, cmd)
			vals, err = cmd.Int64Slice()
		}
		answer(g, vals, err)
	}
}

// scriptCmd is the script call (verb EVALSHA or EVAL, with the script's
// hash or source) deciding g, in bucket.lua's layout.
func scriptCmd(ctx context.Context, verb string, script any, g []*call) *redis.Cmd {
	nkeys, nargs := 0, 1
	var nowMs int64 = -1
	for _, c := range g {
		nkeys += len(c.keys)
		nargs += 1 + len(c.shapes)
		nowMs = max(nowMs, c.nowMs)
	}
	args := make([]any, 0, 3+nkeys+nargs)
	args = append(args, verb, script, nkeys)
	for _, c := range g {
		for _, k := range c.keys {
			args = append(args, k)
		}
	}
	var now any = ""
	if nowMs >= 0 {
		now = strconv.FormatInt(nowMs, 10)
	}
	args = append(args, now)
	for _, c := range g {
		args = append(args, len(c.keys))
		args = append(args, c.shapes...)
	}
	cmd := redis.NewCmd(ctx, args...)
	cmd.SetFirstKeyPos(3) // where Redis Cluster finds the slot
	return cmd
}

// answer hands each call of g its share of the script's values, or err.
func answer(g []*call, vals []int64, err error) {
	if err == nil {
		want := 0
		for _, c := range g {
			want += 1 + 3*len(c.keys)
		}
		if len(vals) != want {
			err = fmt.Errorf("%w: %d values for %d", errReply, len(vals), want)
		}
	}
	off := 0
	for _, c := range g {
		if err != nil {
			c.res <- callResult{err: err}
			continue
		}
		n := 1 + 3*len(c.keys)
		c.res <- callResult{vals: vals[off : off+n : off+n]}
		off += n
	}
}

// byHashTag splits a batch into calls whose first keys share a hash tag
// (so one script call may touch them all on Redis Cluster), keeping the
// batch's order within each. A decision's own keys share their tag
// (Limiter's keys are built so, and Take refuses others).
func byHashTag(batch []*call) [][]*call {
	var groups [][]*call
	index := map[string]int{}
	for _, c := range batch {
		tag := ""
		if len(c.keys) > 0 {
			tag = hashTag(c.keys[0])
		}
		i, ok := index[tag]
		if !ok {
			i = len(groups)
			index[tag] = i
			groups = append(groups, nil)
		}
		groups[i] = append(groups[i], c)
	}
	return groups
}

// hashTag is the part of key Redis Cluster hashes: what is between the
// first "{" and the next "}" when that is not empty, else the whole key.
func hashTag(key string) string {
	if s := strings.IndexByte(key, '{'); s >= 0 {
		if e := strings.IndexByte(key[s+1:], '}'); e > 0 {
			return key[s+1 : s+1+e]
		}
	}
	return key
}
