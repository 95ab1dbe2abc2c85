// Command functions benchmarks Guardian's function runtime (the
// guardian_function Caddy handler) against Caddy's own reverse_proxy to the
// same function binary, and measures the runtime's cold start.
//
// It builds the custom Caddy (./cmd/caddy) and the test function
// (./caddymodules/function/testdata/testfn) into a temporary directory, or
// takes them from -caddy and -testfn, and runs one Caddy on a free loopback
// port with three routes, all to testfn's GET /ok (which answers its pid):
//
//	/bare/*  reverse_proxy to a copy of testfn started by hand on a unix socket
//	/rt/*    guardian_function bench_rt, idle_timeout 0 (warm once started)
//	/cold/*  guardian_function bench_cold, a short idle_timeout (-cold-idle)
//
// Warm throughput: a closed-loop load generator (-c workers, each sending
// its next request when the previous answer is read) runs for -d per round
// against /bare/ok and /rt/ok alternately, -reps rounds each, after a -warmup
// round of each. req/s is the median over a target's rounds; the latency
// percentiles are over all of its requests; a non-200 answer or a transport
// error counts as an error. "rt/bare" divides the runtime's figures by the
// bare ones: a throughput ratio near 1.0 and latency ratios near 1.0 mean the
// runtime costs little over a plain reverse proxy. Load generator, Caddy and
// functions share the machine's CPUs, so absolute figures are a property of
// this machine; compare ratios, and runs on the same machine. The CPU table
// splits each request's CPU time between load generator, Caddy and function
// (from getrusage and /proc), and "CPUs busy" is the share of the machine
// the three used: well under 100% means something else ran meanwhile, and
// the run is noisy.
//
// Cold start: -cold times, wait until bench_cold has stopped for idleness
// (its pid is gone), then time one GET /cold/ok from send to the last byte
// of the answer. Each timed request must have started a new process: the
// program checks that guardian_function_starts_total rose by one and that the
// pid is new, and says loudly when not, since such a figure is not a cold
// start. After each cold request the same request is sent again to the now
// warm process, as the baseline: cold p50 minus warm p50 is what a cold start
// costs a client. Next to these it prints the runtime's own
// guardian_function_cold_start_seconds average, read from Caddy's admin
// /metrics; it covers the time from the binary's start to its readiness
// signal, so the client's figure is larger by the rest of the request path
// (socket and pipe set-up, fork and exec, the first connection and request).
//
// The program prints a table, then one line of JSON with every figure (also
// written to -json when given). Every loop is bounded by a count or a
// deadline, only loopback addresses and unix sockets are used, and all
// processes and temporary files are removed at the end, on error too. It
// exits with status 1 on any setup failure.
//
// Run it with `make bench-functions` (flags through BENCH_ARGS) or
// `go run ./bench/functions -h`.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
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
	"text/template"
	"time"

	"github.com/glassmkr/guardian/bench/internal/harness"
)

// options are the command-line flags.
type options struct {
	caddyBin    string
	testfnBin   string
	concurrency int
	duration    time.Duration
	warmup      time.Duration
	reps        int
	coldN       int
	coldIdle    time.Duration
	jsonPath    string
}

func parseFlags() options {
	var o options
	flag.StringVar(&o.caddyBin, "caddy", "", "custom Caddy binary (default: build ./cmd/caddy)")
	flag.StringVar(&o.testfnBin, "testfn", "", "test function binary (default: build ./caddymodules/function/testdata/testfn)")
	flag.IntVar(&o.concurrency, "c", 32, "concurrent requests of the warm load generator")
	flag.DurationVar(&o.duration, "d", 5*time.Second, "duration of one warm round")
	flag.DurationVar(&o.warmup, "warmup", time.Second, "warm-up per target before the rounds")
	flag.IntVar(&o.reps, "reps", 3, "warm rounds per target, alternating bare and runtime")
	flag.IntVar(&o.coldN, "cold", 40, "cold starts to time")
	flag.DurationVar(&o.coldIdle, "cold-idle", 30*time.Millisecond, "idle_timeout of the cold-start function")
	flag.StringVar(&o.jsonPath, "json", "", "also write the JSON result to this file")
	flag.Parse()
	return o
}

