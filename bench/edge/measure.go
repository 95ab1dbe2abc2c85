package main

import (
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"time"

	"github.com/glassmkr/guardian/bench/internal/harness"
)

// phaseSpec is one load shape every configuration is driven with.
type phaseSpec struct {
	Name        string  `json:"name"`
	Open        bool    `json:"open_loop"`
	Concurrency int     `json:"concurrency,omitempty"`   // closed loop: requests in flight
	Rate        float64 `json:"rate,omitempty"`          // open loop: requests per second
	Fraction    float64 `json:"fraction_of_a,omitempty"` // open loop: the rate as a share of a's saturation req/s, when given so
}

// cpuSplit is CPU time in microseconds, by process.
type cpuSplit struct {
	Client   float64 `json:"client"`
	Caddy    float64 `json:"caddy"`
	Function float64 `json:"function"`
	Redis    float64 `json:"redis"`
	Postgres float64 `json:"postgres"`
}

func (c cpuSplit) sum() float64 { return c.Client + c.Caddy + c.Function + c.Redis + c.Postgres }

func (c cpuSplit) plus(d cpuSplit) cpuSplit {
	return cpuSplit{c.Client + d.Client, c.Caddy + d.Caddy, c.Function + d.Function, c.Redis + d.Redis, c.Postgres + d.Postgres}
}

func (c cpuSplit) per(n float64) cpuSplit {
	if n == 0 {
		return cpuSplit{}
	}
	r := func(x float64) float64 { return math.Round(x/n*10) / 10 }
	return cpuSplit{r(c.Client), r(c.Caddy), r(c.Function), r(c.Redis), r(c.Postgres)}
}

// roundResult is one configuration driven once.
type roundResult struct {
	Config     string             `json:"config"`
	Rep        int                `json:"rep"`
	Seconds    float64            `json:"seconds"`
	RPS        float64            `json:"rps"`
	Sent       int                `json:"sent"`
	OK         int                `json:"ok"`
	Errors     int                `json:"errors"`
	Dropped    int                `json:"dropped,omitempty"`
	P50Ms      float64            `json:"p50_ms"`
	P99Ms      float64            `json:"p99_ms"`
	P999Ms     float64            `json:"p999_ms"`
	LagP99Ms   float64            `json:"lag_p99_ms,omitempty"`
	RedisRT    float64            `json:"redis_round_trips"`
	RedisCmds  float64            `json:"redis_commands"`
	RedisEval  float64            `json:"redis_evalsha"`
	RedisByCmd map[string]float64 `json:"redis_commands_by_name,omitempty"`
	PGStmts    float64            `json:"pg_statements"`
	PGCopies   float64            `json:"pg_copies"`
	AuditRows  int64              `json:"audit_rows"`
	// From Caddy's /metrics: limiter decisions made without Redis (fail
	// open), limiter calls to Redis that failed or timed out, audit rows
	// spooled to disk instead of PostgreSQL.
	LimiterNoRedis float64  `json:"limiter_decisions_without_redis"`
	RedisErrors    float64  `json:"limiter_redis_errors"`
	AuditSpooled   float64  `json:"audit_rows_spooled"`
	CPUus          cpuSplit `json:"cpu_us"`
	PeakRSSKiB     int64    `json:"caddy_peak_rss_kib"`
	// OthersBusy is the share of all CPUs used during the round by
	// processes other than those measured (the machine's noise).
	OthersBusy float64 `json:"others_busy"`

	latencies, lags []time.Duration
}

