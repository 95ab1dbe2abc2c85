package audit

import (
	"context"
	"fmt"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/glassmkr/guardian/shared/audit"
	"github.com/glassmkr/guardian/shared/identity"
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

// BenchmarkRowAnnotated builds the row of a collector push, whose
// function annotates it: the edge's work per snapshot before the row is
// queued.
func BenchmarkRowAnnotated(b *testing.B) {
	h := &Handler{log: zap.NewNop()}
	req := httptest.NewRequest("POST", "/api/v1/ingest", nil)
	req.Header.Set("User-Agent", "crucible/0.9.3")
	req = req.WithContext(context.WithValue(req.Context(), caddyhttp.VarsCtxKey, map[string]any{}))
	id := &identity.Identity{Kind: identity.KindCollector, CustomerID: "6f1c2a7e-9b1d-4f3a-8c2e-1d2f3a4b5c6d", KeyID: "7a1c2a7e-9b1d-4f3a-8c2e-1d2f3a4b5c6d", ServerID: "8b1c2a7e-9b1d-4f3a-8c2e-1d2f3a4b5c6d"}
	ann := audit.Annotation{ResourceType: "snapshot", ResourceID: id.ServerID, Action: "create",
		Metadata: map[string]any{"collector_version": "0.9.3", "bytes": 4012}}.Encode()
	start := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		_ = h.row(req, id, "", 200, ann, start, "req-1")
	}
}

// BenchmarkReplay moves a spooled segment of 20,000 rows (as a
// PostgreSQL outage of a few seconds leaves under load) into PostgreSQL
// and reports rows/s: the pace the edge's load must stay under for the
// spool to be handed back while the load goes on.
func BenchmarkReplay(b *testing.B) {
	w := newWriter(b, testenv.Postgres(b).AppDSN, 0) // the default bound
	const n = 20000
	c := &chain{}
	var took time.Duration
	for i := 0; b.Loop(); i++ {
		c.id, c.seq, c.prev = fmt.Sprintf("bench-replay-%d-%d", time.Now().UnixNano(), i), 0, nil
		rows := make([]*audit.Row, n)
		for j := range rows {
			rows[j] = testRow(j)
			c.link(rows[j])
		}
		if err := w.spool.append(rows); err != nil {
			b.Fatal(err)
		}
		names := sealAll(b, w.spool)
		start := time.Now()
		for _, name := range names {
			if err := w.replaySegment(context.Background(), name); err != nil {
				b.Fatal(err)
			}
			if err := w.spool.remove(name); err != nil {
				b.Fatal(err)
			}
		}
		took += time.Since(start)
	}
	b.ReportMetric(float64(b.N*n)/took.Seconds(), "rows/s")
}
