// Command ingest serves POST /api/v1/ingest: one snapshot from a collector
// agent (e.g. Glassmkr's Crucible), stored in ClickHouse for the server the
// collector key is bound to.
//
// Contract (deployed agents must work unmodified): Bearer collector key,
// JSON body of one snapshot object with "timestamp" (RFC 3339) and
// "collector_version" beside named sections; answer 200
// {"success":true,"received_at":…,"active_alerts":0}. A body "server_id"
// that is not the key's server is 403 wrong_server; a body over 512 KiB is
// 413. GET answers 405, so an agent's set-up probe with its key does not
// read as an authentication failure.
//
// Grants: runtime PostgreSQL role (reads the customer's plan) and the
// ClickHouse writer; no pepper, no session secret.
package main

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/glassmkr/guardian/shared/config"
	"github.com/glassmkr/guardian/shared/db"
	"github.com/glassmkr/guardian/shared/fnserve"
	"github.com/glassmkr/guardian/shared/plan"
	"github.com/glassmkr/guardian/shared/problem"
)

func main() { fnserve.Main(setup) }

func setup(ctx context.Context, log *zap.Logger, env *config.Loader) (http.Handler, func(), error) {
	dsn := env.String(config.PGAppDSN)
	chCfg := env.LoadClickHouse()
	if err := env.Err(); err != nil {
		return nil, nil, err
	}
	pool, err := db.Open(ctx, config.PGAppDSN, dsn, 4)
	if err != nil {
		return nil, nil, err
	}
	ch, err := db.ClickHouse(chCfg, db.ClickHouseOptions{Dial: 2 * time.Second, Read: 10 * time.Second, MaxConns: 8})
	if err != nil {
		pool.Close()
		return nil, nil, err
	}
	h := &handler{
		log:         log,
		plans:       &planCache{db: pool, ttl: time.Minute, m: map[string]planEntry{}},
		store:       newBatcher((&chStore{conn: ch, table: chCfg.Database + ".snapshots"}).insertBatch, batchLimits{rows: maxBatchRows, bytes: maxBatchBytes, interval: minInsertInterval}),
		now:         time.Now,
		maxInFlight: MaxInFlightBytes,
	}
	return problem.NoQuery(h), func() { h.store.(*batcher).close(); pool.Close(); _ = ch.Close() }, nil
}

// store writes one snapshot.
type store interface {
	Insert(ctx context.Context, s snapshotRow) error
}

// minInsertInterval is the least time between the starts of two inserts.
// Every insert makes a new part, and ClickHouse 18.16 pays a fixed cost
// per part when it writes and merges it (~25-35 ms of CPU here, most of it
// in page faults of fresh merge buffers), whatever the rows. At 2,500
// snapshots/s ClickHouse spends 344 µs of CPU per snapshot with inserts
// 50 ms apart, 90 µs at 250 ms and 38 µs at 1 s (BenchmarkInsertInterval;
// ClickHouse's own advice is about one insert per second). Waiting is not
// free either: each snapshot's request waits in Caddy and here, which cost
// ~40 µs more per snapshot at 250 ms than at 50 ms in the ingest flow
// (bench/flows), against ~140 µs saved in ClickHouse. 250 ms keeps a
// snapshot's wait under load to a quarter of a second; an idle edge still
// inserts a lone snapshot at once.
const minInsertInterval = 250 * time.Millisecond

// maxBatchRows and maxBatchBytes bound one insert: rate x interval rows
// (1,250 at 5,000/s), with room for bursts. The bytes bound keeps the
// driver's column copy of a batch small even when snapshots are large.
const (
	maxBatchRows  = 10_000
	maxBatchBytes = 32 << 20
)

// batchLimits shape the batches: at most rows rows and bytes payload bytes
// (a single larger row goes alone), started no sooner than interval after
// the previous one unless full.
type batchLimits struct {
	rows, bytes int
	interval    time.Duration
}

// batcher group-commits snapshots: one goroutine sends what is queued as
// one ClickHouse batch, no sooner than the interval after the previous one
// started, and each request waits for its batch's result.
type batcher struct {
	send   func(context.Context, []*pendingRow) error
	in     chan *pendingRow
	limits batchLimits
	done   chan struct{}

	// mu is held to read by Insert while it queues, to write by close: a
	// request still reading its body when a shutdown's grace ends must be
	// told no, not send on the closed queue (a panic).
	mu     sync.RWMutex
	closed bool
}

// errClosed: the function is shutting down; the snapshot was not queued.
var errClosed = errors.New("ingest: shutting down")

type pendingRow struct {
	row snapshotRow
	err chan error
}

func newBatcher(send func(context.Context, []*pendingRow) error, l batchLimits) *batcher {
	b := &batcher{send: send, in: make(chan *pendingRow, l.rows), limits: l, done: make(chan struct{})}
	go b.loop()
	return b
}

