package audit

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5"
)

// Break is the first place a writer's chain does not hold.
type Break struct {
	WriterID  string
	WriterSeq int64
	RowID     int64
	// Reason: "content" (the row's hash does not match its fields), "link"
	// (its prev_hash is not the previous row's hash), "gap" (rows before
	// it are missing), or, against heads kept by an earlier run:
	// "rewritten" (the row at a kept head has another hash: the chain was
	// recomputed from an earlier row on) or "truncated" (the chain ends
	// before a kept head; RowID is then 0 and WriterSeq the first missing),
	// or "displaced" (the writer found WriterSeq held by a row it did not
	// write, and stored its own as the chain DisplacedID; RowID is 0).
	Reason string
	// Prev is the hash of the last row the walk took before the break (nil
	// at the chain's start), and Hash the row hash found at it (for
	// "content", the hash its fields give now; for "customer", one over
	// the row hash and the customer_id it names now; nil for "truncated"
	// and "displaced"). An accepted break is pinned to both: rewriting,
	// removing or inserting rows before it changes Prev, and editing its
	// row again changes Hash, so either turns the run red again.
	Prev, Hash []byte
}

func (b Break) String() string {
	if b.Reason == "displaced" {
		return fmt.Sprintf("writer %s: seq %d is held by a row it did not write (its own is stored apart): displaced", b.WriterID, b.WriterSeq)
	}
	if b.RowID == 0 {
		return fmt.Sprintf("writer %s: rows from seq %d on are missing: %s", b.WriterID, b.WriterSeq, b.Reason)
	}
	if b.Reason == "rewritten" {
		return fmt.Sprintf("writer %s: row id %d (seq %d): rewritten (row hash now %x)", b.WriterID, b.RowID, b.WriterSeq, b.Hash)
	}
	return fmt.Sprintf("writer %s: row id %d (seq %d): %s", b.WriterID, b.RowID, b.WriterSeq, b.Reason)
}

// Head is the newest row of a chain that held when it was verified. Kept
// outside the database between runs, heads catch what the chain alone
// cannot: rows removed from a chain's end, and a chain recomputed (edited
// and re-hashed from some row on, which needs no secret) below the head.
type Head struct {
	Seq  int64  `json:"seq"`
	Hash []byte `json:"hash"`
}

// Heads maps writer ids to their chain's head.
type Heads map[string]Head

// Report is the outcome of Verify.
type Report struct {
	Writers int
	Rows    int64
	Breaks  []Break // at most one per writer: its first not accepted
	// Accepted are the breaks found that an operator accepted (Accepted);
	// the walk went on past each.
	Accepted []Break
	// Unchained counts rows written before chaining existed.
	Unchained int64
	// Heads are, per chain, the newest row the walk reached while the
	// chain held; NextHeads makes of them what the next run is held to.
	Heads Heads
}

// OK reports whether every chain held, but for accepted breaks.
func (r Report) OK() bool { return len(r.Breaks) == 0 }

// NextHeads is what the next run should hold the chains to, given the
// heads kept that this run was held to. A chain that held gets its head.
// A broken chain's head never moves past its break, or the break would be
// forgotten (a rewritten or truncated chain would match its new head next
// time): it keeps its kept head, or moves up to its last row before the
// break if that lies beyond the kept one (the walk checked those rows
// against it). So one break does not leave every other chain, and every
// chain written after it, without a head.
func (r Report) NextHeads(kept Heads) Heads {
	next := make(Heads, len(r.Heads))
	for w, h := range r.Heads {
		next[w] = h
	}
	for _, b := range r.Breaks {
		w := b.WriterID
		delete(next, w)
		k, hasKept := kept[w]
		if h, ok := r.Heads[w]; ok && h.Seq < b.WriterSeq && (!hasKept || k.Seq <= h.Seq) {
			next[w] = h
		} else if hasKept {
			next[w] = k
		}
	}
	return next
}

// add reports b, or lists it as accepted; it reports whether it was.
func (r *Report) add(b Break, accepted Accepted) bool {
	if accepted.Has(b) {
		r.Accepted = append(r.Accepted, b)
		return true
	}
	r.Breaks = append(r.Breaks, b)
	return false
}

// Querier is what Verify needs from a connection or pool.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

