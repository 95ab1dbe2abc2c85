-- A key that a GitHub report revoked, reported again later (found at
-- another place: a fork, a scan of a whole history), was answered
-- true_positive but left no trace in its customer's audit log, although
-- 0036 keeps its row for that. revoke_reported_keys now also returns such
-- a key's details and its customer's audit salt, with newly false, for an
-- audit row that says where it was found again; newly is true for a key
-- this call revoked. Collecting salts still takes a key GitHub reported:
-- keys revoked for any other reason are left out as before. A key that
-- another report is revoking at the same moment comes back from neither
-- (its revocation's snapshot did not yet show it revoked), so the pair
-- writes one row, as before.
DROP FUNCTION revoke_reported_keys(bytea[]);

CREATE FUNCTION revoke_reported_keys(hashes bytea[])
RETURNS TABLE (key_hash bytea, key_id uuid, customer_id uuid, kind text, name text, last4 text,
               revoked_at timestamptz, audit_salt bytea, newly boolean)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
    WITH hit AS (
        SELECT k.id, k.key_hash, k.customer_id, k.kind, k.name, k.last4, k.revoked_at, k.revoked_reason
        FROM api_keys k WHERE k.key_hash = ANY(hashes)
    ), rev AS (
        UPDATE api_keys k SET revoked_at = now(), revoked_reason = 'github_secret_scanning'
        WHERE k.key_hash = ANY(hashes) AND (k.revoked_at IS NULL OR k.revoked_at > clock_timestamp())
        RETURNING k.id, k.customer_id, k.kind, k.name, k.last4, k.key_hash, k.revoked_at
    ), again AS (
        SELECT hit.* FROM hit
        WHERE hit.revoked_reason = 'github_secret_scanning' AND hit.revoked_at <= clock_timestamp()
    ), known AS (
        SELECT rev.id, rev.customer_id, rev.kind, rev.name, rev.last4, rev.revoked_at, true AS newly FROM rev
        UNION ALL
        SELECT again.id, again.customer_id, again.kind, again.name, again.last4, again.revoked_at, false FROM again
        WHERE NOT EXISTS (SELECT 1 FROM rev WHERE rev.id = again.id)
    )
    SELECT hit.key_hash, known.id, known.customer_id, known.kind, known.name, known.last4, known.revoked_at, c.audit_salt, known.newly
    FROM hit LEFT JOIN known ON known.id = hit.id LEFT JOIN customers c ON c.id = known.customer_id
$$;

REVOKE ALL ON FUNCTION revoke_reported_keys(bytea[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION revoke_reported_keys(bytea[]) TO {{fn_role:secretscan}};
