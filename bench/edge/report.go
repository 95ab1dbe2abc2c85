package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// report is every figure of a run.
type report struct {
	Time     string        `json:"time"`
	Machine  machine       `json:"machine"`
	Settings settings      `json:"settings"`
	Configs  []config      `json:"configs"`
	PGStats  string        `json:"pg_statistics_source"`
	Phases   []phaseResult `json:"phases"`
	// Saturation: each configuration in the closed-loop phase where it
	// reached its best req/s; the throughput targets compare these.
	Saturation *phaseResult   `json:"saturation,omitempty"`
	PeakRSSMiB float64        `json:"caddy_peak_rss_mib"`
	Discarded  int            `json:"rounds_repeated_for_noise"`
	Targets    []targetResult `json:"targets"`
	Micro      *microResult   `json:"micro,omitempty"`
	Warnings   []string       `json:"warnings,omitempty"`
}

type machine struct {
	CPUs     int    `json:"cpus"`
	CPUModel string `json:"cpu_model"`
	Kernel   string `json:"kernel"`
	Go       string `json:"go"`
	Postgres string `json:"postgres"`
	Redis    string `json:"redis"`
	// RedisPingP50us is the median loopback PING round trip, measured
	// before the rounds: the floor under the limiter's added latency.
	RedisPingP50us float64 `json:"redis_ping_p50_us,omitempty"`
}

type settings struct {
	Concurrency  []int   `json:"closed_loop_concurrencies"`
	RoundSeconds float64 `json:"closed_round_seconds"`
	OpenSeconds  float64 `json:"open_round_seconds"`
	WarmupS      float64 `json:"warmup_seconds"`
	Reps         int     `json:"reps"`
	MaxInFlight  int     `json:"open_loop_max_in_flight"`
	StackMode    string  `json:"stack_mode"`
	RedisSocket  bool    `json:"redis_socket"`
	Noise        float64 `json:"noise_threshold"`
	Retries      int     `json:"retries_budget"`
}

// targetResult is one of the targets, measured.
type targetResult struct {
	Name     string  `json:"name"`
	Value    float64 `json:"value"`
	Unit     string  `json:"unit"`
	Op       string  `json:"op"`
	Limit    float64 `json:"limit"`
	Pass     bool    `json:"pass"`
	Measured bool    `json:"measured"`
	// Void is set when a configuration the target compares was
	// overloaded (requests dropped or failed): the figure means nothing.
	Void   bool      `json:"void"`
	Paired []float64 `json:"paired_per_rep,omitempty"`
	// ByConcurrency is a throughput ratio in each closed-loop phase.
	ByConcurrency []string `json:"by_concurrency,omitempty"`
	// CPUEstimate is, for a throughput ratio x/y, y's CPU time per request
	// over x's (every measured process): what the ratio is on a machine
	// whose CPUs are the bottleneck, much less sensitive to noise.
	CPUEstimate float64 `json:"cpu_cost_estimate,omitempty"`
	// CPUEdgeEstimate is CPUEstimate without the load generator's CPU:
	// the generator costs every configuration the same per request, so
	// sharing the CPUs with it pulls every ratio toward 1. With the
	// clients on other machines, as in production, this is the ratio.
	CPUEdgeEstimate float64 `json:"cpu_cost_estimate_without_generator,omitempty"`
	Note            string  `json:"note,omitempty"`
}

