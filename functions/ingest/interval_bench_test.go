package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/glassmkr/guardian/shared/migrate"
	"github.com/glassmkr/guardian/shared/testenv"
)

var (
	intervalRate = flag.Float64("ingest.rate", 2500, "snapshots per second in BenchmarkInsertInterval")
	intervalLoad = flag.Duration("ingest.d", 10*time.Second, "load per interval in BenchmarkInsertInterval")
)

// BenchmarkInsertInterval measures what minInsertInterval is for: the CPU a
// private ClickHouse spends per snapshot (inserts and the merges they
// cause) when the batcher stores -ingest.rate agent-shaped snapshots per
// second for -ingest.d, at several intervals. Merges outlive the load, so
// the CPU is counted until 10 s after it. Run it alone:
//
//	go test -run '^$' -bench InsertInterval -benchtime 1x ./functions/ingest/
func BenchmarkInsertInterval(b *testing.B) {
	env, dir := testenv.Private(b, "clickhouse")
	conn, err := clickhouse.Open(&clickhouse.Options{
		Addr: []string{env["GUARDIAN_CLICKHOUSE_ADDR"]},
		Auth: clickhouse.Auth{Database: "default", Username: env["GUARDIAN_CLICKHOUSE_USER"], Password: env["GUARDIAN_CLICKHOUSE_PASSWORD"]},
	})
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	pidText, err := os.ReadFile(filepath.Join(dir, "clickhouse", "clickhouse.pid"))
	if err != nil {
		b.Fatal(err)
	}
	pid := strings.TrimSpace(string(pidText))
	snap := crucibleSnapshot(time.Now().Add(-time.Minute), "")

	for i, interval := range []time.Duration{50 * time.Millisecond, minInsertInterval, time.Second} {
		b.Run(interval.String(), func(b *testing.B) {
			db := fmt.Sprintf("interval_%d", i)
			if _, err := migrate.ClickHouse(context.Background(), conn, db); err != nil {
				b.Fatal(err)
			}
			store := &chStore{conn: conn, table: db + ".snapshots"}
			batches := 0
			count := func(ctx context.Context, rows []*pendingRow) error {
				batches++ // only the batcher's goroutine calls this
				return store.insertBatch(ctx, rows)
			}
			bt := newBatcher(count, batchLimits{rows: maxBatchRows, bytes: maxBatchBytes, interval: interval})
			defer bt.close()
			cpu0 := processCPU(b, pid)
			n := int(intervalLoad.Seconds() * *intervalRate)
			var wg sync.WaitGroup
			var mu sync.Mutex
			var failed error
			start := time.Now()
			for k := range n {
				time.Sleep(time.Until(start.Add(time.Duration(float64(k) / *intervalRate * float64(time.Second)))))
				now := time.Now().UTC().Truncate(time.Second)
				row := snapshotRow{CustomerID: "c" + strconv.Itoa(k%16), ServerID: "s" + strconv.Itoa(k%64), TS: now, ReceivedAt: now, CollectorVersion: "0.9.4", RetentionDays: 90, Payload: snap}
				wg.Add(1)
				go func() {
					defer wg.Done()
					if err := bt.Insert(context.Background(), row); err != nil {
						mu.Lock()
						failed = err
						mu.Unlock()
					}
				}()
			}
			wg.Wait()
			if failed != nil {
				b.Fatal(failed)
			}
			time.Sleep(10 * time.Second)
			cpu := processCPU(b, pid) - cpu0
			b.ReportMetric(float64(cpu.Microseconds())/float64(n), "ch-cpu-µs/snapshot")
			b.ReportMetric(float64(n)/float64(batches), "rows/insert")
		})
	}
}

// processCPU is the user+system CPU time pid has used, all threads.
func processCPU(b *testing.B, pid string) time.Duration {
	stat, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		b.Fatal(err)
	}
	s := string(stat)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / 100 // clock ticks (USER_HZ)
}