// configResult is a configuration's rounds of one phase, summed up.
type configResult struct {
	Config string `json:"config"`
	// Concurrency: in the saturation summary, the closed loop's
	// concurrency at which the configuration reached its best req/s.
	Concurrency int       `json:"concurrency,omitempty"`
	RPS         float64   `json:"rps_median"`
	RoundsRPS   []float64 `json:"rps_rounds"`
	Sent        int       `json:"sent"`
	Errors      int       `json:"errors"`
	Dropped     int       `json:"dropped"`
	// Latency percentiles over every request of every round.
	P50Ms    float64 `json:"p50_ms"`
	P99Ms    float64 `json:"p99_ms"`
	P999Ms   float64 `json:"p999_ms"`
	LagP99Ms float64 `json:"lag_p99_ms,omitempty"`
	// Ratios to configuration a in the same phase, and the latency added.
	RatioRPS    float64 `json:"rps_over_a"`
	RatioP50    float64 `json:"p50_over_a"`
	RatioP99    float64 `json:"p99_over_a"`
	RatioP999   float64 `json:"p999_over_a"`
	AddedP50Ms  float64 `json:"p50_added_ms"`
	AddedP99Ms  float64 `json:"p99_added_ms"`
	AddedP999Ms float64 `json:"p999_added_ms"`
	// Per request sent.
	RedisRTPerReq        float64            `json:"redis_round_trips_per_request"`
	RedisCmdsPerReq      float64            `json:"redis_commands_per_request"`
	RedisEvalPerReq      float64            `json:"redis_evalsha_per_request"`
	RedisByCmdPerReq     map[string]float64 `json:"redis_commands_by_name_per_request,omitempty"`
	PGStmtsPerReq        float64            `json:"pg_statements_per_request"`
	PGCopiesPerReq       float64            `json:"pg_copies_per_request"`
	LimiterNoRedisPerReq float64            `json:"limiter_decisions_without_redis_per_request"`
	RedisErrors          float64            `json:"limiter_redis_errors"`
	AuditSpooled         float64            `json:"audit_rows_spooled"`
	AuditRowsPerReq      float64            `json:"audit_rows_per_request"`
	AuditRowsPerSec      float64            `json:"audit_rows_per_second"`
	CPUusPerReq          cpuSplit           `json:"cpu_us_per_request"`
	// MachineBusy is the share of all CPUs the measured processes used.
	MachineBusy float64 `json:"machine_busy"`
	// OthersBusy is the share of all CPUs other processes used meanwhile.
	OthersBusy float64 `json:"others_busy"`
	PeakRSSMiB float64 `json:"caddy_peak_rss_mib"`
}

// phaseResult is every configuration driven with one load shape.
type phaseResult struct {
	phaseSpec
	Configs []configResult `json:"configs"`
	Rounds  []roundResult  `json:"rounds"`
	// Discarded are rounds repeated because the machine was noisy.
	Discarded []roundResult `json:"discarded_rounds,omitempty"`
}

func (p phaseResult) config(id string) (configResult, bool) {
	for _, c := range p.Configs {
		if c.Config == id {
			return c, true
		}
	}
	return configResult{}, false
}

// warmUp drives every configuration closed-loop once, unmeasured.
func (b *bench) warmUp(ctx context.Context, client *http.Client, o options) error {
	for _, c := range configs {
		fmt.Fprintf(os.Stderr, "warm-up %s for %s ...\n", c.Path, o.warmup)
		if w := harness.ClosedLoop(ctx, client, b.target(c), o.concurrencies[0], o.warmup); o.warmup > 0 && w.OK == 0 {
			return b.withLogTail(fmt.Errorf("warm-up of %s: no request succeeded (%d errors)", c.Path, w.Errors))
		}
	}
	return ctx.Err()
}

// runPhase drives every configuration o.reps times, interleaved: one
// round of each in turn, the order rotated by one per repetition.
func (b *bench) runPhase(ctx context.Context, client *http.Client, ph phaseSpec, o options) (phaseResult, error) {
	res := phaseResult{phaseSpec: ph}
	byConfig := map[string][]roundResult{}
	for rep := range o.reps {
		for i := range configs {
			c := configs[(i+rep)%len(configs)]
			r, err := b.round(ctx, client, c, ph, rep, o)
			for err == nil && o.noise > 0 && r.OthersBusy > o.noise && b.retries > 0 {
				b.retries--
				fmt.Fprintf(os.Stderr, "%-10s %d/%d %-3s other processes used %.0f%% of the CPUs: round repeated (%d repeats left)\n",
					ph.Name, rep+1, o.reps, c.ID, r.OthersBusy*100, b.retries)
				res.Discarded = append(res.Discarded, r)
				r, err = b.round(ctx, client, c, ph, rep, o)
			}
			if err != nil {
				return res, err
			}
			fmt.Fprintf(os.Stderr, "%-10s %d/%d %-3s %8.0f req/s  p50 %7.3f ms  p99 %7.3f ms  errors %d  dropped %d  others %.0f%%\n",
				ph.Name, rep+1, o.reps, c.ID, r.RPS, r.P50Ms, r.P99Ms, r.Errors, r.Dropped, r.OthersBusy*100)
			byConfig[c.ID] = append(byConfig[c.ID], r)
			res.Rounds = append(res.Rounds, r)
		}
	}
	for _, c := range configs {
		res.Configs = append(res.Configs, summarize(c.ID, byConfig[c.ID]))
	}
	base, _ := res.config("a")
	for i := range res.Configs {
		res.Configs[i].compare(base)
	}
	return res, nil
}

