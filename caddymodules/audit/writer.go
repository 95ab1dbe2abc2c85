// Package audit is the guardian_audit Caddy module and its writer: one
// api_audit_log row for every authenticated call and every failed
// authentication, group-committed to PostgreSQL, or fsynced to a local
// spool while PostgreSQL is away, and the response held until then.
package audit

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/glassmkr/guardian/shared/audit"
	"github.com/glassmkr/guardian/shared/logevery"
	"github.com/glassmkr/guardian/shared/mono"
	"github.com/glassmkr/guardian/shared/pgdsn"
)

// WriterConfig configures NewWriter.
type WriterConfig struct {
	DSN      string // the runtime role: INSERT on api_audit_log
	SpoolDir string
	// MaxSpool bounds the spool on disk; past it, rows are refused (and
	// so are the requests they describe). Default 1 GiB.
	MaxSpool int64
	// MaxBatch bounds one group commit. Default 1000.
	MaxBatch int
	// Queue bounds rows waiting in memory. Default 10000.
	Queue int
	// Chains is how many hash chains (and COPY streams) write in
	// parallel. Default 4.
	Chains int
	// Linger is how long a busy chain waits for more rows before it
	// commits a batch (see gather). 0: never (a batch is what is queued).
	Linger time.Duration
	// LingerAfter is the batch size from which a chain counts as busy:
	// the next batch lingers only after one at least this large. Default 8.
	LingerAfter int
	Log         *zap.Logger
}