func (o options) validate() error {
	switch {
	case o.concurrency < 1 || o.concurrency > 4096:
		return fmt.Errorf("-c must be between 1 and 4096, got %d", o.concurrency)
	case o.duration <= 0 || o.duration > 10*time.Minute:
		return fmt.Errorf("-d must be between 0 and 10m, got %s", o.duration)
	case o.warmup < 0 || o.warmup > time.Minute:
		return fmt.Errorf("-warmup must be between 0 and 1m, got %s", o.warmup)
	case o.reps < 1 || o.reps > 100:
		return fmt.Errorf("-reps must be between 1 and 100, got %d", o.reps)
	case o.coldN < 0 || o.coldN > 10000:
		return fmt.Errorf("-cold must be between 0 and 10000, got %d", o.coldN)
	case o.coldIdle < time.Millisecond || o.coldIdle > 10*time.Second:
		return fmt.Errorf("-cold-idle must be between 1ms and 10s, got %s", o.coldIdle)
	}
	return nil
}

func main() {
	o := parseFlags()
	if err := o.validate(); err != nil {
		fmt.Fprintln(os.Stderr, "bench/functions:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, o)
	if ctx.Err() != nil {
		err = fmt.Errorf("interrupted: %w", err)
	}
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench/functions: FAILED:", err)
		os.Exit(1)
	}
}

// run sets up the bench, measures and reports; the deferred tear-down
// stops every process it started and removes the temporary directory.
func run(ctx context.Context, o options) (err error) {
	b, err := setUp(ctx, o)
	if err != nil {
		return err
	}
	defer func() {
		if terr := b.tearDown(); terr != nil && err == nil {
			err = terr
		}
	}()
	rep := report{
		Time: time.Now().UTC().Format(time.RFC3339), GoVersion: runtime.Version(), CPUs: runtime.NumCPU(),
		Concurrency: o.concurrency, RoundSeconds: o.duration.Seconds(), Reps: o.reps,
		ColdIdleMs: harness.Ms(o.coldIdle),
	}
	if rep.Bare, rep.Runtime, err = b.warmBench(ctx, o); err != nil {
		return err
	}
	rep.Ratio = ratios(rep.Bare, rep.Runtime)
	if rep.Cold, err = b.coldBench(ctx, o); err != nil {
		return err
	}
	return rep.print(os.Stdout, o.jsonPath)
}

// bench is the running set-up: Caddy, the hand-started function and the
// clients that talk to them.
type bench struct {
	dir      string // temporary directory, removed at the end
	base     string // http://127.0.0.1:port
	admin    *http.Client
	caddy    *harness.Child
	bare     *harness.Child
	rtPid    int // the warm runtime function's process
	caddyLog string
	cleanups harness.Cleanups
}

// Names of the functions in the Caddyfile, as they appear in the metrics.
const (
	rtName   = "bench_rt"
	coldName = "bench_cold"
)

// setUp builds the binaries, starts the hand-run function and Caddy, and
// checks that every route answers. On error it undoes what it did.
func setUp(ctx context.Context, o options) (*bench, error) {
	dir, err := os.MkdirTemp(harness.ShortTempRoot(), "gfb-")
	if err != nil {
		return nil, fmt.Errorf("temporary directory: %w", err)
	}
	b := &bench{dir: dir}
	b.cleanups.Add(func() error { return os.RemoveAll(dir) })
	if err := b.start(ctx, o); err != nil {
		if terr := b.tearDown(); terr != nil {
			err = fmt.Errorf("%w (and tearing down: %v)", err, terr)
		}
		return nil, err
	}
	return b, nil
}

// start builds what it must, starts the processes and checks the routes.
func (b *bench) start(ctx context.Context, o options) error {
	dir := b.dir
	if err := b.binaries(ctx, &o); err != nil {
		return err
	}
	bareSock := filepath.Join(dir, "bare.sock")
	if err := b.startBare(ctx, o.testfnBin, bareSock); err != nil {
		return err
	}
	port, err := harness.FreePort()
	if err != nil {
		return err
	}
	b.base = "http://127.0.0.1:" + strconv.Itoa(port)
	adminSock := filepath.Join(dir, "admin.sock")
	cfg, err := writeCaddyfile(dir, caddyfileData{
		AdminSocket: adminSock, Port: port, BareSocket: bareSock, Testfn: o.testfnBin,
		SocketDir: filepath.Join(dir, "fn"), ColdIdle: o.coldIdle.String(),
	})
	if err != nil {
		return err
	}
	b.admin = harness.UnixClient(adminSock)
	if err := b.startCaddy(ctx, o.caddyBin, cfg); err != nil {
		return err
	}
	if err := b.checkRoutes(ctx); err != nil {
		return b.withLogTail(err)
	}
	return nil
}

// binaries builds Caddy and testfn into the temporary directory unless the
// flags name them, and makes the paths absolute.
func (b *bench) binaries(ctx context.Context, o *options) error {
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
	return nil
}

// spawn starts a process (see harness.Spawn) and registers its stop.
func (b *bench) spawn(name string, env []string, bin string, args ...string) (*harness.Child, error) {
	c, err := harness.Spawn(b.dir, name, env, bin, args...)
	if err != nil {
		return nil, err
	}
	b.cleanups.Add(c.Stop)
	return c, nil
}

// startBare starts testfn by hand on sock and waits until it accepts.
func (b *bench) startBare(ctx context.Context, bin, sock string) error {
	c, err := b.spawn("testfn-bare", harness.MinimalEnv(b.dir, "GUARDIAN_FUNCTION_SOCKET="+sock), bin)
	if err != nil {
		return err
	}
	b.bare = c
	return harness.WaitUnix(ctx, c, sock)
}

// caddyfileData fills caddyfileTmpl.
type caddyfileData struct {
	AdminSocket, BareSocket, Testfn, SocketDir, ColdIdle string
	Port                                                 int
}

var caddyfileTmpl = template.Must(template.New("Caddyfile").Parse(`{
	admin unix/{{.AdminSocket}}
	persist_config off
	auto_https off
	grace_period 5s
}

http://127.0.0.1:{{.Port}} {
	bind 127.0.0.1

	handle_path /bare/* {
		reverse_proxy unix/{{.BareSocket}}
	}

	handle_path /rt/* {
		guardian_function ` + rtName + ` {
			bin {{.Testfn}}
			idle_timeout 0
			socket_dir {{.SocketDir}}
		}
	}

	handle_path /cold/* {
		guardian_function ` + coldName + ` {
			bin {{.Testfn}}
			idle_timeout {{.ColdIdle}}
			socket_dir {{.SocketDir}}
		}
	}

	handle {
		respond "no such bench route" 404
	}
}
`))

// writeCaddyfile writes the bench's Caddyfile into dir and returns its path.
func writeCaddyfile(dir string, d caddyfileData) (string, error) {
	var buf bytes.Buffer
	if err := caddyfileTmpl.Execute(&buf, d); err != nil {
		return "", fmt.Errorf("caddyfile: %w", err)
	}
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, buf.Bytes(), 0o600); err != nil {
		return "", fmt.Errorf("caddyfile: %w", err)
	}
	return path, nil
}