const verifyQuery = `SELECT id, coalesce(key_id::text, ''), coalesce(user_id::text, ''), occurred_at,
	coalesce(host(source_ip), ''), coalesce(user_agent, ''), request_id, method, path,
	coalesce(resource_type, ''), coalesce(resource_id, ''), action, result, status_code, metadata::text,
	writer_id, writer_seq, prev_hash, row_hash, coalesce(customer_id::text, ''), customer_digest
FROM api_audit_log WHERE writer_id IS NOT NULL ORDER BY writer_id, writer_seq`

// Snapshot begins the transaction Verify should run in: read-only and
// repeatable-read, so that customers and rows are read as of one moment.
// Read in two statements without it, a customer deleted between them
// would have its freshly nulled rows reported as moved. CustomersAsOf
// reads the customers of the same moment without it holding their lock.
func Snapshot(ctx context.Context, db interface {
	BeginTx(context.Context, pgx.TxOptions) (pgx.Tx, error)
}) (pgx.Tx, error) {
	tx, err := db.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return nil, fmt.Errorf("audit verify: %w", err)
	}
	return tx, nil
}

// CustomersAsOf reads the customers as tx (from Snapshot) sees them, in a
// transaction of side's (another connection) that imports tx's snapshot
// and ends at once. tx then reads nothing but the audit log, so it holds
// no lock on customers for the walk, which may take minutes: a migration
// that rewrites customers, and every sign-in queued behind its lock, need
// not wait for verify.
func CustomersAsOf(ctx context.Context, tx pgx.Tx, side interface {
	BeginTx(context.Context, pgx.TxOptions) (pgx.Tx, error)
}) (Customers, error) {
	var id string
	if err := tx.QueryRow(ctx, "SELECT pg_export_snapshot()").Scan(&id); err != nil {
		return Customers{}, fmt.Errorf("audit verify: export snapshot: %w", err)
	}
	if id == "" || strings.Trim(id, "0123456789ABCDEFabcdef-") != "" {
		return Customers{}, fmt.Errorf("audit verify: unexpected snapshot id %q", id)
	}
	stx, err := side.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		return Customers{}, fmt.Errorf("audit verify: %w", err)
	}
	defer func() { _ = stx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := stx.Exec(ctx, "SET TRANSACTION SNAPSHOT '"+id+"'"); err != nil {
		return Customers{}, fmt.Errorf("audit verify: import snapshot: %w", err)
	}
	return ReadCustomers(ctx, stx)
}

// Verify walks every writer's chain in one pass and reports the first
// break of each: a row whose content was edited, a row inserted or
// deleted, by anyone, superusers included.
func Verify(ctx context.Context, db Querier) (Report, error) { return VerifyAgainst(ctx, db, nil) }

// VerifyAgainst is Verify that also holds every chain to the heads an
// earlier run reported (nil: none): each chain must still reach its kept
// head, with the same hash there.
func VerifyAgainst(ctx context.Context, db Querier, kept Heads) (Report, error) {
	// Read before the walk: db may be one connection, busy meanwhile.
	customers, err := ReadCustomers(ctx, db)
	if err != nil {
		return Report{Heads: Heads{}}, err
	}
	return VerifyWith(ctx, db, customers, kept)
}

// VerifyWith is VerifyAgainst with the customers read already, as of the
// moment db sees (CustomersAsOf).
func VerifyWith(ctx context.Context, db Querier, customers Customers, kept Heads) (Report, error) {
	return VerifyAccepting(ctx, db, customers, kept, nil)
}