// Writer turns audit rows into durable rows: several chains, each one
// goroutine that group-commits what is queued for it, so that COPY streams
// overlap while every chain stays in order.
type Writer struct {
	db          *pgxpool.Pool
	spool       *spool
	digests     *digests
	chains      []*chain
	next        atomic.Uint64
	maxBatch    int
	linger      atomic.Int64 // time.Duration; SetLinger
	holds       holds        // the settings each config asked for; Hold
	lingerAfter int
	coming      *coming
	log         *zap.Logger

	// unrecordedLog gates the handlers' lines about rows not recorded.
	unrecordedLog  logevery.Gate
	lastWarn       atomic.Int64
	lastSaltWarn   atomic.Int64
	lastReplayWarn atomic.Int64
	// handBackAt is when the replayer may next hold the chains for a
	// hand-back (mono.Nanos), and handBackPause the pause after the last
	// one given up (spool.handBack; only the replayer moves them).
	handBackAt    atomic.Int64
	handBackPause atomic.Int64
	// replayBuf is the replayer's COPY body, reused batch after batch.
	replayBuf []byte

	closing sync.RWMutex // held to read while queueing, to write by Close
	closed  bool
	// isClosed is closed, for announce, which must not wait on closing:
	// a row waiting for room in a full queue holds it to read.
	isClosed atomic.Bool
	// draining: Destruct has begun; no new row may be announced, so that
	// the count it waits on only falls. announcing guards it: held to
	// read by announce, to write by Destruct, which so never waits for a
	// row waiting for room (a reload would, up to the audit's timeout).
	announcing sync.RWMutex
	draining   bool

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// chain is one writer's hash chain and its queue.
type chain struct {
	in chan *pending
	// restartAsked: the spool's replay found one of this chain's rows
	// displaced, so verify stops there; the next batch starts a new chain.
	restartAsked atomic.Bool
	buf          []byte // the COPY body, reused batch after batch
	base         string // id of the chain's first generation
	gen          int
	id           string
	seq          int64
	prev         []byte
}

type pending struct {
	row  *audit.Row
	done chan error
}

var pendingPool = sync.Pool{New: func() any { return &pending{done: make(chan error, 1)} }}

// NewWriter opens the spool (replaying what an earlier run left there)
// and starts the writer and the replayer.
func NewWriter(cfg WriterConfig) (*Writer, error) {
	if cfg.MaxSpool <= 0 {
		cfg.MaxSpool = DefaultMaxSpool
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = 1000
	}
	if cfg.Queue <= 0 {
		cfg.Queue = 10000
	}
	if cfg.Chains <= 0 {
		cfg.Chains = 4
	}
	if cfg.LingerAfter <= 0 {
		cfg.LingerAfter = 8
	}
	if cfg.Log == nil {
		cfg.Log = zap.NewNop()
	}
	pcfg, err := pgdsn.Pool("audit: the PostgreSQL DSN", cfg.DSN)
	if err != nil {
		return nil, err
	}
	// One connection per chain's COPY, one for salt reads and one for the
	// spool's replay: a salt read must not time out waiting behind COPYs
	// (which would leave rows with a digest verify cannot check).
	pcfg.MaxConns = int32(cfg.Chains + 2)
	db, err := pgxpool.NewWithConfig(context.Background(), pcfg)
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	sp, err := openSpool(cfg.SpoolDir, cfg.MaxSpool)
	if err != nil {
		db.Close()
		return nil, err
	}
	w := &Writer{db: db, spool: sp, digests: newDigests(), maxBatch: cfg.MaxBatch, lingerAfter: cfg.LingerAfter, coming: newComing(), log: cfg.Log}
	w.SetLinger(cfg.Linger)
	var base [6]byte
	_, _ = rand.Read(base[:])
	for i := range cfg.Chains {
		c := &chain{in: make(chan *pending, cfg.Queue/cfg.Chains+1), base: fmt.Sprintf("%x-%d", base, i)}
		c.id = c.base
		w.chains = append(w.chains, c)
	}
	if !sp.empty() {
		sp.startSpooling()
		w.log.Warn("audit spool holds rows from an earlier run; replaying them", zap.Int64("bytes", sp.size()))
	}
	metrics.spoolBytes.Set(float64(sp.size()))
	ctx, cancel := context.WithCancel(context.Background())
	w.cancel = cancel
	w.wg.Add(len(w.chains) + 1)
	for _, c := range w.chains {
		go w.loop(ctx, c)
	}
	go w.replay(ctx)
	return w, nil
}

// Record queues row and waits until it is committed to PostgreSQL or
// fsynced to the spool. The chain fields are filled in by the writer. A
// row the table would refuse is refused at once. ctx bounds only the wait
// for a place in the queue: once queued, the row is always waited for.
func (w *Writer) Record(ctx context.Context, row *audit.Row) error {
	return w.record(ctx, 0, row, false)
}

// announce tells the writer that a row will come (an audited request has
// begun), so that a lingering chain waits for it; recordAnnounced or
// withdraw must follow, once.
//
// It reports false, announcing nothing, once the writer is being unloaded
// (Destruct): the caller must then refuse the request before anything is
// done, as its row could find the writer closed.
func (w *Writer) announce() bool {
	w.announcing.RLock()
	defer w.announcing.RUnlock()
	if w.isClosed.Load() || w.draining {
		return false
	}
	w.coming.announce()
	return true
}

// withdraw takes back an announcement whose row will not be recorded.
func (w *Writer) withdraw() { w.coming.arrived() }

// recordAnnounced is the edge's Record, for an announced row: the wait
// for a place in the queue is bounded by wait alone (the queue is nearly
// always open, so this path builds no context and starts a timer only
// when the queue is full), and the announcement ends once the row is
// queued or refused.
func (w *Writer) recordAnnounced(wait time.Duration, row *audit.Row) error {
	return w.record(nil, wait, row, true)
}

// record is Record (ctx set) or recordAnnounced (ctx nil); announced ends
// an announcement once the row is queued or refused.
func (w *Writer) record(ctx context.Context, wait time.Duration, row *audit.Row, announced bool) error {
	if announced {
		defer w.arrivedOnce(&announced)
	}
	if err := checkRow(row); err != nil {
		return err
	}
	p := pendingPool.Get().(*pending)
	p.row = row
	// Rows are queued only while the chains' loops still run (Close waits
	// for the queueing to end before it stops them, and they drain what
	// is queued), so every queued row is answered.
	w.closing.RLock()
	if w.closed {
		w.closing.RUnlock()
		pendingPool.Put(p)
		return errClosed
	}
	c := w.pick()
	select {
	case c.in <- p:
	default:
		if err := waitForRoom(ctx, wait, c, p); err != nil {
			w.closing.RUnlock()
			pendingPool.Put(p)
			return err
		}
	}
	w.closing.RUnlock()
	w.arrivedOnce(&announced) // queued: a lingering chain may stop waiting for it
	// The row is the writer's now: wait for it even if the client left,
	// so p is not reused while the writer still holds it.
	err := <-p.done
	p.row = nil
	pendingPool.Put(p)
	return err
}

// arrivedOnce ends an announcement if *announced, and clears it.
func (w *Writer) arrivedOnce(announced *bool) {
	if *announced {
		*announced = false
		w.coming.arrived()
	}
}

// waitForRoom queues p on a full chain, waiting until ctx ends or, without
// ctx, for wait.
func waitForRoom(ctx context.Context, wait time.Duration, c *chain, p *pending) error {
	if ctx != nil {
		select {
		case c.in <- p:
			return nil
		case <-ctx.Done():
			return fmt.Errorf("audit: queue full: %w", ctx.Err())
		}
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case c.in <- p:
		return nil
	case <-t.C:
		return fmt.Errorf("audit: queue full for %s", wait)
	}
}

// pick chooses the chain for a row: the first whose queue is not already
// a full batch. At ordinary load every row joins the first chain, so its
// group commits stay large (a COPY of one row costs PostgreSQL nearly as
// much as a COPY of fifty); only when that chain falls behind do the next
// ones take the overflow in parallel. (Sending rows that arrive while the
// first chain writes to the next one instead was measured: it splits the
// group commits, many into lone rows, and cost PostgreSQL twice the CPU
// per row.)
func (w *Writer) pick() *chain {
	for _, c := range w.chains {
		if len(c.in) < w.maxBatch {
			return c
		}
	}
	// All busy: the one with the most room (from a rotating start, so
	// that ties spread), so that a row finds a place while any has one.
	best := w.chains[w.next.Add(1)%uint64(len(w.chains))]
	for _, c := range w.chains {
		if len(c.in) < len(best.in) {
			best = c
		}
	}
	return best
}

// Saturated reports whether the queues are at least half full and the
// rows queued and those announced (requests under way, each of which may
// queue one) fill them. A request let in then could find no room for its
// row once its function has acted, and be answered "outcome unknown";
// guardian_audit refuses it before anything is done instead. (PostgreSQL
// slow but not failing keeps the writer from spooling, so only this bounds
// the queue's wait.) The half: while PostgreSQL keeps up the queues stay
// near empty, and many requests under way (ingest waiting for ClickHouse)
// must not be refused for rows the writer will take at once.
func (w *Writer) Saturated() bool {
	queued, room := 0, 0
	for _, c := range w.chains {
		queued += len(c.in)
		room += cap(c.in)
	}
	return 2*queued >= room && int64(queued)+w.coming.n.Load() >= int64(room)
}

// SetLinger changes Linger for the batches to come (the newest Caddy
// config sharing this writer sets it).
func (w *Writer) SetLinger(d time.Duration) { w.linger.Store(int64(max(d, 0))) }

// holds are the settings of the handlers sharing a writer, oldest first.
type holds struct {
	mu   sync.Mutex
	list []*Settings
}

// Settings are what one handler asks of the writer it shares.
type Settings struct {
	Linger   time.Duration
	MaxSpool int64
}

// Hold applies s for as long as its holder lives, and returns the release
// that ends it: the newest holder left then applies again. A config that
// Caddy provisions and then rejects (another module failed) releases its
// hold in Cleanup, so the running config's settings are back, instead of
// the rejected config's staying in force.
func (w *Writer) Hold(s Settings) (release func()) {
	h := &s
	w.holds.mu.Lock()
	w.holds.list = append(w.holds.list, h)
	w.apply(*h)
	w.holds.mu.Unlock()
	return sync.OnceFunc(func() {
		w.holds.mu.Lock()
		defer w.holds.mu.Unlock()
		w.holds.list = slices.DeleteFunc(w.holds.list, func(x *Settings) bool { return x == h })
		if n := len(w.holds.list); n > 0 {
			w.apply(*w.holds.list[n-1])
		}
	})
}

func (w *Writer) apply(s Settings) {
	w.SetLinger(s.Linger)
	w.SetMaxSpool(s.MaxSpool)
}

// DefaultMaxSpool is WriterConfig.MaxSpool's default: 1 GiB.
const DefaultMaxSpool = 1 << 30

// SetMaxSpool changes the spool's bound (n <= 0: DefaultMaxSpool). Every
// config sharing the writer sets it, so a reload's new bound applies
// rather than the first config's. A full spool stays full until it
// drains.
func (w *Writer) SetMaxSpool(n int64) {
	if n <= 0 {
		n = DefaultMaxSpool
	}
	w.spool.maxBytes.Store(n)
}

// errClosed answers rows recorded after Close (a request of a config
// being replaced that outlived it).
var errClosed = errors.New("audit: writer closed")

// Refusing reports whether rows cannot be made durable right now
// (PostgreSQL away and the spool full), so requests should be refused
// before they do anything.
func (w *Writer) Refusing() bool { return w.spool != nil && w.spool.full.Load() }

// Close stops accepting rows, writes what is queued and stops.
func (w *Writer) Close() error {
	w.closing.Lock()
	w.closed = true
	w.isClosed.Store(true)
	w.closing.Unlock()
	w.cancel()
	w.wg.Wait()
	// Rows left in the spool were answered: only a writer on this
	// directory replays them. A reload or restart that moved spool_dir
	// leaves them there, and the next writer's spool_bytes gauge, its own
	// directory's, does not count them: say so, loudly.
	if left := w.spool.size(); left > 0 {
		w.log.Error("audit spool closed with answered rows not yet in PostgreSQL; a writer on this directory replays them: keep spool_dir pointing here until guardian_audit_spool_bytes is 0",
			zap.String("spool_dir", w.spool.dir), zap.Int64("bytes", left))
	}
	_ = w.spool.close() // its full spool no longer refuses anything
	w.db.Close()
	return nil
}

// arrivalsWait bounds how long a writer being unloaded waits for the rows
// of requests under way: the server's write ceiling (the Caddyfile's
// `write 11m`), past which no request of the old config can still run.
const arrivalsWait = 11 * time.Minute

// exitArrivalsWait bounds that wait when Caddy is exiting, within the
// unit's TimeoutStopSec after the servers' 30 s grace period.
const exitArrivalsWait = 5 * time.Second

// Destruct implements caddy.Destructor: it closes the writer once every
// announced row has arrived. A reload that replaces the writer (a new
// spool_dir) unloads it while the old config's requests still run, and
// a request whose function has acted must still get its row; closing at
// once answered it 503 "outcome unknown" with no row for what it did.
// The wait runs in the background, as the reload holds Caddy's config
// lock. With nothing announced the writer closes at once; at Caddy's exit
// it waits for announced rows a few seconds at most, then closes.
func (w *Writer) Destruct() error {
	// From here no row is announced: a request that has not announced its
	// row yet is refused before it does anything; those that have are
	// counted, and waited for.
	w.announcing.Lock()
	w.draining = true
	w.announcing.Unlock()
	if w.coming.n.Load() <= 0 {
		return w.Close()
	}
	if caddy.Exiting() {
		// No background at exit: wait here, briefly (the servers' grace
		// period has passed), then write what is queued.
		w.waitArrivals(exitArrivalsWait)
		return w.Close()
	}
	w.log.Info("audit writer replaced; it closes once the rows of requests under way are written",
		zap.Int64("announced", w.coming.n.Load()), zap.Duration("at_most", arrivalsWait))
	go func() {
		w.waitArrivals(arrivalsWait)
		_ = w.Close()
	}()
	return nil
}

// waitArrivals waits until no announced row is left to come, or for at
// most d.
func (w *Writer) waitArrivals(d time.Duration) {
	deadline := time.Now().Add(d)
	for w.coming.n.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
}

// loop is the goroutine of one chain: it takes what is queued (up to
// maxBatch) as one group commit, so batches grow with load and a lone row
// is written at once.
func (w *Writer) loop(ctx context.Context, c *chain) {
	defer w.wg.Done()
	batch := make([]*pending, 0, w.maxBatch)
	rows := make([]*audit.Row, 0, w.maxBatch)
	prev := 0 // the last batch's size
	for {
		var first *pending
		select {
		case first = <-c.in:
		case <-ctx.Done():
			// Drain: nothing queued may be dropped.
			select {
			case first = <-c.in:
			default:
				return
			}
		}
		batch = w.takeQueued(c, append(batch[:0], first))
		if linger := time.Duration(w.linger.Load()); linger > 0 && prev >= w.lingerAfter && len(batch) < w.maxBatch {
			batch = w.gather(ctx, c, batch, linger)
		}
		prev = len(batch)
		rows = rows[:0]
		for _, p := range batch {
			rows = append(rows, p.row)
		}
		w.setDigests(rows)
		if c.restartAsked.Swap(false) {
			c.restart()
		}
		for _, r := range rows {
			c.link(r)
		}
		err := w.persist(c, rows)
		if err != nil {
			// The batch's fate is not known for certain: a COPY can
			// commit and its answer still be lost. Reusing its positions
			// could then collide with stored rows, so the chain ends here
			// and a new one begins; verify sees two whole chains.
			c.restart()
		}
		metrics.batchSize.Observe(float64(len(rows)))
		for _, p := range batch {
			p.done <- err
		}
	}
}

// gather lets more rows join a busy chain's batch for up to linger.
// PostgreSQL's cost of a group commit is mostly per statement (~250 µs of
// CPU here against ~12 µs per row), so under load a few milliseconds of
// waiting make each row several times cheaper, and the CPU saved serves
// more requests. A chain is busy when its last batch held at least
// lingerAfter rows; an idle edge (a batch of one or two rows) never
// waits, so a lone request's latency does not change. The wait also ends
// when no announced row is left to come (every audited request in flight
// has queued its row): waiting longer would only leave the CPUs idle.
func (w *Writer) gather(ctx context.Context, c *chain, batch []*pending, linger time.Duration) []*pending {
	none, nothingComing := w.coming.watch()
	defer w.coming.unwatch()
	if nothingComing {
		return w.takeQueued(c, batch)
	}
	t := time.NewTimer(linger)
	defer t.Stop()
	for len(batch) < w.maxBatch {
		select {
		case p := <-c.in:
			batch = append(batch, p)
		case <-none:
			return w.takeQueued(c, batch)
		case <-t.C:
			return batch
		case <-ctx.Done(): // closing: write what is here now
			return batch
		}
	}
	return batch
}

// takeQueued adds what is queued on c to batch, up to maxBatch.
func (w *Writer) takeQueued(c *chain, batch []*pending) []*pending {
	for len(batch) < w.maxBatch {
		select {
		case p := <-c.in:
			batch = append(batch, p)
		default:
			return batch
		}
	}
	return batch
}

// askRestart has the chains that wrote the given chain ids (any of their
// generations) start a new chain with their next batch. Rows this run
// spooled may turn out displaced only when replayed, after their chain
// has gone on; without a new chain, verify would check none of its rows
// past the displaced one.
func (w *Writer) askRestart(ids []string) {
	for _, id := range ids {
		for _, c := range w.chains {
			if id == c.base || strings.HasPrefix(id, c.base+".") {
				c.restartAsked.Store(true)
			}
		}
	}
}

// restart begins a new chain (base.1, base.2, ...) after a failed batch.
func (c *chain) restart() {
	c.gen++
	c.id, c.seq, c.prev = fmt.Sprintf("%s.%d", c.base, c.gen), 0, nil
}

// link gives a row its place in the chain; its CustomerDigest is set
// (Writer.setDigests).
func (c *chain) link(r *audit.Row) {
	c.seq++
	r.WriterID, r.WriterSeq, r.PrevHash = c.id, c.seq, c.prev
	if r.CustomerDigest == nil {
		r.CustomerDigest = audit.UnknownCustomer
	}
	r.RowHash = audit.Hash(r)
	c.prev = r.RowHash
}

// persist writes rows to PostgreSQL, or to the spool while PostgreSQL is
// away or older rows still wait there.
func (w *Writer) persist(c *chain, rows []*audit.Row) error {
	for range 3 {
		if !w.spool.isSpooling() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			moved, err := insert(ctx, w.db, &c.buf, rows)
			cancel()
			if moved.Rows > 0 {
				w.logDisplaced(moved)
				// Verify stops at a chain's first break: a new chain keeps
				// the rows to come checked.
				c.restart()
			}
			if err == nil {
				metrics.rows.WithLabelValues("postgres").Add(float64(len(rows)))
				return nil
			}
			if !w.spool.isSpooling() {
				w.log.Error("audit rows cannot reach PostgreSQL; spooling them to disk until it is back", zap.Error(err))
			}
			w.spool.startSpooling()
		}
		spooled, err := w.spool.appendWhileSpooling(rows)
		if !spooled {
			continue // the replayer drained the spool meanwhile: go direct
		}
		metrics.spoolBytes.Set(float64(w.spool.size()))
		if err != nil {
			// Whether the limit or the disk is reached (or the disk
			// fails), rows cannot be made durable: refuse requests before
			// they run until the replay has emptied the spool, and say so
			// once, not once per batch.
			metrics.writeErrors.Inc()
			if w.spool.markFull() {
				w.log.Error("audit rows cannot be made durable (PostgreSQL away, spool unwritable); refusing requests until the spool is replayed",
					zap.Error(err), zap.Int64("spool_bytes", w.spool.size()), zap.Int64("limit_bytes", w.spool.maxBytes.Load()))
			}
			return err
		}
		metrics.rows.WithLabelValues("spool").Add(float64(len(rows)))
		w.warnIfGrowing()
		return nil
	}
	metrics.writeErrors.Inc()
	return errors.New("audit: PostgreSQL and the spool kept trading places; rows not written")
}