// targets evaluates the targets on the phases: throughput
// ratios on the saturation summary (each configuration at its best
// concurrency), with each closed phase's own ratio beside them.
func (r *report) targets() {
	var half, thousand *phaseResult
	closed := r.Saturation
	for i := range r.Phases {
		p := &r.Phases[i]
		switch {
		case p.Open && p.Fraction == 0.5 && half == nil:
			half = p
		case p.Open && p.Fraction == 0 && p.Rate == 1000 && thousand == nil:
			thousand = p
		}
	}
	get := func(p *phaseResult, id string) configResult {
		if p == nil {
			return configResult{}
		}
		c, _ := p.config(id)
		return c
	}
	noise := r.Settings.Noise
	add := func(t targetResult, p *phaseResult, voidIfOverloaded bool, ids ...string) {
		t.Measured = p != nil
		var notes []string
		for _, id := range ids {
			c := get(p, id)
			if p == nil {
				break
			}
			if c.Dropped > 0 || c.Errors > 0 {
				notes = append(notes, fmt.Sprintf("%s overloaded (%d dropped, %d errors)", id, c.Dropped, c.Errors))
				t.Void = t.Void || voidIfOverloaded
			}
			if noise > 0 && c.OthersBusy > noise {
				notes = append(notes, fmt.Sprintf("%s noisy (others %.0f%%)", id, c.OthersBusy*100))
			}
		}
		if len(notes) > 0 {
			t.Note = strings.Join(notes, "; ")
		}
		if t.Measured && !t.Void {
			switch t.Op {
			case ">=":
				t.Pass = t.Value >= t.Limit
			case "<":
				t.Pass = t.Value < t.Limit
			}
		} else if !t.Measured {
			t.Note = "phase not run (see -open)"
		}
		r.Targets = append(r.Targets, t)
	}
	ratio := func(a, b float64) float64 {
		if b == 0 {
			return 0
		}
		return float64(int(a/b*1000+0.5)) / 1000
	}
	// throughput is num/den at saturation, paired per repetition, its CPU
	// estimate, and the same ratio in each closed phase.
	throughput := func(name, num, den string, limit float64) targetResult {
		t := targetResult{Name: name, Unit: "x", Op: ">=", Limit: limit}
		if closed == nil {
			return t
		}
		n, d := get(closed, num), get(closed, den)
		t.Value = ratio(n.RPS, d.RPS)
		t.Paired = pairedRatios(*closed, num, den)
		t.CPUEstimate = ratio(d.CPUusPerReq.sum(), n.CPUusPerReq.sum())
		t.CPUEdgeEstimate = ratio(d.CPUusPerReq.sum()-d.CPUusPerReq.Client, n.CPUusPerReq.sum()-n.CPUusPerReq.Client)
		for i := range r.Phases {
			if p := &r.Phases[i]; !p.Open {
				t.ByConcurrency = append(t.ByConcurrency, fmt.Sprintf("c=%d %.3f", p.Concurrency, ratio(get(p, num).RPS, get(p, den).RPS)))
			}
		}
		return t
	}
	add(throughput("full edge throughput at saturation: e / a", "e", "a", 0.7), closed, true, "a", "e")
	add(targetResult{Name: "p99 added by the full edge at 50% of a's saturation: p99(e) - p99(a)", Value: get(half, "e").AddedP99Ms, Unit: "ms", Op: "<", Limit: 1}, half, true, "a", "e")
	add(targetResult{Name: "Caddy peak RSS (VmHWM) while e runs at 1,000 req/s", Value: get(thousand, "e").PeakRSSMiB, Unit: "MiB", Op: "<", Limit: 150}, thousand, false, "e")
	add(throughput("limiter's cost at saturation: d / c", "d", "c", 0.85), closed, true, "c", "d")
	add(throughput("audit's cost at saturation: e / d", "e", "d", 0.9), closed, true, "d", "e")
	limiterP50 := targetResult{Name: "limiter's added p50 at 1,000 req/s: p50(d) - p50(c)", Value: float64(int((get(thousand, "d").P50Ms-get(thousand, "c").P50Ms)*1000+0.5)) / 1000, Unit: "ms", Op: "<", Limit: 0.1}
	add(limiterP50, thousand, true, "c", "d")
	if r.Machine.RedisPingP50us > 0 && thousand != nil {
		t := &r.Targets[len(r.Targets)-1]
		t.Note = strings.TrimPrefix(t.Note+fmt.Sprintf("; idle Redis PING p50 here %.0f us", r.Machine.RedisPingP50us), "; ")
	}
	add(targetResult{Name: "audit's added p50 at 1,000 req/s: p50(e) - p50(d)", Value: float64(int((get(thousand, "e").P50Ms-get(thousand, "d").P50Ms)*1000+0.5)) / 1000, Unit: "ms", Op: "<", Limit: 2}, thousand, true, "d", "e")
}

