package ratelimit

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// maxPipeline bounds the decisions sent in one pipeline.
const maxPipeline = 256

// call is one decision waiting for its place in a pipeline.
type call struct {
	cmd      []any // EVALSHA sha numkeys keys... args...
	nkeys    int
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
// one goroutine takes whatever is queued (up to maxPipeline) and sends it
// as one pipeline, so a busy edge pays one write and one read for many
// requests instead of a round trip each. A lone request goes out at once,
// so an idle edge waits no longer than before. Each decision is still one
// atomic script call.
type pipeliner struct {
	rdb  redis.UniversalClient
	in   chan *call
	stop chan struct{}
	done chan struct{}
}

func newPipeliner(rdb redis.UniversalClient) *pipeliner {
	p := &pipeliner{rdb: rdb, in: make(chan *call, 4*maxPipeline), stop: make(chan struct{}), done: make(chan struct{})}
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

// run queues one script call, cmd (EVALSHA with nkeys keys), and waits
// for its answer, for ctx's end, or for timeout to pass
// (context.DeadlineExceeded).
func (p *pipeliner) run(ctx context.Context, timeout time.Duration, cmd []any, nkeys int) ([]int64, error) {
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
	c.cmd, c.nkeys, c.deadline = cmd, nkeys, deadline
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
		c.cmd = nil
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
	batch := make([]*call, 0, maxPipeline)
	for {
		var first *call
		select {
		case first = <-p.in:
		case <-p.stop:
			return
		}
		batch = append(batch[:0], first)
	fill:
		for len(batch) < maxPipeline {
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

// send runs a batch as one pipeline, bounded by the latest deadline in it
// (each caller also stops waiting at its own).
func (p *pipeliner) send(batch []*call) {
	deadline := batch[0].deadline
	for _, c := range batch[1:] {
		if c.deadline.After(deadline) {
			deadline = c.deadline
		}
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	cmds := make([]*redis.Cmd, len(batch))
	pipe := p.rdb.Pipeline()
	for i, c := range batch {
		// As Script.EvalSha makes it, from the slice the caller built.
		cmds[i] = redis.NewCmd(ctx, c.cmd...)
		if c.nkeys > 0 {
			cmds[i].SetFirstKeyPos(3) // where Redis Cluster finds the slot
		}
		_ = pipe.Process(ctx, cmds[i])
	}
	_, _ = pipe.Exec(ctx)
	for i, c := range batch {
		vals, err := cmds[i].Int64Slice()
		if err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") {
			// Redis forgot the script (restart, SCRIPT FLUSH): EVAL loads it.
			keys := make([]string, c.nkeys)
			for j := range keys {
				keys[j], _ = c.cmd[3+j].(string)
			}
			vals, err = bucketScript.Eval(ctx, p.rdb, keys, c.cmd[3+c.nkeys:]...).Int64Slice()
		}
		c.res <- callResult{vals, err}
	}
}