// warnIfGrowing logs, at most once a minute, how large the spool is.
func (w *Writer) warnIfGrowing() {
	if !due(&w.lastWarn) {
		return
	}
	w.log.Warn("audit spool is growing while PostgreSQL is away",
		zap.Int64("bytes", w.spool.size()), zap.Int64("limit_bytes", w.spool.maxBytes.Load()))
}

// due reports whether a minute has passed since *last, and if so makes
// now the last time: a warning that would repeat with every batch or tick
// is said once a minute.
func due(last *atomic.Int64) bool {
	now := mono.Nanos(time.Now())
	l := last.Load()
	return now-l >= int64(time.Minute) && last.CompareAndSwap(l, now)
}

// replay moves spooled rows to PostgreSQL, oldest segment first, then
// hands writing back to the writer loop.
func (w *Writer) replay(ctx context.Context) {
	defer w.wg.Done()
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if !w.spool.isSpooling() {
			continue
		}
		// The next tick tries again, whatever failed.
		if err := w.replayOnce(ctx); err != nil && ctx.Err() == nil && !errors.Is(err, errAway) {
			w.replayFailed(err)
		}
	}
}

// errAway marks a replay that failed because PostgreSQL cannot be
// reached: expected while it is away, and said when spooling began.
var errAway = errors.New("audit: PostgreSQL cannot be reached")