// round drives c once and reads what it cost.
func (b *bench) round(ctx context.Context, client *http.Client, c config, ph phaseSpec, rep int, o options) (roundResult, error) {
	fnPid := b.fnPid
	if c.ID == "a" {
		fnPid = b.bare.Pid()
	}
	runtime.GC()
	before, err := b.stack.read(ctx)
	if err != nil {
		return roundResult{}, err
	}
	edge0, err := b.edgeCounters(ctx)
	if err != nil {
		return roundResult{}, err
	}
	cpu0 := b.cpu(fnPid, before)
	caddyPid := b.caddy.Pid()
	if err := harness.ResetPeakRSS(caddyPid); err != nil {
		return roundResult{}, fmt.Errorf("reset Caddy's peak RSS: %w", err)
	}
	var prof <-chan error
	if o.profile != "" && rep == 0 && !ph.Open {
		prof = b.profileCaddy(ctx, filepath.Join(o.profile, fmt.Sprintf("caddy-%s-%s.pprof", ph.Name, c.ID)), o.duration)
	}
	var lr harness.Round
	if ph.Open {
		lr = harness.OpenLoop(ctx, client, b.target(c), ph.Rate, o.openDuration, o.maxInFlight)
	} else {
		lr = harness.ClosedLoop(ctx, client, b.target(c), ph.Concurrency, o.duration)
	}
	cpu1 := b.cpu(fnPid, before)
	peak := harness.ProcStatusKiB(caddyPid, "VmHWM")
	if prof != nil {
		if err := <-prof; err != nil {
			return roundResult{}, err
		}
	}
	if err := ctx.Err(); err != nil {
		return roundResult{}, err
	}
	if b.caddy.Exited() {
		return roundResult{}, b.withLogTail(fmt.Errorf("caddy exited during %s of %s", ph.Name, c.Path))
	}
	after, err := b.stack.read(ctx)
	if err != nil {
		return roundResult{}, err
	}
	edge1, err := b.edgeCounters(ctx)
	if err != nil {
		return roundResult{}, err
	}
	if after.postmaster != before.postmaster || after.redisPid != before.redisPid {
		return roundResult{}, fmt.Errorf("PostgreSQL or Redis restarted during %s of %s", ph.Name, c.Path)
	}
	slices.Sort(lr.Latencies)
	slices.Sort(lr.Lags)
	us := func(a, b time.Duration) float64 { return float64(a-b) / float64(time.Microsecond) }
	r := roundResult{
		Config: c.ID, Rep: rep + 1, Seconds: harness.Round3(lr.Elapsed.Seconds()), RPS: math.Round(lr.RPS()),
		Sent: lr.OK + lr.Errors, OK: lr.OK, Errors: lr.Errors, Dropped: lr.Dropped,
		P50Ms: harness.Ms(harness.Percentile(lr.Latencies, .50)), P99Ms: harness.Ms(harness.Percentile(lr.Latencies, .99)),
		P999Ms:  harness.Ms(harness.Percentile(lr.Latencies, .999)),
		RedisRT: after.redisReads - before.redisReads, RedisCmds: after.redisCmds - before.redisCmds, RedisEval: after.redisEval - before.redisEval,
		RedisByCmd: map[string]float64{},
		PGStmts:    after.pgStmts - before.pgStmts, PGCopies: after.pgCopies - before.pgCopies,
		AuditRows:      after.auditRows - before.auditRows,
		LimiterNoRedis: edge1.degraded - edge0.degraded, RedisErrors: edge1.redisErrors - edge0.redisErrors,
		AuditSpooled: edge1.spooled - edge0.spooled,
		CPUus: cpuSplit{
			Client: us(cpu1.client, cpu0.client), Caddy: us(cpu1.caddy, cpu0.caddy), Function: us(cpu1.fn, cpu0.fn),
			Redis: us(cpu1.redis, cpu0.redis), Postgres: us(cpu1.pg, cpu0.pg),
		},
		PeakRSSKiB: peak,
		OthersBusy: othersBusy(cpu0, cpu1, lr.Elapsed),
		latencies:  lr.Latencies, lags: lr.Lags,
	}
	for cmd, n := range after.redisByCmd {
		if d := n - before.redisByCmd[cmd]; d > 0 {
			r.RedisByCmd[cmd] = d
		}
	}
	if ph.Open {
		r.LagP99Ms = harness.Ms(harness.Percentile(lr.Lags, .99))
	}
	return r, nil
}

