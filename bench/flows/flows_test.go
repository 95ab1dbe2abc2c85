// Package flows benchmarks whole product flows through the full edge (the
// repository's Caddyfile, every module, the real function binaries, real
// PostgreSQL, Redis and ClickHouse), for the targets that concern a route
// rather than one module:
//
//   - BenchmarkIngestFullEdge: collector snapshots per second accepted by
//     POST /api/v1/ingest and stored in ClickHouse (target: 5,000/s). It
//     asks 10% more than the target by default: the rate is counted up to
//     the last answer, which trails the last request by the ingest batch's
//     wait (~0.3 s), so a run asking exactly 5,000/s that stores every
//     snapshot still reads ~0.99x over 30 s.
//   - BenchmarkHealthzDuringLoginFlood: /healthz latency while 200
//     concurrent clients, each from another address, try passwords at
//     /auth/login (target: p99 under 50 ms).
//
// Each benchmark runs its load once for -flows.d whatever b.N is (run
// with -benchtime 1x) and reports its figures with b.ReportMetric, with the
// ratio to its target. Load generator, Caddy, functions and servers share
// this machine's CPUs: compare figures from the same machine.
//
//	make bench-flows   (go test -run '^$' -bench . -benchtime 1x ./bench/flows/)
package flows

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/glassmkr/guardian/bench/internal/harness"
	"github.com/glassmkr/guardian/shared/testenv"
)

