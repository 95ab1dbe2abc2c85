// Command edge benchmarks Guardian's edge modules beside bare Caddy, in one
// run, on one machine, so that the ratios between them can be trusted more
// than any absolute figure.
//
// It starts private PostgreSQL, Redis and ClickHouse with
// deploy/stack/servers.sh (durable PostgreSQL unless -stack-mode test),
// turns pg_stat_statements on, applies the migrations (`go run
// ./cmd/guardianctl migrate`), stops ClickHouse again, creates a customer
// and an account key with scope read, builds the custom Caddy and the test
// function (or takes -caddy and -testfn), starts one testfn by hand on a
// unix socket and one Caddy with six routes that differ only in their
// modules (see configs): a bare reverse_proxy (a), the function runtime
// alone (fn), then the edge modules added one by one in production order
// (b-e), all to testfn's GET /ok, one warm process for fn-e.
//
// Load, from this process over loopback:
//
//   - closed loop, one phase per value of -c (default 32 and 128): that
//     many workers each sending the next request when the last answer is
//     read, -d per round. Each configuration's saturation is its best
//     req/s over these phases (see saturation), and the throughput
//     targets compare saturations;
//   - open loop at each rate of -open ("50%" = half of a's saturation
//     req/s; "1000" = 1000 req/s), -open-d per round, requests on a fixed
//     schedule whatever the answers do.
//
// Each phase drives every configuration -reps times, one round of each in
// turn, the order rotated per repetition, so machine noise spreads over
// all configurations. Around each round it reads Redis INFO commandstats,
// pg_stat_statements (statements of the runtime role), the audit table's
// row count, CPU times from /proc (this process, Caddy, the function,
// Redis, PostgreSQL) and Caddy's VmHWM (reset before the round). Then it
// runs the micro-benchmarks beside the code with -benchmem against the same
// servers (-micro=false to skip). With -profile, Caddy's CPU profile of
// each configuration's first closed-loop round of a phase is saved there
// (from Caddy's admin endpoint; profiling costs those rounds a little).
//
// It prints the tables, writes them and a JSON document to -results
// (bench/results/edge-<time>.{txt,json}) and, with -md, replaces the
// generated section of that markdown file (BENCH.md). Every loop is
// bounded; only loopback addresses are used; every process it started and
// every temporary file is removed at the end, on error or ^C too.
//
// Run it with `make bench` (flags through BENCH_ARGS) or
// `go run ./bench/edge -h`.
package main

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/glassmkr/guardian/bench/internal/harness"
)

type options struct {
	caddyBin, testfnBin string
	concurrency         string
	concurrencies       []int
	duration            time.Duration
	openDuration        time.Duration
	warmup              time.Duration
	reps                int
	open                string
	maxInFlight         int
	maxConcurrent       int
	speculateBelow      int
	noise               float64
	retries             int
	stackMode           string
	redisSocket         bool
	micro               bool
	benchtime           string
	results             string
	md                  string
	profile             string
}

