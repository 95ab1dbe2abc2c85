-- secretscan's revocation rows join an audit hash chain of their own
-- (functions/secretscan chain.go), so verify holds them as it holds the
-- edge's: it writes their chain columns again (0018 had narrowed it to
-- an unchained row's), and reads the revoked keys' customers' salts for
-- their customer digests. Its chain positions cannot meet the edge's: it
-- cannot read the audit log, so it cannot learn the edge's writer ids,
-- each 48 random bits.
GRANT INSERT (occurred_at, writer_id, writer_seq, prev_hash, row_hash, customer_digest)
    ON api_audit_log TO {{fn_role:secretscan}};
GRANT SELECT (id, audit_salt) ON customers TO {{fn_role:secretscan}};