// replayFailed counts a replay that failed although PostgreSQL answers (a
// grant lost, a row it refuses, a spool segment that cannot be read or
// removed), and logs it once a minute. Such a failure recurs at every
// tick until someone fixes it, while the spool fills, and once it is
// full every audited request is refused.
func (w *Writer) replayFailed(err error) {
	metrics.replayErrors.Inc()
	if !due(&w.lastReplayWarn) {
		return
	}
	w.log.Error("audit spool cannot be replayed into PostgreSQL although it answers; retrying, and requests are refused once the spool is full",
		zap.Error(err), zap.Int64("spool_bytes", w.spool.size()), zap.Int64("limit_bytes", w.spool.maxBytes.Load()))
}

// unreachable reports whether err, from PostgreSQL, means it cannot be
// reached (the connection failed or was lost, or the server is shutting
// down or starting up), rather than an answer.
func unreachable(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return strings.HasPrefix(pgErr.Code, "08") || strings.HasPrefix(pgErr.Code, "57P")
	}
	// Not net.Error: a deadline passed and a file error satisfy it too.
	// Nor any failure to connect: one whose cause is not the network (a
	// certificate refused, say) will not pass by itself.
	var opErr *net.OpError
	return errors.As(err, &opErr) || errors.Is(err, net.ErrClosed) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}