func parseFlags() options {
	var o options
	flag.StringVar(&o.caddyBin, "caddy", "", "custom Caddy binary (default: build ./cmd/caddy)")
	flag.StringVar(&o.testfnBin, "testfn", "", "test function binary (default: build ./caddymodules/function/testdata/testfn)")
	flag.StringVar(&o.concurrency, "c", "32,128", "concurrent requests of the closed loop, comma-separated: one closed phase each")
	flag.DurationVar(&o.duration, "d", 5*time.Second, "duration of one closed-loop round")
	flag.DurationVar(&o.openDuration, "open-d", 5*time.Second, "duration of one open-loop round")
	flag.DurationVar(&o.warmup, "warmup", time.Second, "closed-loop warm-up per configuration before the rounds")
	flag.IntVar(&o.reps, "reps", 3, "rounds per configuration and phase")
	flag.StringVar(&o.open, "open", "50%,1000", `open-loop rates, comma-separated: "N%" of a's saturation req/s, or req/s ("" for none)`)
	flag.IntVar(&o.maxInFlight, "max-inflight", 1024, "open loop: requests outstanding at most (more are dropped and counted)")
	flag.IntVar(&o.speculateBelow, "speculate-below", 8, "the account tier's speculate_below on d and e, as the Caddyfile sets it on API routes whose GETs only read (0: off)")
	flag.IntVar(&o.maxConcurrent, "max-concurrent", 4096, "guardian_function max_concurrent (high: over twice the most requests in flight, so neither it nor the per-holder share past half of it ever limits)")
	flag.Float64Var(&o.noise, "noise", 0.15, "repeat a round during which other processes used more than this share of all CPUs (0: never)")
	flag.IntVar(&o.retries, "retries", 12, "repeated rounds at most, over the whole run")
	flag.StringVar(&o.stackMode, "stack-mode", "", `GUARDIAN_STACK_MODE for servers.sh: "" (durable PostgreSQL) or "test" (fsync off)`)
	flag.BoolVar(&o.redisSocket, "redis-socket", true, "Caddy reaches Redis through its unix socket (GUARDIAN_REDIS_SOCKET), as on one host; false: over TCP loopback")
	flag.BoolVar(&o.micro, "micro", true, "also run the micro-benchmarks (go test -bench -benchmem)")
	flag.StringVar(&o.benchtime, "benchtime", "1s", "micro-benchmarks' -benchtime")
	flag.StringVar(&o.results, "results", "", "directory for the JSON and text results (default: <module>/bench/results)")
	flag.StringVar(&o.md, "md", "", "markdown file whose generated section gets this run's figures (e.g. BENCH.md)")
	flag.StringVar(&o.profile, "profile", "", "directory for Caddy CPU profiles, one per configuration taken over its first closed-loop round of each phase (\"\": none)")
	flag.Parse()
	return o
}

func (o options) validate() error {
	switch {
	case o.duration <= 0 || o.duration > 10*time.Minute:
		return fmt.Errorf("-d must be between 0 and 10m, got %s", o.duration)
	case o.openDuration <= 0 || o.openDuration > 10*time.Minute:
		return fmt.Errorf("-open-d must be between 0 and 10m, got %s", o.openDuration)
	case o.warmup < 0 || o.warmup > time.Minute:
		return fmt.Errorf("-warmup must be between 0 and 1m, got %s", o.warmup)
	case o.reps < 1 || o.reps > 100:
		return fmt.Errorf("-reps must be between 1 and 100, got %d", o.reps)
	case o.maxInFlight < 1 || o.maxInFlight > 65536:
		return fmt.Errorf("-max-inflight must be between 1 and 65536, got %d", o.maxInFlight)
	case o.maxConcurrent < 1 || o.maxConcurrent > 65536:
		return fmt.Errorf("-max-concurrent must be between 1 and 65536, got %d", o.maxConcurrent)
	case o.noise < 0 || o.noise > 1:
		return fmt.Errorf("-noise must be between 0 and 1, got %g", o.noise)
	case o.retries < 0 || o.retries > 100:
		return fmt.Errorf("-retries must be between 0 and 100, got %d", o.retries)
	case o.profile != "" && o.duration < time.Second:
		return fmt.Errorf("-profile needs -d of at least 1s, got %s", o.duration)
	case o.stackMode != "" && o.stackMode != "test":
		return fmt.Errorf(`-stack-mode must be "" or "test", got %q`, o.stackMode)
	}
	if _, err := parseConcurrencies(o.concurrency); err != nil {
		return err
	}
	_, err := parseRates(o.open)
	return err
}

// parseConcurrencies reads -c: distinct values from 1 to 4096, at most 8.
func parseConcurrencies(s string) ([]int, error) {
	var out []int
	for part := range strings.SplitSeq(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(part))
		if err != nil || n < 1 || n > 4096 {
			return nil, fmt.Errorf("-c: each value must be a number from 1 to 4096, got %q", part)
		}
		if slices.Contains(out, n) {
			return nil, fmt.Errorf("-c: %d given twice", n)
		}
		out = append(out, n)
	}
	if len(out) > 8 {
		return nil, fmt.Errorf("-c: at most 8 values, got %d", len(out))
	}
	return out, nil
}