// procTimes is CPU time used so far by the load generator (this process),
// Caddy, the function serving the configuration, Redis and PostgreSQL
// (postmaster and backends).
type procTimes struct{ client, caddy, fn, redis, pg, machine time.Duration }

func (b *bench) cpu(fnPid int, c counters) procTimes {
	var t procTimes
	t.client = harness.SelfCPU()
	t.machine = harness.MachineBusy()
	t.caddy = harness.ProcCPU(b.caddy.Pid())
	t.fn = harness.ProcCPU(fnPid)
	if c.redisPid > 0 {
		t.redis = harness.ProcCPU(c.redisPid)
	}
	if c.postmaster > 0 {
		t.pg = harness.ChildrenCPU(c.postmaster)
	}
	return t
}

// summarize reduces a configuration's rounds: median rate, percentiles
// over all requests, counters per request.
func summarize(id string, rounds []roundResult) configResult {
	res := configResult{Config: id}
	var lat, lags []time.Duration
	var cpu cpuSplit
	var seconds, noRedis, redisRT, redisCmds, redisEval, pgStmts, pgCopies float64
	var auditRows int64
	byCmd := map[string]float64{}
	for _, r := range rounds {
		for cmd, n := range r.RedisByCmd {
			byCmd[cmd] += n
		}
		res.RoundsRPS = append(res.RoundsRPS, r.RPS)
		res.Sent += r.Sent
		res.Errors += r.Errors
		res.Dropped += r.Dropped
		lat = append(lat, r.latencies...)
		lags = append(lags, r.lags...)
		cpu = cpu.plus(r.CPUus)
		seconds += r.Seconds
		redisRT += r.RedisRT
		redisCmds += r.RedisCmds
		redisEval += r.RedisEval
		pgStmts += r.PGStmts
		pgCopies += r.PGCopies
		auditRows += r.AuditRows
		noRedis += r.LimiterNoRedis
		res.RedisErrors += r.RedisErrors
		res.AuditSpooled += r.AuditSpooled
		res.OthersBusy += r.OthersBusy * r.Seconds
		res.PeakRSSMiB = max(res.PeakRSSMiB, math.Round(float64(r.PeakRSSKiB)/1024*10)/10)
	}
	res.RPS = math.Round(harness.Median(res.RoundsRPS))
	slices.Sort(lat)
	slices.Sort(lags)
	res.P50Ms, res.P99Ms, res.P999Ms = harness.Ms(harness.Percentile(lat, .50)), harness.Ms(harness.Percentile(lat, .99)), harness.Ms(harness.Percentile(lat, .999))
	if len(lags) > 0 {
		res.LagP99Ms = harness.Ms(harness.Percentile(lags, .99))
	}
	if n := float64(res.Sent); n > 0 {
		per := func(x float64) float64 { return harness.Round3(x / n) }
		res.RedisRTPerReq, res.RedisCmdsPerReq, res.RedisEvalPerReq = per(redisRT), per(redisCmds), per(redisEval)
		res.PGStmtsPerReq, res.PGCopiesPerReq = per(pgStmts), per(pgCopies)
		res.AuditRowsPerReq = per(float64(auditRows))
		res.LimiterNoRedisPerReq = per(noRedis)
		if len(byCmd) > 0 {
			res.RedisByCmdPerReq = map[string]float64{}
			for cmd, x := range byCmd {
				res.RedisByCmdPerReq[cmd] = per(x)
			}
		}
		res.CPUusPerReq = cpu.per(n)
	}
	if seconds > 0 {
		res.AuditRowsPerSec = math.Round(float64(auditRows) / seconds)
		res.MachineBusy = harness.Round3(cpu.sum() / 1e6 / seconds / float64(runtime.NumCPU()))
		res.OthersBusy = harness.Round3(res.OthersBusy / seconds)
	}
	return res
}