func (w *Writer) replayOnce(ctx context.Context) error {
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	err := w.db.Ping(pctx)
	cancel()
	if err != nil && (unreachable(err) || errors.Is(err, context.DeadlineExceeded)) {
		return fmt.Errorf("%w: %w", errAway, err)
	}
	if err != nil {
		// PostgreSQL answered, refusing: a password changed, a pg_hba
		// line, CONNECT revoked. It will not pass by itself.
		return fmt.Errorf("audit spool replay: connect: %w", err)
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := w.spool.seal(); err != nil {
			return err
		}
		names, err := w.spool.sealed()
		if err != nil {
			return err
		}
		for _, name := range names {
			if err := w.replaySegment(ctx, name); err != nil {
				return err
			}
			if err := w.spool.remove(name); err != nil {
				return err
			}
			metrics.spoolBytes.Set(float64(w.spool.size()))
		}
		// Hand back only when nothing is left, under the spool's lock, so
		// no row a chain spools meanwhile is left behind. The chains wait
		// on that lock while the last segment is replayed: a PostgreSQL
		// that stops answering then holds them for handBackWait at most,
		// and the segment is replayed at the next pass instead. One that
		// stays that slow would hold them again at every pass: after a
		// hand-back given up, the passes hand back for a while only when
		// no row is open (nothing to replay under the lock), and otherwise
		// replay what they sealed, the chains spooling meanwhile.
		maxRows := w.maxBatch
		paused := mono.Nanos(time.Now()) < w.handBackAt.Load()
		if paused {
			maxRows = 0
		}
		drained, err := w.spool.handBack(maxRows, func(name string) error {
			hctx, cancel := context.WithTimeout(ctx, handBackWait)
			defer cancel()
			return w.replaySegment(hctx, name)
		})
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
				w.handBackGivenUp()
			}
			return err
		}
		if drained {
			w.handBackPause.Store(0)
			metrics.spoolBytes.Set(0)
			w.log.Info("audit spool replayed into PostgreSQL; writing directly again")
			return nil
		}
		if paused {
			return nil // the next tick seals and replays what came meanwhile
		}
	}
}

