-- secretscan needs a customer's audit salt only for the audit row of a key
-- it has just revoked. Reading customers.audit_salt directly (0019), a
-- compromised webhook function could quietly collect every customer's
-- salt, and later tie a deleted customer's rows to it. It now revokes
-- through this function, which returns the salt of a key's customer only
-- when this call revoked the key: collecting salts would mean revoking
-- keys, which their owners are told of.
--
-- For each key whose hash is in hashes: its hash, and, when this call
-- revoked it, its id, customer, kind, name, last4, revocation time and
-- the customer's salt. Keys revoked before (a rotation's grace window
-- aside) are left as they are. The grace check reads the clock, not the
-- transaction's start, so a report racing another for the same key does
-- not revoke it twice.
CREATE FUNCTION revoke_reported_keys(hashes bytea[])
RETURNS TABLE (key_hash bytea, key_id uuid, customer_id uuid, kind text, name text, last4 text,
               revoked_at timestamptz, audit_salt bytea)
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    WITH hit AS (
        SELECT k.id, k.key_hash FROM api_keys k WHERE k.key_hash = ANY(hashes)
    ), rev AS (
        UPDATE api_keys k SET revoked_at = now(), revoked_reason = 'github_secret_scanning'
        WHERE k.key_hash = ANY(hashes) AND (k.revoked_at IS NULL OR k.revoked_at > clock_timestamp())
        RETURNING k.id, k.customer_id, k.kind, k.name, k.last4, k.key_hash, k.revoked_at
    )
    SELECT hit.key_hash, rev.id, rev.customer_id, rev.kind, rev.name, rev.last4, rev.revoked_at, c.audit_salt
    FROM hit LEFT JOIN rev ON rev.id = hit.id LEFT JOIN customers c ON c.id = rev.customer_id
$$;

REVOKE ALL ON FUNCTION revoke_reported_keys(bytea[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION revoke_reported_keys(bytea[]) TO {{fn_role:secretscan}};
REVOKE SELECT (id, audit_salt) ON customers FROM {{fn_role:secretscan}};
