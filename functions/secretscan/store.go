package main

import (
	"context"
	"net/netip"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/glassmkr/guardian/shared/audit"
)

// RevokedReason is api_keys.revoked_reason, and the audit rows' reason.
const RevokedReason = "github_secret_scanning"

// revokeQuery revokes the reported keys through revoke_reported_keys
// (migration 0020: the customer's audit salt comes back only for a key
// this call revoked) and gives each key it revoked the audit metadata of
// its hash, for the audit row the same transaction then writes. $1
// hashes, $2 the audit metadata of each hash (canonical JSON).
const revokeQuery = `SELECT r.key_hash, r.key_id::text, r.customer_id::text, r.kind, r.name, r.last4, r.revoked_at, r.audit_salt, m.m
FROM revoke_reported_keys($1::bytea[]) r
LEFT JOIN unnest($1::bytea[], $2::text[]) AS m(h, m) ON m.h = r.key_hash`

// insertRow writes one audit row, chain columns included.
const insertRow = `INSERT INTO api_audit_log (customer_id, user_agent, source_ip, request_id, method, path,
	resource_type, resource_id, action, result, status_code, metadata, occurred_at,
	writer_id, writer_seq, prev_hash, row_hash, customer_digest)
VALUES ($1, $2, $3, $4, 'POST', $5, 'api_key', $6, 'delete', 'success', 200, $7, $8, $9, $10, $11, $12, $13)`

// candidate is a well-formed reported key.
type candidate struct {
	hash [32]byte
	meta string // the audit row's metadata, should it be revoked
}

// match is a reported key that exists; Revoked is set when this request
// revoked it.
type match struct {
	Hash      [32]byte
	Revoked   bool
	KeyID     string
	Customer  string
	Kind      string
	Name      string
	Last4     string
	RevokedAt time.Time
}

// requestInfo is what the audit rows say about the request.
type requestInfo struct {
	ClientIP, UserAgent, RequestID, Path string
}

// revoke revokes the keys of cands and writes one audit row per key it
// revoked, in one transaction: a key is never revoked without its row.
// The rows join ch, this process's audit hash chain, so that verify holds
// them as it holds the edge's.
//
// then, when given, runs in the same transaction after the rows, with the
// keys revoked (it queues their notices).
//
// The chain is taken only once the keys are revoked (their rows locked in
// the transaction) and held to the commit: a report whose key's row is
// locked for long (an operator's open transaction) waits alone, and the
// reports behind it, of other keys, go on.
func revoke(ctx context.Context, db *pgxpool.Pool, ch *chain, cands []candidate, req requestInfo,
	then func(context.Context, pgx.Tx, []match) error) ([]match, error) {
	hashes := make([][]byte, len(cands))
	metas := make([]string, len(cands))
	for i := range cands {
		hashes[i], metas[i] = cands[i].hash[:], cands[i].meta
	}
	tx, err := db.Begin(ctx)
	if err != nil {
		return nil, err
	}
	// After a commit, Rollback does nothing.
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	matches, revoked, err := revokeKeys(ctx, tx, hashes, metas)
	if err != nil {
		return nil, err
	}
	if len(revoked) == 0 {
		return matches, tx.Commit(ctx)
	}
	// One revocation's rows at a time: they take consecutive places.
	if err := ch.lock(ctx); err != nil {
		return nil, err
	}
	defer ch.unlock()
	err = func() error {
		now := time.Now().UTC().Truncate(time.Microsecond)
		var ip any
		if a, err := netip.ParseAddr(req.ClientIP); err == nil {
			ip = a
		}
		seq, prev := ch.seq, ch.prev
		b := &pgx.Batch{}
		for _, rv := range revoked {
			r := &audit.Row{
				CustomerID: rv.m.Customer, OccurredAt: now, SourceIP: req.ClientIP, UserAgent: req.UserAgent,
				RequestID: req.RequestID + "." + rv.m.KeyID, Method: "POST", Path: req.Path,
				ResourceType: "api_key", ResourceID: rv.m.KeyID, Action: "delete", Result: audit.ResultSuccess,
				StatusCode: 200, Metadata: rv.meta, CustomerDigest: audit.SaltedCustomerDigest(rv.salt, rv.m.Customer),
			}
			seq++
			r.WriterID, r.WriterSeq, r.PrevHash = ch.id, seq, prev
			r.RowHash = audit.Hash(r)
			prev = r.RowHash
			b.Queue(insertRow, r.CustomerID, r.UserAgent, ip, r.RequestID, r.Path, r.ResourceID, r.Metadata, r.OccurredAt,
				r.WriterID, r.WriterSeq, r.PrevHash, r.RowHash, r.CustomerDigest)
		}
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return err
		}
		if then != nil {
			done := make([]match, len(revoked))
			for i, rv := range revoked {
				done[i] = rv.m
			}
			if err := then(ctx, tx, done); err != nil {
				return err
			}
		}
		if err := tx.Commit(ctx); err != nil {
			return err
		}
		ch.seq, ch.prev = seq, prev
		return nil
	}()
	if err != nil {
		// Whether the rows were stored is not known for certain (a commit
		// whose answer was lost): the chain ends here and a new one begins
		// (verify sees two whole chains), as the edge's writer does.
		ch.restart()
		return nil, err
	}
	return matches, nil
}

// revokedRow is a key this call revoked, with its customer's audit salt
// and its audit row's metadata.
type revokedRow struct {
	m    match
	salt []byte
	meta string
}

// revokeKeys revokes, in tx, the keys of hashes (metas: each one's audit
// metadata) and returns every key found, and those this call revoked.
func revokeKeys(ctx context.Context, tx pgx.Tx, hashes [][]byte, metas []string) ([]match, []revokedRow, error) {
	rows, err := tx.Query(ctx, revokeQuery, hashes, metas)
	if err != nil {
		return nil, nil, err
	}
	var matches []match
	var revoked []revokedRow
	_, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (struct{}, error) {
		var m match
		var hash, salt []byte
		var id, customer, kind, name, last4, meta *string
		var at *time.Time
		if err := row.Scan(&hash, &id, &customer, &kind, &name, &last4, &at, &salt, &meta); err != nil {
			return struct{}{}, err
		}
		copy(m.Hash[:], hash)
		if id != nil {
			m.Revoked, m.KeyID, m.Customer, m.Kind, m.Name, m.Last4, m.RevokedAt = true, *id, *customer, *kind, *name, *last4, *at
			revoked = append(revoked, revokedRow{m: m, salt: salt, meta: deref(meta)})
		}
		matches = append(matches, m)
		return struct{}{}, nil
	})
	if err != nil {
		return nil, nil, err
	}
	return matches, revoked, nil
}

// querier is a pool or a transaction.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// adminEmails returns the e-mail addresses of each customer's admins.
func adminEmails(ctx context.Context, db querier, customers []string) (map[string][]string, error) {
	rows, err := db.Query(ctx, `SELECT customer_id::text, email FROM users
		WHERE customer_id = ANY($1::uuid[]) AND role = 'admin' ORDER BY email`, customers)
	if err != nil {
		return nil, err
	}
	out := map[string][]string{}
	var customer, email string
	_, err = pgx.ForEachRow(rows, []any{&customer, &email}, func() error {
		out[customer] = append(out[customer], email)
		return nil
	})
	return out, err
}