// handBackWait bounds the replay of the last segment while the chains
// wait on the spool's lock (spool.handBack).
const handBackWait = 2 * time.Second

// The pause before the next hand-back after one given up: the first, then
// doubled up to the last. Spooling meanwhile costs nothing but a longer
// spool, which the passes keep replaying; holding the chains costs every
// audited request up to handBackWait.
const (
	firstHandBackPause = 10 * time.Second
	lastHandBackPause  = time.Minute
)

// handBackGivenUp counts a hand-back whose replay outlasted handBackWait
// and pauses the next one.
func (w *Writer) handBackGivenUp() {
	metrics.handBackTimeouts.Inc()
	pause := min(max(2*time.Duration(w.handBackPause.Load()), firstHandBackPause), lastHandBackPause)
	w.handBackPause.Store(int64(pause))
	w.handBackAt.Store(mono.Nanos(time.Now().Add(pause)))
}

// replaySegment moves the rows of spool segment name to PostgreSQL, by
// the chains' binary COPY (insert): row by row, as before, the replay
// moved ~15k rows/s here, so a spool filled by a busier edge was never
// handed back; by COPY ~50k (BenchmarkReplay). A batch that holds a row
// already stored (a crash between commit and removal) falls back to
// insert's row-by-row path, which skips it.
func (w *Writer) replaySegment(ctx context.Context, name string) error {
	replayed := 0
	corrupt, err := w.spool.each(name, w.maxBatch, func(rows []*audit.Row) error {
		ictx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		moved, err := insert(ictx, w.db, &w.replayBuf, rows)
		if err != nil && (unreachable(err) || errors.Is(err, context.DeadlineExceeded)) {
			// Silent past the deadline (a hung host, or slower than the
			// hand-back's wait): away, as for the ping, not a failure
			// that loses rows (which pages).
			return fmt.Errorf("%w: %w", errAway, err)
		}
		if err != nil {
			return fmt.Errorf("audit spool replay: %w", err)
		}
		w.logDisplaced(moved)
		w.askRestart(moved.Writers)
		replayed += len(rows)
		return nil
	})
	if err != nil {
		return err
	}
	if corrupt > 0 {
		// Rows whose requests were answered, damaged on disk.
		metrics.spoolCorrupt.Add(float64(corrupt))
		w.log.Error("audit spool: rows damaged on disk could not be replayed; they are lost",
			zap.String("segment", name), zap.Int("rows", corrupt), zap.Int("replayed", replayed))
	}
	metrics.replayed.Add(float64(replayed))
	return nil
}

