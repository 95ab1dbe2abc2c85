package audit

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/glassmkr/guardian/shared/testenv"
)

// BenchmarkWriterThroughput drives the writer from many concurrent
// requests (as the edge does) and reports durable rows per second.
// Target: at least 100,000 rows/s.
func BenchmarkWriterThroughput(b *testing.B) {
	pg := testenv.Postgres(b)
	w, err := NewWriter(WriterConfig{DSN: pg.AppDSN, SpoolDir: b.TempDir(), Chains: benchChains})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	const workers = 4096
	var next atomic.Int64
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1)
				if i > int64(b.N) {
					return
				}
				if err := w.Record(context.Background(), testRow(int(i))); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "rows/s")
}

var benchChains = 4

// BenchmarkRecordLatency is one row at a time: the wait a lone request
// adds to its response.
func BenchmarkRecordLatency(b *testing.B) {
	pg := testenv.Postgres(b)
	w, err := NewWriter(WriterConfig{DSN: pg.AppDSN, SpoolDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		if err := w.Record(context.Background(), testRow(i)); err != nil {
			b.Fatal(err)
		}
	}
}