// VerifyAccepting is VerifyWith that passes over the breaks an operator
// accepted (nil: none). An accepted break is listed in Report.Accepted,
// and the walk goes on past it, taking the row as stored, so a later
// break of the same chain is still reported. An acceptance holds only
// while the break's Prev and Hash are what they were (Accepted).
func VerifyAccepting(ctx context.Context, db Querier, customers Customers, kept Heads, accepted Accepted) (Report, error) {
	rep := Report{Heads: Heads{}}
	rows, err := db.Query(ctx, verifyQuery)
	if err != nil {
		return rep, fmt.Errorf("audit verify: %w", err)
	}
	defer rows.Close()
	var (
		writer string
		prev   []byte
		seq    int64
		broken bool
		r      Row
		id     int64
		status int16
		meta   string
	)
	// displacedAt is, per writer, the positions rows of its own were
	// displaced from (DisplacedID).
	displacedAt := map[string][]int64{}
	// finish closes a writer's walk: its head, and whether it still
	// reaches the head kept for it.
	finish := func() {
		if writer == "" {
			return
		}
		if seq > 0 {
			rep.Heads[writer] = Head{Seq: seq, Hash: prev}
		}
		if k, ok := kept[writer]; ok && !broken && seq < k.Seq {
			rep.add(Break{WriterID: writer, WriterSeq: seq + 1, Reason: "truncated", Prev: bytes.Clone(prev)}, accepted)
		}
	}
	// pass reports a break of the current row for reason, found with hash
	// (see Break.Hash), unless it is accepted; it reports whether the walk
	// goes on with the row.
	pass := func(reason string, hash []byte) bool {
		b := Break{WriterID: writer, WriterSeq: r.WriterSeq, RowID: id, Reason: reason, Prev: bytes.Clone(prev), Hash: bytes.Clone(hash)}
		if rep.add(b, accepted) {
			return true
		}
		broken = true
		return false
	}
	for rows.Next() {
		if err := rows.Scan(&id, &r.KeyID, &r.UserID, &r.OccurredAt, &r.SourceIP, &r.UserAgent, &r.RequestID, &r.Method, &r.Path,
			&r.ResourceType, &r.ResourceID, &r.Action, &r.Result, &status, &meta, &r.WriterID, &r.WriterSeq, &r.PrevHash, &r.RowHash,
			&r.CustomerID, &r.CustomerDigest); err != nil {
			return rep, fmt.Errorf("audit verify: %w", err)
		}
		rep.Rows++
		if r.SourceIP != "" {
			r.SourceIP = NormalizeIP(r.SourceIP) // as the writer hashed it
		}
		if r.WriterID != writer {
			finish()
			writer, prev, seq, broken = r.WriterID, nil, 0, false
			rep.Writers++
			if from, at, ok := ParseDisplaced(writer); ok {
				displacedAt[from] = append(displacedAt[from], at)
			}
		}
		if broken {
			continue
		}
		r.StatusCode = int(status)
		// Past an accepted break, the row's remaining checks still apply
		// (but its link, after an accepted gap: rows before it are gone).
		stored := r.RowHash
		if r.WriterSeq != seq+1 {
			if !pass("gap", stored) {
				continue
			}
		} else if !bytes.Equal(r.PrevHash, prev) && !pass("link", stored) {
			continue
		}
		got := stored // a row whose metadata cannot be read is pinned as stored
		if r.Metadata, err = CanonicalText(meta); err == nil {
			got = Hash(&r)
		}
		if (err != nil || !bytes.Equal(got, stored)) && !pass("content", got) {
			continue
		}
		if k, ok := kept[writer]; ok && k.Seq == r.WriterSeq && !bytes.Equal(k.Hash, stored) && !pass("rewritten", stored) {
			continue
		}
		// The row hash covers the customer digest, not customer_id: a
		// "customer" break is pinned to the id too, so that an accepted
		// move to another log cannot later become a move to a third.
		if customers.moved(&r) && !pass("customer", customerPin(stored, r.CustomerID)) {
			continue
		}
		prev, seq = stored, r.WriterSeq
	}
	if err := rows.Err(); err != nil {
		return rep, fmt.Errorf("audit verify: %w", err)
	}
	rows.Close()
	finish()
	// Chains with a kept head and no row left at all.
	var gone []string
	for w := range kept {
		if _, seen := rep.Heads[w]; !seen && !brokenWriter(rep.Breaks, w) {
			gone = append(gone, w)
		}
	}
	sort.Strings(gone)
	for _, w := range gone {
		rep.add(Break{WriterID: w, WriterSeq: 1, Reason: "truncated"}, accepted)
	}
	rep.addDisplaced(displacedAt, accepted)
	rest, err := db.Query(ctx, "SELECT count(*) FROM api_audit_log WHERE writer_id IS NULL")
	if err != nil {
		return rep, fmt.Errorf("audit verify: %w", err)
	}
	defer rest.Close()
	for rest.Next() {
		if err := rest.Scan(&rep.Unchained); err != nil {
			return rep, fmt.Errorf("audit verify: %w", err)
		}
	}
	return rep, rest.Err()
}