// print writes the human-readable tables.
func (r *report) print(w io.Writer) {
	fmt.Fprintf(w, "Guardian edge benchmark, %s\n", r.Time)
	m := r.Machine
	fmt.Fprintf(w, "machine: %d CPUs (%s), Linux %s, %s, PostgreSQL %s, Redis %s (idle PING round trip p50 %.0f us); load generator, Caddy, function and servers share these CPUs\n",
		m.CPUs, m.CPUModel, m.Kernel, m.Go, m.Postgres, m.Redis, m.RedisPingP50us)
	s := r.Settings
	mode := "durable (fsync on)"
	if s.StackMode == "test" {
		mode = "GUARDIAN_STACK_MODE=test (fsync off)"
	}
	conc := make([]string, len(s.Concurrency))
	for i, n := range s.Concurrency {
		conc[i] = strconv.Itoa(n)
	}
	redisWay := "TCP loopback"
	if s.RedisSocket {
		redisWay = "its unix socket"
	}
	fmt.Fprintf(w, "settings: %d reps per configuration and phase, interleaved; closed rounds %gs at %s concurrent; open rounds %gs (max %d in flight); PostgreSQL %s; Caddy reaches Redis over %s\n",
		s.Reps, s.RoundSeconds, strings.Join(conc, " and "), s.OpenSeconds, s.MaxInFlight, mode, redisWay)
	if s.Noise > 0 {
		fmt.Fprintf(w, "noise: a round during which other processes used more than %.0f%% of the CPUs was repeated (at most %d times in the run): %d repeated\n",
			s.Noise*100, s.Retries, r.Discarded)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Every configuration gets the same GET <path> with Authorization: Bearer <account key>, answered by testfn's /ok:")
	for _, c := range r.Configs {
		fmt.Fprintf(w, "  %-3s %-7s %s\n", c.ID, c.Path, c.Desc)
	}
	fmt.Fprintln(w)
	for i, p := range r.Phases {
		r.printPhase(w, p)
		if !p.Open && r.Saturation != nil && (i+1 == len(r.Phases) || r.Phases[i+1].Open) {
			r.printSaturation(w)
		}
	}
	r.printCosts(w)
	fmt.Fprintln(w, "Targets (ratios within this run; paired = the same ratio per repetition; cpu = the ratio of total CPU us per request, its noise-robust estimate;")
	fmt.Fprintln(w, "edge cpu = the same without the load generator's CPU, which is the same in every configuration and so pulls every ratio toward 1;")
	fmt.Fprintln(w, "VOID = a configuration compared was overloaded, so the figure means nothing)")
	for _, t := range r.Targets {
		verdict := "MISS"
		switch {
		case !t.Measured:
			verdict = "n/a "
		case t.Void:
			verdict = "VOID"
		case t.Pass:
			verdict = "met "
		}
		paired := ""
		if len(t.Paired) > 0 {
			paired = "  paired " + joinFloats(t.Paired, 3)
		}
		if t.CPUEstimate > 0 {
			paired += fmt.Sprintf("  cpu %.3f  edge cpu %.3f", t.CPUEstimate, t.CPUEdgeEstimate)
		}
		if len(t.ByConcurrency) > 1 {
			paired += "  by " + strings.Join(t.ByConcurrency, ", ")
		}
		if t.Note != "" {
			paired += "  [" + t.Note + "]"
		}
		fmt.Fprintf(w, "  %s  %-70s %8.3f %-3s (target %s %g)%s\n", verdict, t.Name, t.Value, t.Unit, t.Op, t.Limit, paired)
	}
	fmt.Fprintln(w)
	if mr := r.Micro; mr != nil {
		fmt.Fprintf(w, "Micro-benchmarks: %s\n", mr.Command)
		for _, l := range mr.lines {
			fmt.Fprintf(w, "  %s\n", l)
		}
		for _, m := range mr.Missing {
			fmt.Fprintf(w, "  no benchmark yet: %s\n", m)
		}
		if mr.Error != "" {
			fmt.Fprintf(w, "  FAILED: %s\n", mr.Error)
		}
		fmt.Fprintln(w)
	}
	for _, warn := range r.Warnings {
		fmt.Fprintf(w, "WARNING: %s\n", warn)
	}
}

func (r *report) printPhase(w io.Writer, p phaseResult) {
	if !p.Open {
		fmt.Fprintf(w, "Closed loop: %d concurrent requests, %d x %gs per configuration (req/s: median of the rounds; latency: over all requests)\n",
			p.Concurrency, r.Settings.Reps, r.Settings.RoundSeconds)
		fmt.Fprintf(w, "%-4s %8s %6s  %-20s %8s %6s %8s %6s %9s %6s %7s\n", "cfg", "req/s", "x a", "rounds", "p50 ms", "x a", "p99 ms", "x a", "p99.9 ms", "x a", "errors")
		for _, c := range p.Configs {
			fmt.Fprintf(w, "%-4s %8.0f %6.3f  %-20s %8.3f %6.2f %8.3f %6.2f %9.3f %6.2f %7d\n", c.Config, c.RPS, c.RatioRPS, joinFloats(c.RoundsRPS, 0),
				c.P50Ms, c.RatioP50, c.P99Ms, c.RatioP99, c.P999Ms, c.RatioP999, c.Errors)
		}
		fmt.Fprintln(w)
		return
	}
	how := ""
	if p.Fraction > 0 {
		how = fmt.Sprintf(" (%g%% of a's saturation req/s)", p.Fraction*100)
	}
	fmt.Fprintf(w, "Open loop at %.0f req/s%s, %d x %gs per configuration; +a = latency added over a; lag = how late the generator sent (p99)\n",
		p.Rate, how, r.Settings.Reps, r.Settings.OpenSeconds)
	fmt.Fprintf(w, "%-4s %8s %8s %6s %7s %8s %6s %7s %9s %6s %7s %6s %7s %7s  %s\n", "cfg", "sent/s", "p50 ms", "x a", "+a", "p99 ms", "x a", "+a", "p99.9 ms", "x a", "+a", "errors", "dropped", "lag ms", "p99 ms per round")
	for _, c := range p.Configs {
		fmt.Fprintf(w, "%-4s %8.0f %8.3f %6.2f %+7.3f %8.3f %6.2f %+7.3f %9.3f %6.2f %+7.3f %6d %7d %7.3f  %s\n", c.Config, c.RPS,
			c.P50Ms, c.RatioP50, c.AddedP50Ms, c.P99Ms, c.RatioP99, c.AddedP99Ms, c.P999Ms, c.RatioP999, c.AddedP999Ms, c.Errors, c.Dropped, c.LagP99Ms,
			joinFloats(roundP99(p, c.Config), 1))
	}
	fmt.Fprintln(w)
}

// printSaturation writes each configuration's best closed-loop req/s and
// the concurrency it was reached at.
func (r *report) printSaturation(w io.Writer) {
	fmt.Fprintln(w, "Saturation: each configuration's best closed loop (req/s and latency of that phase; x a = over a's best)")
	fmt.Fprintf(w, "%-4s %8s %6s %5s  %-20s %8s %8s\n", "cfg", "req/s", "x a", "at c", "rounds", "p50 ms", "p99 ms")
	for _, c := range r.Saturation.Configs {
		fmt.Fprintf(w, "%-4s %8.0f %6.3f %5d  %-20s %8.3f %8.3f\n", c.Config, c.RPS, c.RatioRPS, c.Concurrency, joinFloats(c.RoundsRPS, 0), c.P50Ms, c.P99Ms)
	}
	fmt.Fprintln(w)
}

func (r *report) printCosts(w io.Writer) {
	fmt.Fprintf(w, "Per request: Redis round trips (INFO total_reads_processed) and EVALSHA calls (commandstats), our INFO excluded; PostgreSQL %s of role guardian_app;\n", r.PGStats)
	fmt.Fprintf(w, "no-Redis: limiter decisions made without Redis (failed open after its 50 ms deadline; Caddy's guardian_ratelimit_degraded_decisions_total);\n")
	fmt.Fprintf(w, "audit rows (count(api_audit_log) deltas) per request and per second; ")
	fmt.Fprintf(w, "Caddy's peak RSS (VmHWM, reset before each round); CPU in microseconds per request by process; busy = share of all CPUs those used;\nothers = share of all CPUs that other processes on the machine used meanwhile (/proc/stat): the noise\n")
	pgCol := "pg stmts"
	if r.PGStats != "pg_stat_statements" {
		pgCol = "pg xacts"
	}
	fmt.Fprintf(w, "%-11s %-4s %8s %7s %8s %8s %6s %6s %8s %8s  %6s %6s %6s %6s %6s %5s %6s\n", "phase", "cfg", "redis RT", "evalsha", "no-Redis", pgCol, "COPY", "audit", "audit/s", "RSS MiB", "client", "caddy", "fn", "redis", "pg", "busy", "others")
	for _, p := range r.Phases {
		for _, c := range p.Configs {
			u := c.CPUusPerReq
			fmt.Fprintf(w, "%-11s %-4s %8.3f %7.3f %8.3f %8.4f %6.4f %6.3f %8.0f %8.1f  %6.1f %6.1f %6.1f %6.1f %6.1f %4.0f%% %5.0f%%\n", p.Name, c.Config,
				c.RedisRTPerReq, c.RedisEvalPerReq, c.LimiterNoRedisPerReq, c.PGStmtsPerReq, c.PGCopiesPerReq, c.AuditRowsPerReq, c.AuditRowsPerSec, c.PeakRSSMiB,
				u.Client, u.Caddy, u.Function, u.Redis, u.Postgres, c.MachineBusy*100, c.OthersBusy*100)
		}
	}
	for _, p := range r.Phases {
		for _, c := range p.Configs {
			if len(c.RedisByCmdPerReq) == 0 {
				continue
			}
			names := slices.Sorted(maps.Keys(c.RedisByCmdPerReq))
			parts := make([]string, len(names))
			for i, n := range names {
				parts[i] = fmt.Sprintf("%s %.3f", n, c.RedisByCmdPerReq[n])
			}
			fmt.Fprintf(w, "Redis commands per request (those inside the Lua script included), %s %s: %s\n", p.Name, c.Config, strings.Join(parts, ", "))
		}
	}
	fmt.Fprintf(w, "Caddy's peak RSS over the whole run: %.1f MiB\n\n", r.PeakRSSMiB)
}

func joinFloats(xs []float64, prec int) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = strconv.FormatFloat(x, 'f', prec, 64)
	}
	return strings.Join(parts, " ")
}