// rateSpec is one -open entry.
type rateSpec struct {
	fraction float64 // of a's saturation req/s, or 0
	rate     float64 // req/s when fraction is 0
}

func parseRates(s string) ([]rateSpec, error) {
	var out []rateSpec
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		if p, ok := strings.CutSuffix(part, "%"); ok {
			v, err := strconv.ParseFloat(p, 64)
			if err != nil || v <= 0 || v > 200 {
				return nil, fmt.Errorf("-open: bad share %q (want 1%%..200%%)", part)
			}
			out = append(out, rateSpec{fraction: v / 100})
			continue
		}
		v, err := strconv.ParseFloat(part, 64)
		if err != nil || v < 1 || v > 200000 {
			return nil, fmt.Errorf("-open: bad rate %q (want 1..200000 req/s)", part)
		}
		out = append(out, rateSpec{rate: v})
	}
	return out, nil
}

func main() {
	o := parseFlags()
	if err := o.validate(); err != nil {
		fmt.Fprintln(os.Stderr, "bench/edge:", err)
		os.Exit(2)
	}
	o.concurrencies, _ = parseConcurrencies(o.concurrency) // validated
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, o)
	if ctx.Err() != nil {
		err = fmt.Errorf("interrupted: %w", err)
	}
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/edge: FAILED:", err)
		os.Exit(1)
	}
}

// bench is the running set-up.
type bench struct {
	dir      string // temporary directory, removed at the end
	modDir   string
	base     string // http://127.0.0.1:port
	admin    *http.Client
	caddy    *harness.Child
	bare     *harness.Child
	fnPid    int // the runtime's warm testfn
	stack    *stack
	pepper   string
	key      string
	retries  int // repeated rounds left
	cleanups harness.Cleanups
}

func (b *bench) spawn(name string, env []string, bin string, args ...string) (*harness.Child, error) {
	c, err := harness.Spawn(b.dir, name, env, bin, args...)
	if err != nil {
		return nil, err
	}
	b.cleanups.Add(c.Stop)
	return c, nil
}

func run(ctx context.Context, o options) (err error) {
	started := time.Now()
	modDir, err := harness.ModuleDir(ctx)
	if err != nil {
		return err
	}
	if o.profile != "" {
		if err := os.MkdirAll(o.profile, 0o755); err != nil {
			return fmt.Errorf("-profile: %w", err)
		}
	}
	dir, err := os.MkdirTemp(harness.ShortTempRoot(), "gedge-")
	if err != nil {
		return fmt.Errorf("temporary directory: %w", err)
	}
	b := &bench{dir: dir, modDir: modDir, retries: o.retries}
	b.cleanups.Add(func() error { return os.RemoveAll(dir) })
	defer func() {
		if terr := b.cleanups.Run(); terr != nil {
			err = errors.Join(err, fmt.Errorf("tearing down: %w", terr))
		}
	}()
	if err := b.setUp(ctx, &o); err != nil {
		return err
	}
	rep := &report{
		Time:    time.Now().UTC().Format(time.RFC3339),
		Machine: machineInfo(),
		Settings: settings{Concurrency: o.concurrencies, RoundSeconds: o.duration.Seconds(), OpenSeconds: o.openDuration.Seconds(),
			WarmupS: o.warmup.Seconds(), Reps: o.reps, MaxInFlight: o.maxInFlight, StackMode: o.stackMode, RedisSocket: o.redisSocket,
			Noise: o.noise, Retries: o.retries},
		Configs: configs,
		PGStats: b.stack.pgStats,
	}
	rep.Machine.Postgres, rep.Machine.Redis = b.stack.versions(ctx)
	if rep.Machine.RedisPingP50us, err = b.stack.pingP50(ctx, 2000); err != nil {
		return err
	}
	if err := b.measure(ctx, o, rep); err != nil {
		return err
	}
	if o.micro {
		// Only the micro-benchmarks might want ClickHouse.
		if err := b.stack.servers(ctx, "start", "clickhouse"); err != nil {
			return err
		}
		m := b.runMicro(ctx, o.benchtime)
		rep.Micro = &m
		if m.Error != "" {
			rep.Warnings = append(rep.Warnings, "micro-benchmarks failed (see above)")
		}
	}
	rep.targets()
	var text bytes.Buffer
	rep.print(&text)
	os.Stdout.Write(text.Bytes())
	resDir := o.results
	if resDir == "" {
		resDir = filepath.Join(modDir, "bench", "results")
	}
	jsonPath, err := rep.save(resDir, text.Bytes())
	if err != nil {
		return fmt.Errorf("saving results: %w", err)
	}
	fmt.Printf("results: %s (and .txt); whole run %s\n", jsonPath, time.Since(started).Round(time.Second))
	if o.md != "" {
		if err := rep.updateMarkdown(o.md, text.Bytes(), jsonPath); err != nil {
			return fmt.Errorf("updating %s: %w", o.md, err)
		}
		fmt.Printf("updated the generated section of %s\n", o.md)
	}
	if rep.Micro != nil && rep.Micro.Error != "" {
		return errors.New("micro-benchmarks failed")
	}
	return nil
}