var columns = []string{"customer_id", "key_id", "user_id", "occurred_at", "source_ip", "user_agent", "request_id",
	"method", "path", "resource_type", "resource_id", "action", "result", "status_code", "metadata",
	"writer_id", "writer_seq", "prev_hash", "row_hash", "customer_digest"}

func values(r *audit.Row) []any {
	var ip any
	if a, err := netip.ParseAddr(r.SourceIP); err == nil {
		ip = a
	}
	return []any{nullable(r.CustomerID), nullable(r.KeyID), nullable(r.UserID), r.OccurredAt, ip, r.UserAgent, r.RequestID,
		r.Method, r.Path, nullable(r.ResourceType), nullable(r.ResourceID), r.Action, r.Result, int16(r.StatusCode), r.Metadata,
		r.WriterID, r.WriterSeq, r.PrevHash, r.RowHash, r.CustomerDigest}
}

func nullable(s string) any {
	if s == "" {
		return nil
	}
	return s
}

// copySQL is the statement copyBinary's output is for.
var copySQL = "COPY api_audit_log (" + strings.Join(columns, ", ") + ") FROM STDIN (FORMAT binary)"

// insert writes a batch with one binary COPY, encoded into *buf (reused
// by the caller's chain). A replayed row (its chain position already
// stored) makes COPY fail as a whole; the batch is then inserted row by
// row (insertIgnoringDuplicates), which also stores elsewhere any row
// whose position another row holds (see displaced).
//
// customer_id is stored as given: the table has no foreign key (migration
// 0011), so a row whose customer was deleted since the request keeps the
// id until account-purge nulls it.
func insert(ctx context.Context, db *pgxpool.Pool, buf *[]byte, rows []*audit.Row) (displaced, error) {
	if len(rows) == 1 {
		// A lone row (an edge that is not busy): a prepared INSERT is one
		// round trip and about a fifth less PostgreSQL CPU than a COPY of
		// one row. It says whether it stored the row.
		var stored bool
		err := db.QueryRow(ctx, insertOne, values(rows[0])...).Scan(&stored)
		if !errors.Is(err, pgx.ErrNoRows) {
			return displaced{}, err
		}
		return insertIgnoringDuplicates(ctx, db, rows)
	}
	b, err := copyBinary((*buf)[:0], rows)
	*buf = b
	if err != nil {
		return displaced{}, err
	}
	err = db.AcquireFunc(ctx, func(c *pgxpool.Conn) error {
		_, err := c.Conn().PgConn().CopyFrom(ctx, bytes.NewReader(b), copySQL)
		return err
	})
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		return insertIgnoringDuplicates(ctx, db, rows)
	}
	return displaced{}, err
}

// insertOne stores one row unless its chain position is already stored,
// and returns a row when it stored it.
const insertOne = `INSERT INTO api_audit_log (customer_id, key_id, user_id, occurred_at, source_ip, user_agent, request_id,
	method, path, resource_type, resource_id, action, result, status_code, metadata, writer_id, writer_seq, prev_hash, row_hash,
	customer_digest)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)
ON CONFLICT DO NOTHING
RETURNING true`

// storedHashes reads the hashes of the rows at chain positions.
const storedHashes = `SELECT writer_id, writer_seq, row_hash FROM api_audit_log
WHERE (writer_id, writer_seq) IN (SELECT * FROM unnest($1::text[], $2::bigint[]))`

// displaced tells of rows whose chain position held a row this writer did
// not write: each was stored as a chain of its own (audit.DisplacedID).
type displaced struct {
	Rows     int
	From, To string // the first such row's
	FromSeq  int64
	Writers  []string // the chains whose rows were displaced
}