// saturation is each configuration at its saturation: the closed-loop
// phase in which it reached its highest req/s, with that phase's rounds
// (so paired ratios pair rounds of one repetition) and ratios to a's own
// best. A configuration whose requests wait longer (a group commit, a
// shared pipeline) needs more requests in flight to keep the CPUs busy
// (Little's law), so one fixed concurrency would measure it below its
// saturation.
func saturation(closed []phaseResult) *phaseResult {
	if len(closed) == 0 {
		return nil
	}
	sat := &phaseResult{phaseSpec: phaseSpec{Name: "saturation"}}
	for i := range closed[0].Configs {
		best := closed[0]
		for _, p := range closed[1:] {
			if p.Configs[i].RPS > best.Configs[i].RPS {
				best = p
			}
		}
		c := best.Configs[i]
		c.Concurrency = best.Concurrency
		sat.Configs = append(sat.Configs, c)
		for _, r := range best.Rounds {
			if r.Config == c.Config {
				sat.Rounds = append(sat.Rounds, r)
			}
		}
	}
	base, _ := sat.config("a")
	for i := range sat.Configs {
		sat.Configs[i].compare(base)
	}
	return sat
}

// compare fills the ratios to, and the latency added over, base.
func (c *configResult) compare(base configResult) {
	div := func(a, b float64) float64 {
		if b == 0 {
			return 0
		}
		return harness.Round3(a / b)
	}
	c.RatioRPS, c.RatioP50, c.RatioP99, c.RatioP999 = div(c.RPS, base.RPS), div(c.P50Ms, base.P50Ms), div(c.P99Ms, base.P99Ms), div(c.P999Ms, base.P999Ms)
	c.AddedP50Ms, c.AddedP99Ms, c.AddedP999Ms = harness.Round3(c.P50Ms-base.P50Ms), harness.Round3(c.P99Ms-base.P99Ms), harness.Round3(c.P999Ms-base.P999Ms)
}

// pairedRatios returns num/den of each repetition's rounds of a phase
// (measured minutes apart at most, so machine drift mostly cancels).
func pairedRatios(p phaseResult, num, den string) []float64 {
	n, d := map[int]float64{}, map[int]float64{}
	for _, r := range p.Rounds {
		switch r.Config {
		case num:
			n[r.Rep] = r.RPS
		case den:
			d[r.Rep] = r.RPS
		}
	}
	var out []float64
	for rep := 1; rep <= len(n); rep++ {
		if d[rep] > 0 {
			out = append(out, harness.Round3(n[rep]/d[rep]))
		}
	}
	return out
}

// othersBusy is the share of all CPUs that processes other than the
// measured ones used between two readings.
func othersBusy(t0, t1 procTimes, elapsed time.Duration) float64 {
	if elapsed <= 0 || t0.machine == 0 || t1.machine == 0 {
		return 0
	}
	ours := (t1.client - t0.client) + (t1.caddy - t0.caddy) + (t1.fn - t0.fn) + (t1.redis - t0.redis) + (t1.pg - t0.pg)
	other := float64(t1.machine-t0.machine-ours) / float64(elapsed) / float64(runtime.NumCPU())
	return harness.Round3(max(other, 0))
}

// profileCaddy saves Caddy's CPU profile over the next d (whole seconds,
// as pprof takes them) to path, from its admin endpoint's /debug/pprof.
func (b *bench) profileCaddy(ctx context.Context, path string, d time.Duration) <-chan error {
	done := make(chan error, 1)
	go func() {
		url := fmt.Sprintf("http://localhost/debug/pprof/profile?seconds=%d", int(d/time.Second))
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			done <- err
			return
		}
		// The admin client's timeout is shorter than a round.
		client := *b.admin
		client.Timeout = d + 30*time.Second
		resp, err := client.Do(req)
		if err != nil {
			done <- fmt.Errorf("caddy CPU profile: %w", err)
			return
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			done <- fmt.Errorf("caddy CPU profile: status %d", resp.StatusCode)
			return
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
		if err == nil {
			err = os.WriteFile(path, body, 0o644)
		}
		if err != nil {
			err = fmt.Errorf("caddy CPU profile: %w", err)
		}
		done <- err
	}()
	return done
}