// Insert queues r and waits until its batch is stored or failed.
func (b *batcher) Insert(ctx context.Context, r snapshotRow) error {
	p := &pendingRow{row: r, err: make(chan error, 1)}
	b.mu.RLock()
	if b.closed {
		b.mu.RUnlock()
		return errClosed
	}
	select {
	case b.in <- p:
	case <-ctx.Done():
		b.mu.RUnlock()
		return ctx.Err()
	}
	b.mu.RUnlock()
	return <-p.err
}

func (b *batcher) loop() {
	defer close(b.done)
	batch := make([]*pendingRow, 0, 1024)
	var (
		last  time.Time   // start of the previous insert
		carry *pendingRow // received but left for the next batch (over the byte bound)
		size  int         // payload bytes in batch
		full  bool        // batch is at a bound: send it now
	)
	// add takes p into the batch unless it would pass the byte bound of a
	// batch that already has rows; then p waits for the next batch.
	add := func(p *pendingRow) {
		if n := len(p.row.Payload); len(batch) > 0 && size+n > b.limits.bytes {
			carry, full = p, true
			return
		}
		batch = append(batch, p)
		size += len(p.row.Payload)
		full = len(batch) >= b.limits.rows || size >= b.limits.bytes
	}
	timer := time.NewTimer(0)
	<-timer.C
	for {
		batch, size, full = batch[:0], 0, false
		if carry != nil {
			add(carry)
			carry = nil
		} else if first, ok := <-b.in; ok {
			add(first)
		} else {
			return
		}
		// Under load, gather until the interval has passed since the last
		// insert began; when idle that moment is long gone. A full batch
		// goes at once.
		if wait := b.limits.interval - time.Since(last); wait > 0 && !full {
			timer.Reset(wait)
		gather:
			for !full {
				select {
				case p, ok := <-b.in:
					if !ok {
						break gather
					}
					add(p)
				case <-timer.C:
					break gather
				}
			}
			if !timer.Stop() {
				select {
				case <-timer.C:
				default:
				}
			}
		}
	fill:
		for !full {
			select {
			case p, ok := <-b.in:
				if !ok {
					break fill
				}
				add(p)
			default:
				break fill
			}
		}
		last = time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := b.send(ctx, batch)
		cancel()
		for _, p := range batch {
			p.err <- err
		}
		clear(batch) // drop the payloads until the next batch
	}
}

func (b *batcher) close() {
	b.mu.Lock()
	if !b.closed {
		b.closed = true
		close(b.in)
	}
	b.mu.Unlock()
	<-b.done
}

type snapshotRow struct {
	CustomerID, ServerID string
	TS, ReceivedAt       time.Time
	CollectorVersion     string
	RetentionDays        uint16
	Payload              string
}

type chStore struct {
	conn  driver.Conn
	table string
}

// insertBatch sends rows as one batch with an explicit column list (what
// ClickHouse 18.16 and current servers both accept from this driver). A
// failed send is answered 503 to every row's push, but need not have
// written nothing: ClickHouse may have taken the batch before its answer
// was lost (a deadline passed), and a batch spanning two days' partitions
// is written a part per partition, each on its own.
func (s *chStore) insertBatch(ctx context.Context, rows []*pendingRow) error {
	b, err := s.conn.PrepareBatch(ctx, "INSERT INTO "+s.table+" (customer_id, server_id, ts, received_at, collector_version, retention_days, payload)")
	if err != nil {
		return err
	}
	for _, p := range rows {
		r := p.row
		if err := b.Append(r.CustomerID, r.ServerID, r.TS, r.ReceivedAt, r.CollectorVersion, r.RetentionDays, r.Payload); err != nil {
			_ = b.Abort()
			return err
		}
	}
	return b.Send()
}

// planCache remembers each customer's plan for a while: retention depends
// on it, and it changes rarely.
type planCache struct {
	db  *pgxpool.Pool
	ttl time.Duration
	mu  sync.Mutex
	m   map[string]planEntry
}

type planEntry struct {
	plan string
	at   time.Time
}

func (c *planCache) plan(ctx context.Context, customer string, now time.Time) (string, error) {
	c.mu.Lock()
	e, ok := c.m[customer]
	c.mu.Unlock()
	if ok && now.Sub(e.at) < c.ttl {
		return e.plan, nil
	}
	var plan string
	if err := c.db.QueryRow(ctx, "SELECT plan FROM customers WHERE id = $1", customer).Scan(&plan); err != nil {
		return "", err
	}
	c.mu.Lock()
	if len(c.m) > 100_000 {
		clear(c.m)
	}
	c.m[customer] = planEntry{plan, now}
	c.mu.Unlock()
	return plan, nil
}

// RetentionDays is how long a plan keeps snapshots (security posture).
func RetentionDays(p string) uint16 { return uint16(plan.SnapshotRetention(p)) }