var (
	duration    = flag.Duration("flows.d", 10*time.Second, "how long each load runs")
	ingestKeys  = flag.Int("flows.ingest-keys", 64, "collector keys the snapshots are spread over (4 per customer)")
	ingestRate  = flag.Float64("flows.ingest-rate", 5500, "snapshots per second asked (open loop; the target is 5,000)")
	floodConc   = flag.Int("flows.flood-c", 200, "concurrent clients flooding /auth/login")
	healthzRate = flag.Float64("flows.healthz-rate", 50, "/healthz requests per second during the flood")
	ingestNet   = flag.Bool("flows.ingest-nethttp", false, "send snapshots with net/http's client instead of harness.RawClient (costs this machine ~40 µs more CPU per snapshot)")
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

// snapshot is shaped like a Crucible agent's push: about 4 KB of nested
// sections. Only the timestamp changes between pushes, so the rest is
// built once: the load generator shares the CPUs with what it measures.
func snapshot(ts time.Time) []byte {
	body := make([]byte, 0, len(snapshotHead)+len(snapshotTail)+40)
	body = append(body, snapshotHead...)
	body = ts.UTC().AppendFormat(body, time.RFC3339Nano)
	return append(body, snapshotTail...)
}

var snapshotHead, snapshotTail = func() (string, string) {
	var disks, nics []string
	for i := range 6 {
		n := strconv.Itoa(i)
		disks = append(disks, `{"device":"/dev/nvme`+n+`n1","mount":"/data`+n+`","fs":"ext4","total_gb":1863,"used_gb":1`+n+`2,"used_pct":27.5,"inodes_used_pct":3.1,"model":"SAMSUNG MZQL21T9HCJR","serial":"S64GNE0R`+n+`00001","health":"PASSED","temperature_c":41,"power_on_hours":18231}`)
		nics = append(nics, `{"interface":"enp`+n+`s0","state":"up","speed_mbps":10000,"rx_bytes":918273645,"tx_bytes":827364512,"rx_errors":0,"tx_errors":0,"rx_dropped":2}`)
	}
	return `{"collector_version":"0.9.4","timestamp":"`, `",` +
		`"system":{"hostname":"db1","ip":"10.0.0.1","os":"Ubuntu 24.04.4 LTS","kernel":"6.8.0-107-generic","uptime_seconds":604800},` +
		`"cpu":{"model":"AMD EPYC 7443P 24-Core Processor","cores":24,"threads":48,"load1":0.42,"load5":0.38,"load15":0.31,"usage_pct":7.9,"iowait_pct":0.4,"steal_pct":0},` +
		`"memory":{"total_mb":257614,"used_mb":40960,"available_mb":216654,"swap_total_mb":8192,"swap_used_mb":128},` +
		`"disks":[` + strings.Join(disks, ",") + `],"network":[` + strings.Join(nics, ",") + `],` +
		`"raid":[{"device":"/dev/md0","level":"raid1","state":"clean","devices":2,"failed":0}],` +
		`"ipmi":{"available":true,"sel_entries":3,"sensors":[{"name":"CPU Temp","value":52,"unit":"C","status":"ok"},{"name":"FAN1","value":5400,"unit":"RPM","status":"ok"}]},` +
		`"security":{"pending_updates":4,"security_updates":1,"reboot_required":false,"ssh_password_auth":false},` +
		`"systemd":{"failed_units":[],"units_total":214},"ntp":{"synchronized":true,"offset_ms":0.8},` +
		`"collection_status":{"duration_ms":812,"errors":[]}}`
}()

// cpuTimes is CPU time used so far: by this process (the load
// generator), by Caddy, by Caddy's children (the functions), and by the
// whole machine (/proc/stat, busy time of every CPU).
type cpuTimes struct{ generator, caddy, functions, machine time.Duration }

func cpuNow(caddy int) cpuTimes {
	var t cpuTimes
	t.generator = harness.SelfCPU()
	t.caddy = harness.ProcCPU(caddy)
	t.functions = harness.ChildrenCPU(caddy) - t.caddy
	t.machine = harness.MachineBusy()
	return t
}

func (t cpuTimes) since(t0 cpuTimes) cpuTimes {
	return cpuTimes{t.generator - t0.generator, t.caddy - t0.caddy, t.functions - t0.functions, t.machine - t0.machine}
}

func (t cpuTimes) total() time.Duration { return t.machine }

// rest is what the machine spent outside the generator, Caddy and the
// functions: the servers (ClickHouse, PostgreSQL, Redis) and anything else.
func (t cpuTimes) rest() time.Duration { return t.machine - t.generator - t.caddy - t.functions }

func count(b *testing.B, ch *testenv.CH) int64 {
	var n uint64
	if err := ch.Conn.QueryRow(context.Background(), "SELECT count() FROM "+ch.Database+".snapshots").Scan(&n); err != nil {
		b.Fatalf("count snapshots: %v", err)
	}
	return int64(n)
}

// BenchmarkIngestFullEdge sends POST /api/v1/ingest through the full edge
// at -flows.ingest-rate snapshots per second (open loop), spread over
// -flows.ingest-keys collector keys of several customers so that the
// per-key (100/s) and per-account (500/s) buckets, which a real fleet
// spreads over many more keys, do not cap the figure: every refusal is
// counted and reported.
func BenchmarkIngestFullEdge(b *testing.B) {
	env, first, _ := testenv.EdgeEnv(b)
	ch := testenv.ClickHouse(b)
	env["GUARDIAN_CLICKHOUSE_DATABASE"] = ch.Database
	stack := testenv.StartStack(b, env)

	// A key per collector, 4 collectors per customer.
	keys := make([]string, *ingestKeys)
	c := first
	for i := range keys {
		if i > 0 && i%4 == 0 {
			c = testenv.NewCustomer(b, first.DB, first.Pepper, first.Secret)
		}
		server := c.ServerID
		if i%2 == 1 {
			server = c.OtherServerID
		}
		if i%4 >= 2 { // two more servers of this customer
			if err := c.DB.QueryRow(context.Background(), "INSERT INTO servers (customer_id, name, hostname) VALUES ($1, $2, $2) RETURNING id", c.ID, testenv.Name("s")).Scan(&server); err != nil {
				b.Fatal(err)
			}
		}
		keys[i] = c.CollectorKey(b, server)
	}
	// The collectors are other machines; here the load generator shares
	// the CPUs with the edge, so it should cost as little as it can.
	raw := harness.NewRawClient(strings.TrimPrefix(stack.URL, "http://"), 10*time.Second)
	defer raw.Close()
	generator := "harness.RawClient"
	post := func(ctx context.Context, key string, body []byte) (int, error) {
		return raw.Post(ctx, "/api/v1/ingest", []string{"Authorization: Bearer " + key, "Content-Type: application/json"}, body)
	}
	if *ingestNet {
		generator = "net/http"
		client := harness.NewClient(4096)
		post = func(ctx context.Context, key string, body []byte) (int, error) {
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, stack.URL+"/api/v1/ingest", bytes.NewReader(body))
			if err != nil {
				return 0, err
			}
			req.Header.Set("Authorization", "Bearer "+key)
			req.Header.Set("Content-Type", "application/json")
			resp, err := client.Do(req)
			if err != nil {
				return 0, err
			}
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			return resp.StatusCode, err
		}
	}
	// Warm up: start the functions and fill the caches.
	for _, k := range keys {
		if st, err := post(context.Background(), k, snapshot(time.Now())); err != nil || st/100 != 2 {
			b.Fatalf("warm-up ingest: %d %v\n%s", st, err, stack.Log())
		}
	}
	before := count(b, ch)

	// Open loop: request i leaves at start + i/rate, whatever the answers
	// do, round-robin over the collectors' keys (a fleet pushes on its own
	// clock, not when the edge is ready). At most 4,096 are in flight; one
	// due beyond that is not sent and counted as dropped.
	var ok, limited, other, dropped atomic.Int64
	var mu sync.Mutex
	var lat []time.Duration
	ctx, cancel := context.WithTimeout(context.Background(), *duration+60*time.Second)
	defer cancel()
	cpu0 := cpuNow(stack.Cmd.Process.Pid)
	b.ResetTimer()
	n := int(duration.Seconds() * *ingestRate)
	sem := make(chan struct{}, 4096)
	var wg sync.WaitGroup
	base := time.Now().Add(-time.Hour)
	start := time.Now()
	for i := 0; i < n; i++ {
		due := start.Add(time.Duration(float64(i) / *ingestRate * float64(time.Second)))
		if wait := time.Until(due); wait > 0 {
			time.Sleep(wait)
		}
		select {
		case sem <- struct{}{}:
		default:
			dropped.Add(1)
			continue
		}
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			defer func() { <-sem }()
			t0 := time.Now()
			st, err := post(ctx, keys[i%len(keys)], snapshot(base.Add(time.Duration(i)*time.Millisecond)))
			d := time.Since(t0)
			mu.Lock()
			lat = append(lat, d)
			mu.Unlock()
			switch {
			case err == nil && st/100 == 2:
				ok.Add(1)
			case st == http.StatusTooManyRequests:
				limited.Add(1)
			default:
				other.Add(1)
			}
		}(i)
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	cpu := cpuNow(stack.Cmd.Process.Pid).since(cpu0)

	// Every accepted snapshot must be in ClickHouse (ingest batches for a
	// few ms before it answers, so they are once the load has ended).
	stored := count(b, ch) - before
	if stored != ok.Load() {
		b.Errorf("accepted %d snapshots but ClickHouse holds %d new rows", ok.Load(), stored)
	}
	slices.Sort(lat)
	rate := float64(ok.Load()) / elapsed.Seconds()
	b.ReportMetric(rate, "snapshots/s")
	b.ReportMetric(rate/5000, "x-target")
	b.ReportMetric(harness.Ms(harness.Percentile(lat, 0.5)), "p50-ms")
	b.ReportMetric(harness.Ms(harness.Percentile(lat, 0.99)), "p99-ms")
	b.ReportMetric(float64(limited.Load()), "429s")
	b.ReportMetric(float64(other.Load()), "errors")
	b.ReportMetric(float64(dropped.Load()), "dropped")
	perSnapshot := func(d time.Duration) float64 { return math.Round(float64(d.Microseconds()) / float64(max(stored, 1))) }
	b.ReportMetric(perSnapshot(cpu.total()), "cpu-µs/snapshot")
	b.Logf("ingest: asked %.0f/s over %d collector keys for %s: %.0f snapshots/s accepted and stored (target 5,000: %.2fx), p50 %.2f ms, p99 %.2f ms, %d stored, %d rate-limited, %d other errors, %d not sent (4,096 in flight); load generator: %s",
		*ingestRate, len(keys), *duration, rate, rate/5000, harness.Ms(harness.Percentile(lat, 0.5)), harness.Ms(harness.Percentile(lat, 0.99)), stored, limited.Load(), other.Load(), dropped.Load(), generator)
	b.Logf("CPU µs per stored snapshot: %.0f in all (load generator %.0f, Caddy %.0f, functions %.0f, servers and the rest of the machine %.0f); CPUs %.0f%% busy",
		perSnapshot(cpu.total()), perSnapshot(cpu.generator), perSnapshot(cpu.caddy), perSnapshot(cpu.functions), perSnapshot(cpu.rest()),
		100*cpu.total().Seconds()/(elapsed.Seconds()*float64(runtime.NumCPU())))
}