// Customers tells whether a row's customer_id is the one it was written
// for (its hashed customer_digest), or was nulled while that customer
// still exists: either means the row was moved between customers' logs.
// Deleting a customer nulls its rows and removes it (and its salt), so a
// nulled row of a deleted customer is as it should be.
type Customers struct {
	salted map[string][]byte // customer id: SaltedCustomerDigest
	live   map[string]bool   // every digest form of each existing customer
	due    map[string]bool   // those of customers whose deletion is due
}

// ReadCustomers reads every customer's digests, and which customers'
// deletion is due: account-purge anonymises their rows (customer_id set to
// NULL) before it deletes them, and such a row has not left a live log.
func ReadCustomers(ctx context.Context, db Querier) (Customers, error) {
	rows, err := db.Query(ctx, "SELECT id::text, audit_salt, coalesce(delete_after <= now(), false) FROM customers")
	if err != nil {
		return Customers{}, fmt.Errorf("audit verify: customers: %w", err)
	}
	c := Customers{salted: map[string][]byte{}, live: map[string]bool{}, due: map[string]bool{}}
	var id string
	var salt []byte
	var due bool
	_, err = pgx.ForEachRow(rows, []any{&id, &salt, &due}, func() error {
		d := SaltedCustomerDigest(salt, id)
		c.salted[id] = d
		c.live[string(d)] = true
		c.live[string(CustomerDigest(id))] = true
		if due {
			c.due[string(d)] = true
			c.due[string(CustomerDigest(id))] = true
		}
		return nil
	})
	if err != nil {
		return Customers{}, fmt.Errorf("audit verify: customers: %w", err)
	}
	return c, nil
}

func (c Customers) moved(r *Row) bool {
	switch {
	case r.CustomerDigest == nil: // written before customer_digest
		return false
	case bytes.Equal(r.CustomerDigest, UnknownCustomer):
		return false
	case r.CustomerID == "":
		// Anonymised: moved out of a live customer's log, unless that
		// customer's deletion is due (account-purge anonymises its rows
		// in batches before it deletes it).
		return c.live[string(r.CustomerDigest)] && !c.due[string(r.CustomerDigest)]
	case len(r.CustomerDigest) == sha256.Size: // unsalted
		return !bytes.Equal(r.CustomerDigest, CustomerDigest(r.CustomerID))
	}
	d, ok := c.salted[r.CustomerID]
	if !ok {
		// A row of a customer deleted after it was written keeps its id
		// until account-purge nulls it; with the salt gone it cannot be
		// checked. But a row of an existing customer given an id that is
		// no customer's has left that customer's log.
		return c.live[string(r.CustomerDigest)]
	}
	return !bytes.Equal(r.CustomerDigest, d)
}

// addDisplaced reports rows stored apart because their place was taken:
// a break of the chain they were meant for, however well the foreign row
// links. A chain's first such position that is not accepted is reported,
// unless its chain already broke before it.
func (r *Report) addDisplaced(at map[string][]int64, accepted Accepted) {
	writers := make([]string, 0, len(at))
	for w := range at {
		writers = append(writers, w)
	}
	sort.Strings(writers)
	for _, w := range writers {
		seqs := at[w]
		slices.Sort(seqs)
		for _, seq := range slices.Compact(seqs) {
			b := Break{WriterID: w, WriterSeq: seq, Reason: "displaced"}
			if accepted.Has(b) {
				r.Accepted = append(r.Accepted, b)
				continue
			}
			i := slices.IndexFunc(r.Breaks, func(x Break) bool { return x.WriterID == w })
			switch {
			case i < 0:
				r.Breaks = append(r.Breaks, b)
			case r.Breaks[i].WriterSeq > b.WriterSeq: // the first break is the one reported
				r.Breaks[i] = b
			}
			break
		}
	}
}

// customerPin is what a "customer" break is pinned to: its row hash and
// the customer_id the row now names.
func customerPin(rowHash []byte, customerID string) []byte {
	h := sha256.New()
	h.Write(rowHash)
	h.Write([]byte{0})
	h.Write([]byte(customerID))
	return h.Sum(nil)
}

func brokenWriter(breaks []Break, writer string) bool {
	for _, b := range breaks {
		if b.WriterID == writer {
			return true
		}
	}
	return false
}