// startCaddy runs Caddy on cfg and waits until its admin endpoint and the
// site answer.
func (b *bench) startCaddy(ctx context.Context, bin, cfg string) error {
	c, err := b.spawn("caddy", harness.MinimalEnv(b.dir), bin, "run", "--config", cfg, "--adapter", "caddyfile")
	if err != nil {
		return err
	}
	b.caddy = c
	b.caddyLog = c.Log.Name()
	client := harness.NewClient(1)
	defer client.CloseIdleConnections()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil && !c.Exited() {
		if _, err := b.metrics(ctx); err == nil && harness.Hit(ctx, client, b.base+"/bare/ok") {
			return nil
		}
		harness.Sleep(ctx, 20*time.Millisecond)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if c.Exited() {
		return b.withLogTail(fmt.Errorf("caddy exited during start-up (%s)", c.Cmd.ProcessState))
	}
	return b.withLogTail(errors.New("caddy's admin endpoint or site did not answer within 30s"))
}

// checkRoutes proves each route reaches testfn through the path it names:
// /ok answers a pid, the runtime's pids differ from the hand-started one.
func (b *bench) checkRoutes(ctx context.Context) error {
	client := harness.NewClient(1)
	defer client.CloseIdleConnections()
	pids := map[string]int{}
	for _, route := range []string{"bare", "rt", "cold"} {
		status, body, err := harness.Get(ctx, client, b.base+"/"+route+"/ok")
		if err != nil {
			return fmt.Errorf("route /%s/ok: %w", route, err)
		}
		pid, perr := strconv.Atoi(string(body))
		if status != http.StatusOK || perr != nil {
			return fmt.Errorf("route /%s/ok answered %d %q, want 200 and a pid", route, status, harness.Truncate(body, 200))
		}
		pids[route] = pid
	}
	if pids["bare"] != b.bare.Pid() {
		return fmt.Errorf("/bare/ok answered pid %d, not the hand-started testfn's %d", pids["bare"], b.bare.Pid())
	}
	if pids["rt"] == pids["bare"] || pids["cold"] == pids["bare"] || pids["rt"] == pids["cold"] {
		return fmt.Errorf("routes share a process (pids %v): the runtime is not serving /rt and /cold", pids)
	}
	b.rtPid = pids["rt"]
	return nil
}

// tearDown runs the clean-ups in reverse: Caddy, then the hand-started
// function, then the temporary directory.
func (b *bench) tearDown() error { return b.cleanups.Run() }

func (b *bench) withLogTail(err error) error {
	if b.caddyLog == "" {
		return err
	}
	return fmt.Errorf("%w%s", err, harness.LogTail(b.caddyLog))
}

// round is one closed-loop round with the CPU time it cost.
type round struct {
	harness.Round
	cpu cpuTimes
}

// warmResult is one target's warm figures.
type warmResult struct {
	Path      string    `json:"path"`
	RPS       float64   `json:"rps_median"`
	RoundsRPS []float64 `json:"rps_rounds"`
	Requests  int       `json:"requests"`
	Errors    int       `json:"errors"`
	P50Ms     float64   `json:"p50_ms"`
	P99Ms     float64   `json:"p99_ms"`
	P999Ms    float64   `json:"p999_ms"`
	// CPU is CPU microseconds per request, over all rounds.
	CPU cpuPerRequest `json:"cpu_us_per_request"`
	// MachineBusy is the share of all CPUs that the load generator, Caddy
	// and the function used during the rounds (1 = every CPU busy).
	MachineBusy float64 `json:"machine_busy"`
}

// cpuPerRequest splits a request's CPU cost by process.
type cpuPerRequest struct {
	Client   float64 `json:"client"`
	Caddy    float64 `json:"caddy"`
	Function float64 `json:"function"`
}

// warmBench warms both targets up, then alternates rounds bare, rt, bare...
func (b *bench) warmBench(ctx context.Context, o options) (bare, rt warmResult, err error) {
	client := harness.NewClient(o.concurrency)
	defer client.CloseIdleConnections()
	targets := []string{"/bare/ok", "/rt/ok"}
	for _, path := range targets {
		fmt.Fprintf(os.Stderr, "warm-up %s for %s ...\n", path, o.warmup)
		if w := harness.ClosedLoop(ctx, client, harness.Target{URL: b.base + path}, o.concurrency, o.warmup); o.warmup > 0 && w.OK == 0 {
			return bare, rt, b.withLogTail(fmt.Errorf("warm-up of %s: no request succeeded (%d errors)", path, w.Errors))
		}
	}
	fnPids := []int{b.bare.Pid(), b.rtPid}
	rounds := make([][]round, len(targets))
	for rep := range o.reps {
		for i, path := range targets {
			runtime.GC()
			before := b.cpu(fnPids[i])
			r := round{Round: harness.ClosedLoop(ctx, client, harness.Target{URL: b.base + path}, o.concurrency, o.duration)}
			if ctx.Err() != nil {
				return bare, rt, ctx.Err()
			}
			r.cpu = b.cpu(fnPids[i]).minus(before)
			fmt.Fprintf(os.Stderr, "round %d/%d %-8s %8.0f req/s  %d errors\n", rep+1, o.reps, path, r.RPS(), r.Errors)
			rounds[i] = append(rounds[i], r)
		}
	}
	return summarize(targets[0], rounds[0]), summarize(targets[1], rounds[1]), nil
}

// cpuTimes is CPU time (user+system) used so far by the load generator
// (this process), Caddy and one function process.
type cpuTimes struct{ client, caddy, fn time.Duration }

func (a cpuTimes) minus(b cpuTimes) cpuTimes {
	return cpuTimes{a.client - b.client, a.caddy - b.caddy, a.fn - b.fn}
}

func (a cpuTimes) plus(b cpuTimes) cpuTimes {
	return cpuTimes{a.client + b.client, a.caddy + b.caddy, a.fn + b.fn}
}

// cpu reads the CPU times of this process, Caddy and the function fnPid;
// a figure it cannot read is 0.
func (b *bench) cpu(fnPid int) cpuTimes {
	var t cpuTimes
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		t.client = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	t.caddy = harness.ProcCPU(b.caddy.Pid())
	t.fn = harness.ProcCPU(fnPid)
	return t
}

// summarize reduces a target's rounds to its median rate and the latency
// percentiles over all its requests.
func summarize(path string, rounds []round) warmResult {
	w := warmResult{Path: path}
	var lat []time.Duration
	var cpu cpuTimes
	var elapsed time.Duration
	for _, r := range rounds {
		w.RoundsRPS = append(w.RoundsRPS, math.Round(r.RPS()))
		w.Requests += r.OK + r.Errors
		w.Errors += r.Errors
		lat = append(lat, r.Latencies...)
		cpu = cpu.plus(r.cpu)
		elapsed += r.Elapsed
	}
	if w.Requests > 0 {
		perReq := func(d time.Duration) float64 {
			return math.Round(float64(d/time.Nanosecond)/float64(w.Requests)/10) / 100
		}
		w.CPU = cpuPerRequest{Client: perReq(cpu.client), Caddy: perReq(cpu.caddy), Function: perReq(cpu.fn)}
	}
	if elapsed > 0 {
		w.MachineBusy = harness.Round3(float64(cpu.client+cpu.caddy+cpu.fn) / float64(elapsed) / float64(runtime.NumCPU()))
	}
	w.RPS = math.Round(harness.Median(w.RoundsRPS))
	slices.Sort(lat)
	w.P50Ms, w.P99Ms, w.P999Ms = harness.Ms(harness.Percentile(lat, .50)), harness.Ms(harness.Percentile(lat, .99)), harness.Ms(harness.Percentile(lat, .999))
	return w
}

// ratioResult compares the runtime with the bare proxy.
type ratioResult struct {
	RPS float64 `json:"rps"`
	P50 float64 `json:"p50"`
	P99 float64 `json:"p99"`
}

func ratios(bare, rt warmResult) ratioResult {
	div := func(a, b float64) float64 {
		if b == 0 {
			return 0
		}
		return math.Round(a/b*1000) / 1000
	}
	return ratioResult{RPS: div(rt.RPS, bare.RPS), P50: div(rt.P50Ms, bare.P50Ms), P99: div(rt.P99Ms, bare.P99Ms)}
}

// coldResult is the cold-start figures.
type coldResult struct {
	Iterations int `json:"iterations"`
	// Verified counts timed requests that started exactly one new process.
	Verified    int     `json:"verified"`
	StartsDelta float64 `json:"starts_delta"`
	Errors      int     `json:"errors"`
	P50Ms       float64 `json:"p50_ms"`
	P99Ms       float64 `json:"p99_ms"`
	MaxMs       float64 `json:"max_ms"`
	// WarmP50Ms is the same request sent again right after each cold one,
	// to the process then warm.
	WarmP50Ms float64 `json:"warm_p50_ms"`
	// RuntimeAvgMs is guardian_function_cold_start_seconds' sum/count over
	// the timed starts: exec to readiness, as the runtime sees it.
	RuntimeAvgMs float64 `json:"runtime_avg_ms"`
	RuntimeCount float64 `json:"runtime_count"`
	// OK is false when not every timed request was a cold start.
	OK bool `json:"ok"`
}

// coldBench times -cold requests, each after the function stopped for
// idleness, and checks through the metrics that each one started it.
func (b *bench) coldBench(ctx context.Context, o options) (coldResult, error) {
	res := coldResult{Iterations: o.coldN}
	client := harness.NewClient(1)
	defer client.CloseIdleConnections()
	// A kept-alive connection to Caddy, so the timing holds no TCP set-up.
	if !harness.Hit(ctx, client, b.base+"/bare/ok") {
		return res, errors.New("cold start: /bare/ok failed before the first cold start")
	}
	lastPid := b.coldPid(ctx, client)
	first, err := b.coldMetrics(ctx)
	if err != nil {
		return res, err
	}
	var lat, warmLat []time.Duration
	fmt.Fprintf(os.Stderr, "cold start: %d iterations, idle_timeout %s ...\n", o.coldN, o.coldIdle)
	for range o.coldN {
		if err := waitGone(ctx, lastPid, o.coldIdle); err != nil {
			return res, err
		}
		before, err := b.coldMetrics(ctx)
		if err != nil {
			return res, err
		}
		t0 := time.Now()
		status, body, err := harness.Get(ctx, client, b.base+"/cold/ok")
		d := time.Since(t0)
		after, merr := b.coldMetrics(ctx)
		if merr != nil {
			return res, merr
		}
		pid, perr := strconv.Atoi(string(body))
		if err != nil || status != http.StatusOK || perr != nil {
			res.Errors++
			continue
		}
		lat = append(lat, d)
		if after.starts-before.starts == 1 && pid != lastPid {
			res.Verified++
		}
		lastPid = pid
		// The same request once more, to the process now warm: the
		// baseline the cold figure is compared with.
		t1 := time.Now()
		status, body, err = harness.Get(ctx, client, b.base+"/cold/ok")
		if err == nil && status == http.StatusOK && string(body) == strconv.Itoa(pid) {
			warmLat = append(warmLat, time.Since(t1))
		}
	}
	last, err := b.coldMetrics(ctx)
	if err != nil {
		return res, err
	}
	res.StartsDelta = last.starts - first.starts
	if n := last.count - first.count; n > 0 {
		res.RuntimeCount = n
		res.RuntimeAvgMs = harness.Round3((last.sum - first.sum) / n * 1000)
	}
	slices.Sort(lat)
	res.P50Ms, res.P99Ms = harness.Ms(harness.Percentile(lat, .50)), harness.Ms(harness.Percentile(lat, .99))
	if len(lat) > 0 {
		res.MaxMs = harness.Ms(lat[len(lat)-1])
	}
	slices.Sort(warmLat)
	res.WarmP50Ms = harness.Ms(harness.Percentile(warmLat, .50))
	res.OK = res.Errors == 0 && res.Verified == o.coldN && res.StartsDelta == float64(o.coldN)
	return res, nil
}

// coldPid returns the pid of the currently running cold function (starting
// it if needed), or 0.
func (b *bench) coldPid(ctx context.Context, c *http.Client) int {
	_, body, err := harness.Get(ctx, c, b.base+"/cold/ok")
	if err != nil {
		return 0
	}
	pid, _ := strconv.Atoi(string(body))
	return pid
}

// waitGone waits idle for the runtime's idle timer to fire, then until pid
// has exited, at most ten seconds.
func waitGone(ctx context.Context, pid int, idle time.Duration) error {
	harness.Sleep(ctx, 2*idle)
	if pid <= 0 {
		harness.Sleep(ctx, 2*idle)
		return ctx.Err()
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			return nil
		}
		harness.Sleep(ctx, 2*time.Millisecond)
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return fmt.Errorf("cold start: function pid %d still runs 10s after its idle_timeout %s: the runtime does not stop idle functions", pid, idle)
}

// coldSeries is the cold function's series on /metrics.
type coldSeries struct{ starts, sum, count float64 }

func (b *bench) coldMetrics(ctx context.Context) (coldSeries, error) {
	text, err := b.metrics(ctx)
	if err != nil {
		return coldSeries{}, err
	}
	var s coldSeries
	var ok [3]bool
	s.starts, ok[0] = metricValue(text, "guardian_function_starts_total", coldName)
	s.sum, ok[1] = metricValue(text, "guardian_function_cold_start_seconds_sum", coldName)
	s.count, ok[2] = metricValue(text, "guardian_function_cold_start_seconds_count", coldName)
	if !ok[0] || !ok[1] || !ok[2] {
		return s, fmt.Errorf("caddy's /metrics lacks guardian_function_starts_total or guardian_function_cold_start_seconds for function %q", coldName)
	}
	return s, nil
}

// metrics fetches the Prometheus text from Caddy's admin endpoint.
func (b *bench) metrics(ctx context.Context) (string, error) {
	status, body, err := harness.Get(ctx, b.admin, "http://localhost/metrics")
	if err != nil {
		return "", fmt.Errorf("admin /metrics: %w", err)
	}
	if status != http.StatusOK {
		return "", fmt.Errorf("admin /metrics answered %d", status)
	}
	return string(body), nil
}

// metricValue finds the sample of name whose labels include
// function="fn" in Prometheus text format.
func metricValue(text, name, fn string) (float64, bool) {
	label := `function="` + fn + `"`
	for line := range strings.Lines(text) {
		line = strings.TrimSpace(line)
		series, value, found := strings.Cut(line, " ")
		if !found || strings.HasPrefix(line, "#") {
			continue
		}
		metric, labels, _ := strings.Cut(series, "{")
		if metric != name || !strings.Contains(labels, label) {
			continue
		}
		v, err := strconv.ParseFloat(strings.Fields(value)[0], 64)
		return v, err == nil
	}
	return 0, false
}

// report is every figure of a run; it is printed as a table and as JSON.
type report struct {
	Time         string      `json:"time"`
	GoVersion    string      `json:"go"`
	CPUs         int         `json:"cpus"`
	Concurrency  int         `json:"concurrency"`
	RoundSeconds float64     `json:"round_seconds"`
	Reps         int         `json:"reps"`
	ColdIdleMs   float64     `json:"cold_idle_timeout_ms"`
	Bare         warmResult  `json:"bare"`
	Runtime      warmResult  `json:"runtime"`
	Ratio        ratioResult `json:"rt_over_bare"`
	Cold         coldResult  `json:"cold"`
}

// print writes the table and the JSON line to w, and the JSON to jsonPath
// when set.
func (r report) print(w io.Writer, jsonPath string) error {
	line, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("json: %w", err)
	}
	fmt.Fprintf(w, "\nGuardian function runtime benchmark: %s, %d CPUs, concurrency %d, %d x %s rounds per target\n\n",
		r.GoVersion, r.CPUs, r.Concurrency, r.Reps, time.Duration(r.RoundSeconds*float64(time.Second)))
	fmt.Fprintf(w, "%-22s %10s  %-24s %9s %9s %9s %9s %7s\n", "warm", "req/s", "rounds", "p50 ms", "p99 ms", "p99.9 ms", "requests", "errors")
	for _, t := range r.targets() {
		fmt.Fprintf(w, "%-22s %10.0f  %-24s %9.3f %9.3f %9.3f %9d %7d\n", t.name, t.res.RPS, joinFloats(t.res.RoundsRPS),
			t.res.P50Ms, t.res.P99Ms, t.res.P999Ms, t.res.Requests, t.res.Errors)
	}
	fmt.Fprintf(w, "%-22s %10.3f  %-24s %9.3f %9.3f\n\n", "rt/bare", r.Ratio.RPS, "", r.Ratio.P50, r.Ratio.P99)
	fmt.Fprintf(w, "%-22s %10s %10s %10s %14s\n", "CPU us/request", "client", "caddy", "function", "CPUs busy")
	for _, t := range r.targets() {
		fmt.Fprintf(w, "%-22s %10.1f %10.1f %10.1f %13.0f%%\n", t.name, t.res.CPU.Client, t.res.CPU.Caddy, t.res.CPU.Function, t.res.MachineBusy*100)
	}
	fmt.Fprintln(w)
	if r.Bare.Errors+r.Runtime.Errors > 0 {
		fmt.Fprintf(w, "WARNING: %d warm requests failed; the throughput counts only 200s\n\n", r.Bare.Errors+r.Runtime.Errors)
	}
	c := r.Cold
	fmt.Fprintf(w, "cold start (%d iterations, idle_timeout %gms)\n", c.Iterations, r.ColdIdleMs)
	fmt.Fprintf(w, "  client GET /cold/ok    p50 %.3f ms   p99 %.3f ms   max %.3f ms   errors %d\n", c.P50Ms, c.P99Ms, c.MaxMs, c.Errors)
	fmt.Fprintf(w, "  same request, warm     p50 %.3f ms   (cold costs the client %.3f ms at p50)\n", c.WarmP50Ms, c.P50Ms-c.WarmP50Ms)
	fmt.Fprintf(w, "  runtime exec->ready    avg %.3f ms over %.0f starts (guardian_function_cold_start_seconds)\n", c.RuntimeAvgMs, c.RuntimeCount)
	fmt.Fprintf(w, "  starts_total +%.0f (want %d), %d of %d requests each started one new process\n", c.StartsDelta, c.Iterations, c.Verified, c.Iterations)
	if !c.OK {
		fmt.Fprintf(w, "\n!!! NOT ALL COLD: only %d of %d timed requests were verified cold starts; the cold figures above are NOT cold-start times !!!\n", c.Verified, c.Iterations)
	}
	fmt.Fprintf(w, "\n%s\n", line)
	if jsonPath != "" {
		if err := os.WriteFile(jsonPath, append(line, '\n'), 0o644); err != nil {
			return fmt.Errorf("write -json: %w", err)
		}
	}
	return nil
}

// namedResult is a warm result with its name in the table.
type namedResult struct {
	name string
	res  warmResult
}

func (r report) targets() []namedResult {
	return []namedResult{{"bare reverse_proxy", r.Bare}, {"guardian_function", r.Runtime}}
}

func joinFloats(xs []float64) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = strconv.FormatFloat(x, 'f', 0, 64)
	}
	return strings.Join(parts, " ")
}