// BenchmarkHealthzDuringLoginFlood floods /auth/login with wrong
// passwords from -flows.flood-c concurrent clients, each request from
// another address (Cf-Connecting-Ip from a trusted proxy, as a botnet
// behind Cloudflare looks), so the per-IP bucket does not stop them and
// every request reaches bcrypt. Meanwhile /healthz is sent at a fixed
// rate (open loop) and its latency measured, then compared with the same
// rate without the flood.
func BenchmarkHealthzDuringLoginFlood(b *testing.B) {
	env, c, _ := testenv.EdgeEnv(b)
	env["GUARDIAN_TRUSTED_PROXIES"] = "127.0.0.1/32"
	email := c.Password(b, "correct horse battery staple 9")
	stack := testenv.StartStack(b, env)
	healthz := harness.Target{URL: stack.URL + "/healthz"}
	probe := harness.NewClient(8)
	if !healthz.Hit(context.Background(), probe) {
		b.Fatalf("healthz not 200\n%s", stack.Log())
	}
	quiet := harness.OpenLoop(context.Background(), probe, healthz, *healthzRate, *duration/2, 64)

	body, _ := json.Marshal(map[string]string{"email": email, "password": "wrong password 123456"})
	client := harness.NewClient(*floodConc)
	var statuses sync.Map // status -> *atomic.Int64
	count := func(st int) {
		v, _ := statuses.LoadOrStore(st, new(atomic.Int64))
		v.(*atomic.Int64).Add(1)
	}
	floodCtx, stopFlood := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	var n atomic.Int64
	for w := range *floodConc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; floodCtx.Err() == nil; i++ {
				req, _ := http.NewRequestWithContext(floodCtx, http.MethodPost, stack.URL+"/auth/login", bytes.NewReader(body))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("Cf-Connecting-Ip", fmt.Sprintf("198.51.%d.%d", w%250, i%250))
				resp, err := client.Do(req)
				if err != nil {
					if floodCtx.Err() == nil {
						count(0)
					}
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				count(resp.StatusCode)
				n.Add(1)
			}
		}()
	}
	time.Sleep(2 * time.Second) // let the flood fill the bcrypt queue
	b.ResetTimer()
	flooded := harness.OpenLoop(context.Background(), probe, healthz, *healthzRate, *duration, 64)
	b.StopTimer()
	stopFlood()
	wg.Wait()

	slices.Sort(quiet.Latencies)
	slices.Sort(flooded.Latencies)
	p99 := harness.Percentile(flooded.Latencies, 0.99)
	b.ReportMetric(harness.Ms(harness.Percentile(quiet.Latencies, 0.99)), "quiet-p99-ms")
	b.ReportMetric(harness.Ms(harness.Percentile(flooded.Latencies, 0.5)), "flood-p50-ms")
	b.ReportMetric(harness.Ms(p99), "flood-p99-ms")
	b.ReportMetric(float64(50*time.Millisecond)/float64(max(p99, time.Microsecond)), "x-target")
	b.ReportMetric(float64(flooded.Errors+flooded.Dropped), "healthz-failures")
	var byStatus []string
	statuses.Range(func(k, v any) bool {
		byStatus = append(byStatus, fmt.Sprintf("%d:%d", k, v.(*atomic.Int64).Load()))
		return true
	})
	slices.Sort(byStatus)
	b.Logf("healthz at %.0f/s: quiet p99 %.2f ms; during a %d-client login flood p50 %.2f ms, p99 %.2f ms (target < 50 ms), %d failed/dropped of %d; flood answers by status %v",
		*healthzRate, harness.Ms(harness.Percentile(quiet.Latencies, 0.99)), *floodConc,
		harness.Ms(harness.Percentile(flooded.Latencies, 0.5)), harness.Ms(p99), flooded.Errors+flooded.Dropped, flooded.Scheduled, byStatus)
	if flooded.OK == 0 {
		b.Errorf("no /healthz answered during the flood")
	}
}
