-- Tamper evidence for the audit log: every row names the edge process that
-- wrote it (writer_id) and its place in that writer's sequence
-- (writer_seq), and carries a SHA-256 over its own content and the
-- previous row's hash (see shared/audit). `guardian-audit-verify` walks
-- each chain and reports the first row whose content, link or sequence
-- does not hold: an edit, a deletion or an insertion, by anyone.
ALTER TABLE api_audit_log
    ADD COLUMN writer_id  text,
    ADD COLUMN writer_seq bigint,
    ADD COLUMN prev_hash  bytea,
    ADD COLUMN row_hash   bytea;

CREATE UNIQUE INDEX api_audit_log_chain_idx ON api_audit_log (writer_id, writer_seq);
