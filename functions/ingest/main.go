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
		log:   log,
		plans: &planCache{db: pool, ttl: time.Minute, m: map[string]planEntry{}},
		store: newBatcher(&chStore{conn: ch, table: chCfg.Database + ".snapshots"}, 1000, minInsertInterval),
		now:   time.Now,
	}
	return h, func() { h.store.(*batcher).close(); pool.Close(); _ = ch.Close() }, nil
}

// store writes one snapshot.
type store interface {
	Insert(ctx context.Context, s snapshotRow) error
}

// minInsertInterval is the least time between the starts of two inserts.
// Every insert makes a new part that ClickHouse merges again and again in
// the background: measured here, inserts of ~30 rows each made ClickHouse
// rewrite every row ~30 times and spend a whole core on merges. Spacing
// inserts under load makes them larger (rate x interval rows) and merges
// rarer; an idle edge still inserts a lone snapshot at once.
const minInsertInterval = 50 * time.Millisecond

// batcher group-commits snapshots: one goroutine sends what is queued as
// one ClickHouse batch, no sooner than minInterval after the previous one
// started, and each request waits for its batch's result.
type batcher struct {
	ch          *chStore
	in          chan *pendingRow
	maxBatch    int
	minInterval time.Duration
	done        chan struct{}
}

type pendingRow struct {
	row snapshotRow
	err chan error
}

func newBatcher(ch *chStore, maxBatch int, minInterval time.Duration) *batcher {
	b := &batcher{ch: ch, in: make(chan *pendingRow, 4*maxBatch), maxBatch: maxBatch, minInterval: minInterval, done: make(chan struct{})}
	go b.loop()
	return b
}

// Insert queues r and waits until its batch is stored or failed.
func (b *batcher) Insert(ctx context.Context, r snapshotRow) error {
	p := &pendingRow{row: r, err: make(chan error, 1)}
	select {
	case b.in <- p:
	case <-ctx.Done():
		return ctx.Err()
	}
	return <-p.err
}

func (b *batcher) loop() {
	defer close(b.done)
	batch := make([]*pendingRow, 0, b.maxBatch)
	var last time.Time // start of the previous insert
	timer := time.NewTimer(0)
	<-timer.C
	for first := range b.in {
		batch = append(batch[:0], first)
		// Under load, gather until minInterval has passed since the last
		// insert began; when idle that moment is long gone.
		if wait := b.minInterval - time.Since(last); wait > 0 {
			timer.Reset(wait)
		gather:
			for len(batch) < b.maxBatch {
				select {
				case p, ok := <-b.in:
					if !ok {
						break gather
					}
					batch = append(batch, p)
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
		for len(batch) < b.maxBatch {
			select {
			case p, ok := <-b.in:
				if !ok {
					break fill
				}
				batch = append(batch, p)
			default:
				break fill
			}
		}
		last = time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := b.ch.insertBatch(ctx, batch)
		cancel()
		for _, p := range batch {
			p.err <- err
		}
	}
}

func (b *batcher) close() {
	close(b.in)
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
// batch is all-or-nothing: a failed send writes nothing.
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
