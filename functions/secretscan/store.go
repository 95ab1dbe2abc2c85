package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"net/netip"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/glassmkr/guardian/shared/audit"
)

// RevokedReason is api_keys.revoked_reason, and the audit rows' reason.
const RevokedReason = "github_secret_scanning"

// revokeQuery revokes the reported keys ($1, their hashes) through
// revoke_reported_keys (migrations 0020, 0045, 0046: a key's details and
// its customer's audit salt come back only for a key this call revoked,
// newly, or one an earlier report revoked, found again at a place not
// reported before), for the audit rows the same transaction then writes.
// $2 and $3 pair each place's digest with its key's hash.
const revokeQuery = `SELECT key_hash, key_id::text, customer_id::text, kind, name, last4, revoked_at, audit_salt, newly, new_places
FROM revoke_reported_keys($1::bytea[], $2::bytea[], $3::bytea[])`

// insertRow writes one audit row, chain columns included.
const insertRow = `INSERT INTO api_audit_log (customer_id, user_agent, source_ip, request_id, method, path,
	resource_type, resource_id, action, result, status_code, metadata, occurred_at,
	writer_id, writer_seq, prev_hash, row_hash, customer_digest)
VALUES ($1, $2, $3, $4, 'POST', $5, 'api_key', $6, 'delete', 'success', 200, $7, $8, $9, $10, $11, $12, $13)`

// candidate is a well-formed reported key.
type candidate struct {
	hash [32]byte
	meta string // the audit row's metadata, should it be revoked
	// againBase is the audit row's metadata should an earlier report have
	// revoked it (meta's, saying so), before foundAgain names the place.
	againBase map[string]any
	locations []location // where the report found it
}

// placeDigest identifies a place a key was reported at, for the places
// revoke_reported_keys keeps (migration 0046).
func placeDigest(at location) [32]byte {
	return sha256.Sum256([]byte(at.Source + "\x00" + at.URL))
}

// foundAgain is the audit row's metadata of c's key found again at the
// places fresh (digests the database had not kept): it names the first of
// them in the report's order.
func (c candidate) foundAgain(fresh [][]byte) (string, error) {
	m := make(map[string]any, len(c.againBase))
	for k, v := range c.againBase {
		m[k] = v
	}
	for _, at := range c.locations {
		d := placeDigest(at)
		if slices.ContainsFunc(fresh, func(f []byte) bool { return bytes.Equal(f, d[:]) }) {
			m["url"], m["source"] = at.URL, at.Source
			break
		}
	}
	return audit.Canonical(m)
}

// match is a reported key that exists; Revoked is set when this request
// revoked it, Again when an earlier report did (it was found again).
type match struct {
	Hash      [32]byte
	Revoked   bool
	Again     bool
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
	byHash := make(map[[32]byte]candidate, len(cands))
	var placeKeys, places [][]byte
	for i, c := range cands {
		hashes[i], byHash[c.hash] = c.hash[:], c
		for _, at := range c.locations {
			d := placeDigest(at)
			placeKeys, places = append(placeKeys, hashes[i]), append(places, d[:])
		}
	}
	tx, err := db.Begin(ctx)
	if err != nil {
		return nil, err
	}
	// After a commit, Rollback does nothing.
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	matches, audited, err := revokeKeys(ctx, tx, hashes, placeKeys, places, byHash)
	if err != nil {
		return nil, err
	}
	if len(audited) == 0 {
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
		var done []match
		for _, rv := range audited {
			if rv.m.Revoked {
				done = append(done, rv.m)
			}
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
		if then != nil && len(done) > 0 {
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

// revokedRow is a key to audit (this call revoked it, or an earlier
// report did and it was found again), with its customer's audit salt and
// its audit row's metadata.
type revokedRow struct {
	m    match
	salt []byte
	meta string
}

// revokeKeys revokes, in tx, the keys of hashes (byHash: each one's
// candidate) and returns every key found, and those to audit.
func revokeKeys(ctx context.Context, tx pgx.Tx, hashes, placeKeys, places [][]byte, byHash map[[32]byte]candidate) ([]match, []revokedRow, error) {
	rows, err := tx.Query(ctx, revokeQuery, hashes, placeKeys, places)
	if err != nil {
		return nil, nil, err
	}
	var matches []match
	var audited []revokedRow
	_, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (struct{}, error) {
		var m match
		var hash, salt []byte
		var id, customer, kind, name, last4 *string
		var at *time.Time
		var newly *bool
		var fresh [][]byte
		if err := row.Scan(&hash, &id, &customer, &kind, &name, &last4, &at, &salt, &newly, &fresh); err != nil {
			return struct{}{}, err
		}
		copy(m.Hash[:], hash)
		if id != nil && newly != nil {
			m.KeyID, m.Customer, m.Kind, m.Name, m.Last4, m.RevokedAt = *id, *customer, *kind, *name, *last4, *at
			c := byHash[m.Hash]
			meta := c.meta
			if *newly {
				m.Revoked = true
			} else {
				var err error
				if meta, err = c.foundAgain(fresh); err != nil {
					return struct{}{}, err
				}
				m.Again = true
			}
			audited = append(audited, revokedRow{m: m, salt: salt, meta: meta})
		}
		matches = append(matches, m)
		return struct{}{}, nil
	})
	if err != nil {
		return nil, nil, err
	}
	return matches, audited, nil
}

// querier is a pool or a transaction.
type querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
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