// setUp builds, starts the servers, the hand-run function and Caddy, and
// checks every route.
func (b *bench) setUp(ctx context.Context, o *options) error {
	for _, bin := range []struct {
		path *string
		pkg  string
	}{{&o.caddyBin, "./cmd/caddy"}, {&o.testfnBin, "./caddymodules/function/testdata/testfn"}} {
		if *bin.path == "" {
			out := filepath.Join(b.dir, "bin", filepath.Base(bin.pkg))
			if err := harness.GoBuild(ctx, out, bin.pkg); err != nil {
				return err
			}
			*bin.path = out
		}
		abs, err := harness.Executable(*bin.path)
		if err != nil {
			return err
		}
		*bin.path = abs
	}
	b.stack = &stack{modDir: b.modDir, dir: filepath.Join(b.dir, "servers"), mode: o.stackMode, redisSocket: o.redisSocket}
	b.cleanups.Add(b.stack.destroy)
	if err := b.stack.start(ctx); err != nil {
		return err
	}
	b.pepper = secret(32)
	var err error
	if b.key, err = b.stack.accountKey(ctx, b.pepper); err != nil {
		return err
	}
	bareSock := filepath.Join(b.dir, "bare.sock")
	if b.bare, err = b.spawn("testfn-bare", harness.MinimalEnv(b.dir, "GUARDIAN_FUNCTION_SOCKET="+bareSock), o.testfnBin); err != nil {
		return err
	}
	if err := harness.WaitUnix(ctx, b.bare, bareSock); err != nil {
		return err
	}
	port, err := harness.FreePort()
	if err != nil {
		return err
	}
	b.base = "http://127.0.0.1:" + strconv.Itoa(port)
	adminSock := filepath.Join(b.dir, "admin.sock")
	b.admin = harness.UnixClient(adminSock)
	cfg, err := writeCaddyfile(b.dir, caddyfileData{
		AdminSocket: adminSock, Port: port, BareSocket: bareSock, Testfn: o.testfnBin,
		SocketDir: filepath.Join(b.dir, "fn"), SpoolDir: filepath.Join(b.dir, "audit-spool"), MaxConcurrent: o.maxConcurrent,
		SpeculateBelow: o.speculateBelow,
	})
	if err != nil {
		return err
	}
	if err := b.startCaddy(ctx, o.caddyBin, cfg); err != nil {
		return err
	}
	if err := b.checkRoutes(ctx); err != nil {
		return b.withLogTail(err)
	}
	return nil
}

