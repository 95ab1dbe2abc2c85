package main

import (
	"context"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// RevokedReason is api_keys.revoked_reason, and the audit rows' reason.
const RevokedReason = "github_secret_scanning"

// revokeQuery finds every reported key by its HMAC, revokes those still
// valid (a rotation's grace window included), and writes one audit row
// per key it revoked, all in one statement and so in one transaction: a
// key is never revoked without its audit row. Keys revoked before are
// found but left as they are. $1 hashes, $2 the audit metadata of each
// hash (canonical JSON), $3 client address, $4 user agent, $5 request id,
// $6 path. The grace check reads the clock, not the transaction's start,
// so a report racing another for the same key does not revoke it twice.
const revokeQuery = `WITH reported AS (
	SELECT h, m FROM unnest($1::bytea[], $2::text[]) AS r(h, m)
), hit AS (
	SELECT id, key_hash FROM api_keys WHERE key_hash = ANY($1::bytea[])
), rev AS (
	UPDATE api_keys SET revoked_at = now(), revoked_reason = '` + RevokedReason + `'
	WHERE key_hash = ANY($1::bytea[]) AND (revoked_at IS NULL OR revoked_at > clock_timestamp())
	RETURNING id, customer_id, kind, name, last4, key_hash, revoked_at
), logged AS (
	INSERT INTO api_audit_log (customer_id, source_ip, user_agent, request_id, method, path,
		resource_type, resource_id, action, result, status_code, metadata)
	SELECT rev.customer_id, NULLIF($3, '')::inet, NULLIF($4, ''), $5 || '.' || rev.id::text, 'POST', $6,
		'api_key', rev.id::text, 'delete', 'success', 200, reported.m::jsonb
	FROM rev JOIN reported ON reported.h = rev.key_hash
)
SELECT hit.key_hash, rev.id::text, rev.customer_id::text, rev.kind, rev.name, rev.last4, rev.revoked_at
FROM hit LEFT JOIN rev ON rev.id = hit.id`

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

// revoke runs revokeQuery for cands.
func revoke(ctx context.Context, db *pgxpool.Pool, cands []candidate, req requestInfo) ([]match, error) {
	hashes := make([][]byte, len(cands))
	metas := make([]string, len(cands))
	for i := range cands {
		hashes[i], metas[i] = cands[i].hash[:], cands[i].meta
	}
	rows, err := db.Query(ctx, revokeQuery, hashes, metas, req.ClientIP, req.UserAgent, req.RequestID, req.Path)
	if err != nil {
		return nil, err
	}
	return pgx.CollectRows(rows, func(row pgx.CollectableRow) (match, error) {
		var m match
		var hash []byte
		var id, customer, kind, name, last4 *string
		var at *time.Time
		if err := row.Scan(&hash, &id, &customer, &kind, &name, &last4, &at); err != nil {
			return m, err
		}
		copy(m.Hash[:], hash)
		if id != nil {
			m.Revoked, m.KeyID, m.Customer, m.Kind, m.Name, m.Last4, m.RevokedAt = true, *id, *customer, *kind, *name, *last4, *at
		}
		return m, nil
	})
}

// adminEmails returns the e-mail addresses of each customer's admins.
func adminEmails(ctx context.Context, db *pgxpool.Pool, customers []string) (map[string][]string, error) {
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
