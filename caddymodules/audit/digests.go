package audit

import (
	"context"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/zap"

	"github.com/glassmkr/guardian/shared/audit"
	"github.com/glassmkr/guardian/shared/mono"
)

// digests gives rows their customer digest (audit.SaltedCustomerDigest).
// Each customer's digest is computed once from its salt, read from
// PostgreSQL the first time one of its rows comes, and kept: a salt never
// changes, and a batch waits for the read only on a customer's first row.
type digests struct {
	mu sync.RWMutex
	m  map[string][]byte // lower-case customer id: digest
	// absent holds ids PostgreSQL did not know (customers deleted), until
	// when they are not asked for again: a burst of rows for a deleted
	// customer costs one read, not one per batch.
	absent map[string]time.Time
	// failedUntil (mono.Nanos): a read failed, and until then batches do not
	// wait for another (PostgreSQL away, or the table locked by a
	// migration): one slow read per saltRetry, not one per batch.
	failedUntil atomic.Int64
	reads       atomic.Int64 // salt reads tried, for tests
}

// saltRetry is how long after a failed read the next is tried.
const saltRetry = 10 * time.Second

// maxDigests bounds the cache; past it the cache starts again empty.
const maxDigests = 100_000

// saltTimeout bounds a batch's wait for salts it does not know yet.
const saltTimeout = time.Second

// absentFor is how long an unknown customer id is not asked for again.
const absentFor = time.Minute

func newDigests() *digests { return &digests{m: map[string][]byte{}, absent: map[string]time.Time{}} }

// get returns id's digest, or UnknownCustomer for an id PostgreSQL did
// not know a moment ago; ok is false when it must be read.
func (d *digests) get(id string, now time.Time) (v []byte, ok bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	if v, ok := d.m[id]; ok {
		return v, true
	}
	if until, ok := d.absent[id]; ok && now.Before(until) {
		return audit.UnknownCustomer, true
	}
	return nil, false
}

// load reads the salts of ids (lower case, valid UUIDs) and caches their
// digests; ids of customers that do not exist are remembered as absent
// for absentFor.
func (d *digests) load(ctx context.Context, db *pgxpool.Pool, ids []string, now time.Time) error {
	d.reads.Add(1)
	rows, err := db.Query(ctx, "SELECT id::text, audit_salt FROM customers WHERE id = ANY($1::uuid[])", ids)
	if err != nil {
		return err
	}
	var id string
	var salt []byte
	found := map[string][]byte{}
	if _, err := pgx.ForEachRow(rows, []any{&id, &salt}, func() error {
		found[id] = audit.SaltedCustomerDigest(salt, id)
		return nil
	}); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.m)+len(found) > maxDigests {
		clear(d.m)
	}
	if len(d.absent)+len(ids) > maxDigests {
		clear(d.absent)
	}
	for _, id := range ids {
		if v, ok := found[id]; ok {
			d.m[id] = v
			delete(d.absent, id)
		} else {
			d.absent[id] = now.Add(absentFor)
		}
	}
	return nil
}

// setDigests gives every row its customer digest, reading the salts of
// customers not seen before, unless a read failed within saltRetry. It
// reads them while rows are spooled too: a spool left from before a
// restart is replayed with PostgreSQL up. A row whose salt cannot be read
// gets audit.UnknownCustomer: the row is kept, and verify cannot check
// its customer.
func (w *Writer) setDigests(rows []*audit.Row) {
	now := time.Now()
	var missing []string
	for _, r := range rows {
		if r.CustomerID == "" {
			r.CustomerDigest = noCustomer
			continue
		}
		id := strings.ToLower(r.CustomerID)
		v, ok := w.digests.get(id, now)
		r.CustomerDigest = v
		if !ok && !slices.Contains(missing, id) {
			missing = append(missing, id)
		}
	}
	if len(missing) == 0 {
		return
	}
	if mono.Nanos(now) >= w.digests.failedUntil.Load() {
		ctx, cancel := context.WithTimeout(context.Background(), saltTimeout)
		if err := w.digests.load(ctx, w.db, missing, now); err != nil {
			w.digests.failedUntil.Store(mono.Nanos(time.Now().Add(saltRetry)))
			if now := mono.Nanos(time.Now()); now-w.lastSaltWarn.Load() >= int64(time.Minute) {
				w.lastSaltWarn.Store(now)
				w.log.Warn("audit: customers' salts cannot be read; their rows are written without a customer verify can check",
					zap.Int("customers", len(missing)), zap.Error(err))
			}
		}
		cancel()
	}
	for _, r := range rows {
		if r.CustomerDigest != nil {
			continue
		}
		if v, ok := w.digests.get(strings.ToLower(r.CustomerID), now); ok {
			r.CustomerDigest = v
		} else {
			r.CustomerDigest = audit.UnknownCustomer
		}
	}
}

// noCustomer is the digest of rows without a customer (failed
// authentications), computed once.
var noCustomer = audit.CustomerDigest("")
