package audit

import (
	"bytes"
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// Break is the first place a writer's chain does not hold.
type Break struct {
	WriterID  string
	WriterSeq int64
	RowID     int64
	// Reason: "content" (the row's hash does not match its fields), "link"
	// (its prev_hash is not the previous row's hash) or "gap" (rows before
	// it are missing).
	Reason string
}

func (b Break) String() string {
	return fmt.Sprintf("writer %s: row id %d (seq %d): %s", b.WriterID, b.RowID, b.WriterSeq, b.Reason)
}

// Report is the outcome of Verify.
type Report struct {
	Writers int
	Rows    int64
	Breaks  []Break // at most one per writer: its first
	// Unchained counts rows written before chaining existed.
	Unchained int64
}

// OK reports whether every chain held.
func (r Report) OK() bool { return len(r.Breaks) == 0 }

// Querier is what Verify needs from a connection or pool.
type Querier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

const verifyQuery = `SELECT id, coalesce(key_id::text, ''), coalesce(user_id::text, ''), occurred_at,
	coalesce(host(source_ip), ''), coalesce(user_agent, ''), request_id, method, path,
	coalesce(resource_type, ''), coalesce(resource_id, ''), action, result, status_code, metadata::text,
	writer_id, writer_seq, prev_hash, row_hash
FROM api_audit_log WHERE writer_id IS NOT NULL ORDER BY writer_id, writer_seq`

// Verify walks every writer's chain in one pass and reports the first
// break of each: a row whose content was edited, a row inserted or
// deleted, by anyone, superusers included.
func Verify(ctx context.Context, db Querier) (Report, error) {
	var rep Report
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
	for rows.Next() {
		if err := rows.Scan(&id, &r.KeyID, &r.UserID, &r.OccurredAt, &r.SourceIP, &r.UserAgent, &r.RequestID, &r.Method, &r.Path,
			&r.ResourceType, &r.ResourceID, &r.Action, &r.Result, &status, &meta, &r.WriterID, &r.WriterSeq, &r.PrevHash, &r.RowHash); err != nil {
			return rep, fmt.Errorf("audit verify: %w", err)
		}
		rep.Rows++
		if r.WriterID != writer {
			writer, prev, seq, broken = r.WriterID, nil, 0, false
			rep.Writers++
		}
		if broken {
			continue
		}
		r.StatusCode = int(status)
		fail := func(reason string) {
			rep.Breaks = append(rep.Breaks, Break{WriterID: writer, WriterSeq: r.WriterSeq, RowID: id, Reason: reason})
			broken = true
		}
		if r.WriterSeq != seq+1 {
			fail("gap")
			continue
		}
		if !bytes.Equal(r.PrevHash, prev) {
			fail("link")
			continue
		}
		if r.Metadata, err = CanonicalText(meta); err != nil {
			fail("content")
			continue
		}
		stored := r.RowHash
		if !bytes.Equal(Hash(&r), stored) {
			fail("content")
			continue
		}
		prev, seq = stored, r.WriterSeq
	}
	if err := rows.Err(); err != nil {
		return rep, fmt.Errorf("audit verify: %w", err)
	}
	rows.Close()
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