// save writes the JSON and the text tables to dir as edge-<time>.json and
// .txt, and returns the JSON's path.
func (r *report) save(dir string, text []byte) (string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	data, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return "", err
	}
	stamp := strings.NewReplacer("-", "", ":", "").Replace(r.Time)
	base := filepath.Join(dir, "edge-"+stamp)
	if err := os.WriteFile(base+".json", append(data, '\n'), 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(base+".txt", text, 0o644); err != nil {
		return "", err
	}
	return base + ".json", nil
}

// Markers around the generated part of BENCH.md.
const (
	mdBegin = "<!-- bench/edge: generated figures begin -->"
	mdEnd   = "<!-- bench/edge: generated figures end -->"
)

// updateMarkdown replaces the generated section of path with this run's
// machine and tables.
func (r *report) updateMarkdown(path string, text []byte, jsonPath string) error {
	old, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	i, j := bytes.Index(old, []byte(mdBegin)), bytes.Index(old, []byte(mdEnd))
	if i < 0 || j < i {
		return fmt.Errorf("%s lacks the markers %q and %q", path, mdBegin, mdEnd)
	}
	var b bytes.Buffer
	b.Write(old[:i+len(mdBegin)])
	m := r.Machine
	fmt.Fprintf(&b, "\n\nLatest run: %s (`%s`, not in git).\n\n", r.Time, filepath.Base(jsonPath))
	fmt.Fprintf(&b, "| machine | |\n|---|---|\n| CPUs (nproc) | %d |\n| CPU model | %s |\n| kernel | %s |\n| Go | %s |\n| PostgreSQL | %s |\n| Redis | %s |\n| date | %s |\n\n",
		m.CPUs, m.CPUModel, m.Kernel, m.Go, m.Postgres, m.Redis, time.Now().UTC().Format("2006-01-02"))
	b.WriteString("```text\n")
	b.Write(text)
	b.WriteString("```\n")
	b.Write(old[j:])
	return os.WriteFile(path, b.Bytes(), 0o644)
}

// roundP99 returns each round's p99 of a configuration in a phase.
func roundP99(p phaseResult, id string) []float64 {
	var out []float64
	for _, r := range p.Rounds {
		if r.Config == id {
			out = append(out, r.P99Ms)
		}
	}
	return out
}