// measure runs a closed-loop phase per concurrency, then each open-loop
// rate.
func (b *bench) measure(ctx context.Context, o options, rep *report) error {
	client := harness.NewClient(max(slices.Max(o.concurrencies), o.maxInFlight))
	defer client.CloseIdleConnections()
	if err := b.warmUp(ctx, client, o); err != nil {
		return err
	}
	var closed []phaseResult
	for _, n := range o.concurrencies {
		ph, err := b.runPhase(ctx, client, phaseSpec{Name: fmt.Sprintf("closed-%d", n), Concurrency: n}, o)
		if err != nil {
			return err
		}
		closed = append(closed, ph)
		rep.Phases = append(rep.Phases, ph)
	}
	rep.Saturation = saturation(closed)
	a, _ := rep.Saturation.config("a")
	// Open-loop phases in ascending rate: a phase that overloads Caddy
	// leaves a larger heap behind, which would inflate the peak RSS of the
	// phases after it.
	rates, _ := parseRates(o.open)
	var specs []phaseSpec
	for _, rs := range rates {
		ph := phaseSpec{Open: true, Rate: rs.rate, Fraction: rs.fraction}
		if rs.fraction > 0 {
			ph.Rate = math.Round(a.RPS * rs.fraction)
			ph.Name = fmt.Sprintf("open-%g%%", rs.fraction*100)
		} else {
			ph.Name = fmt.Sprintf("open-%g", rs.rate)
		}
		if ph.Rate < 1 {
			return fmt.Errorf("open loop %s: rate %.1f req/s is too low", ph.Name, ph.Rate)
		}
		specs = append(specs, ph)
	}
	slices.SortStableFunc(specs, func(x, y phaseSpec) int { return cmp.Compare(x.Rate, y.Rate) })
	for _, ph := range specs {
		res, err := b.runPhase(ctx, client, ph, o)
		if err != nil {
			return err
		}
		rep.Phases = append(rep.Phases, res)
	}
	for _, p := range rep.Phases {
		rep.Discarded += len(p.Discarded)
		var noisy, late []string
		for _, c := range p.Configs {
			rep.PeakRSSMiB = max(rep.PeakRSSMiB, c.PeakRSSMiB)
			if o.noise > 0 && c.OthersBusy > o.noise {
				noisy = append(noisy, fmt.Sprintf("%s %.0f%%", c.Config, c.OthersBusy*100))
			}
			if p.Open && c.LagP99Ms > 5 {
				late = append(late, fmt.Sprintf("%s %.1f ms", c.Config, c.LagP99Ms))
			}
			if c.Errors > 0 || c.Dropped > 0 {
				rep.Warnings = append(rep.Warnings, fmt.Sprintf("%s %s: %d errors, %d dropped (overloaded; figures count only 200s)", p.Name, c.Config, c.Errors, c.Dropped))
			}
			if c.AuditSpooled > 0 || c.RedisErrors > 0 {
				rep.Warnings = append(rep.Warnings, fmt.Sprintf("%s %s: %.0f audit rows went to the spool, %.0f limiter calls to Redis failed or timed out (failed open)", p.Name, c.Config, c.AuditSpooled, c.RedisErrors))
			}
			if c.Config == "e" && c.AuditRowsPerReq != 1 {
				rep.Warnings = append(rep.Warnings, fmt.Sprintf("%s e: %.3f audit rows per request, want 1", p.Name, c.AuditRowsPerReq))
			}
		}
		if len(noisy) > 0 {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("%s: other processes used more than %.0f%% of the CPUs (retries spent): %s", p.Name, o.noise*100, strings.Join(noisy, ", ")))
		}
		if len(late) > 0 {
			rep.Warnings = append(rep.Warnings, fmt.Sprintf("%s: the load generator sent late (lag p99 over 5 ms: short of CPU): %s", p.Name, strings.Join(late, ", ")))
		}
	}
	return nil
}

// machineInfo describes the machine for the report.
func machineInfo() machine {
	m := machine{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(data)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if data, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(data))
	}
	return m
}