// insertIgnoringDuplicates writes rows in one transaction, skipping those
// already stored (replays after a crash between commit and spool removal).
//
// A position held by a row with another hash is not a replay: a role that
// may insert audit rows wrote there first. Skipping the row would lose
// it, so it is stored as a chain of its own instead, named for its
// position and hash, so that storing it again (a replay of this very
// transaction) finds it stored. verify reports the displacement.
func insertIgnoringDuplicates(ctx context.Context, db *pgxpool.Pool, rows []*audit.Row) (displaced, error) {
	var out displaced
	err := pgx.BeginFunc(ctx, db, func(tx pgx.Tx) error {
		out = displaced{}
		taken, err := insertEach(ctx, tx, rows)
		if err != nil {
			return err
		}
		foreign, err := notStored(ctx, tx, taken)
		if err != nil || len(foreign) == 0 {
			return err
		}
		moved := make([]*audit.Row, len(foreign))
		origin := make(map[*audit.Row]*audit.Row, len(foreign)) // moved row -> the row as written
		for i, r := range foreign {
			moved[i] = alone(r, audit.DisplacedID(r.WriterID, r.WriterSeq, r.RowHash[:min(6, len(r.RowHash))]))
			origin[moved[i]] = r
		}
		taken, err = insertEach(ctx, tx, moved)
		if err != nil {
			return err
		}
		// Stored there already (a replay), or taken by yet another row:
		// then a random name, which nobody can have taken.
		again, err := notStored(ctx, tx, taken)
		if err != nil {
			return err
		}
		for _, m := range again {
			r := origin[m]
			var name [6]byte
			_, _ = rand.Read(name[:])
			if taken, err := insertEach(ctx, tx, []*audit.Row{alone(r, audit.DisplacedID(r.WriterID, r.WriterSeq, name[:]))}); err != nil || len(taken) > 0 {
				return fmt.Errorf("audit: storing a displaced row: position taken (%v)", err)
			}
		}
		// Rows found stored at their new place were told of when they
		// were moved there.
		if n := len(foreign) - (len(taken) - len(again)); n > 0 {
			out = displaced{Rows: n, From: foreign[0].WriterID, FromSeq: foreign[0].WriterSeq, To: moved[0].WriterID}
			for _, r := range foreign {
				if !slices.Contains(out.Writers, r.WriterID) {
					out.Writers = append(out.Writers, r.WriterID)
				}
			}
		}
		return nil
	})
	if err != nil {
		return displaced{}, err
	}
	return out, nil
}

// alone is r as the only row of the chain named id.
func alone(r *audit.Row, id string) *audit.Row {
	c := *r
	c.WriterID, c.WriterSeq, c.PrevHash = id, 1, nil
	c.RowHash = audit.Hash(&c)
	return &c
}

// notStored returns the rows of taken whose chain position holds a row
// with another hash (in one query: a replay may find a thousand taken).
func notStored(ctx context.Context, tx pgx.Tx, taken []*audit.Row) ([]*audit.Row, error) {
	if len(taken) == 0 {
		return nil, nil
	}
	ids, seqs := make([]string, len(taken)), make([]int64, len(taken))
	for i, r := range taken {
		ids[i], seqs[i] = r.WriterID, r.WriterSeq
	}
	rows, err := tx.Query(ctx, storedHashes, ids, seqs)
	if err != nil {
		return nil, fmt.Errorf("audit: reading taken positions: %w", err)
	}
	type pos struct {
		id  string
		seq int64
	}
	hashes := map[pos][]byte{}
	var p pos
	var h []byte
	_, err = pgx.ForEachRow(rows, []any{&p.id, &p.seq, &h}, func() error {
		hashes[p] = bytes.Clone(h)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("audit: reading taken positions: %w", err)
	}
	var foreign []*audit.Row
	for _, r := range taken {
		if !bytes.Equal(hashes[pos{r.WriterID, r.WriterSeq}], r.RowHash) {
			foreign = append(foreign, r)
		}
	}
	return foreign, nil
}

// insertEach inserts rows one statement each, in one batch, and returns
// those whose chain position was already stored.
func insertEach(ctx context.Context, tx pgx.Tx, rows []*audit.Row) ([]*audit.Row, error) {
	b := &pgx.Batch{}
	for _, r := range rows {
		b.Queue(insertOne, values(r)...)
	}
	res := tx.SendBatch(ctx, b)
	var taken []*audit.Row
	for _, r := range rows {
		var stored bool
		switch err := res.QueryRow().Scan(&stored); {
		case errors.Is(err, pgx.ErrNoRows):
			taken = append(taken, r)
		case err != nil:
			_ = res.Close()
			return nil, err
		}
	}
	return taken, res.Close()
}

// logDisplaced says, loudly, that rows were stored outside their chain.
func (w *Writer) logDisplaced(d displaced) {
	if d.Rows == 0 {
		return
	}
	metrics.displaced.Add(float64(d.Rows))
	w.log.Error("audit chain positions held by rows this writer did not write; its rows were stored as chains of their own, and verify reports each",
		zap.Int("rows", d.Rows), zap.String("first_writer_id", d.From), zap.Int64("first_writer_seq", d.FromSeq), zap.String("first_stored_in", d.To))
}
