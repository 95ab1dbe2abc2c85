-- 0045 writes an audit row each time GitHub reports a key that an earlier
-- report revoked, so that the customer's log says where it was found
-- again. GitHub sends the same report again when it got no answer in time,
-- and its scans can find the same file again: every such report added
-- another row naming places the log already held. The places a key was
-- reported at (a SHA-256 of each location's source and URL, computed by
-- the caller) are now kept, and a key found again is returned only when
-- the report names a place not kept before; the caller is told which
-- places are new. A key revoked before this migration has no places kept:
-- its next report writes one row, as before, and is the last for those
-- places.
CREATE TABLE leak_places (
    key_id     uuid NOT NULL REFERENCES api_keys (id) ON DELETE CASCADE,
    place      bytea NOT NULL CHECK (length(place) = 32),
    first_seen timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (key_id, place)
);
REVOKE ALL ON leak_places FROM PUBLIC;

DROP FUNCTION revoke_reported_keys(bytea[]);

-- place_keys and places are pairs: places[i] is a place of the report of
-- the key whose hash is place_keys[i].
CREATE FUNCTION revoke_reported_keys(hashes bytea[], place_keys bytea[], places bytea[])
RETURNS TABLE (key_hash bytea, key_id uuid, customer_id uuid, kind text, name text, last4 text,
               revoked_at timestamptz, audit_salt bytea, newly boolean, new_places bytea[])
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
    -- First lock the keys' rows as the revocation would (FOR NO KEY
    -- UPDATE), in id order, in a statement of its own: a report then
    -- waits for another one revoking the same key, and the next
    -- statement, on a snapshot taken after the wait, reads it revoked
    -- (found again, its places kept; read unrevoked, it was neither), and
    -- a key deleted meanwhile (an account purged) is not read at all
    -- rather than failing the places' foreign key, and with it every
    -- revocation of the report. (Locked in the statement that updates
    -- them, a row the UPDATE reached first would drop out of the read;
    -- FOR KEY SHARE would not wait for an update, and FOR SHARE would
    -- deadlock two reports upgrading it to revoke.)
    SELECT 1 FROM api_keys WHERE key_hash = ANY(hashes) ORDER BY id FOR NO KEY UPDATE;
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
          AND NOT EXISTS (SELECT 1 FROM rev WHERE rev.id = hit.id)
    ), placed AS (
        INSERT INTO leak_places (key_id, place)
        SELECT DISTINCT hit.id, p.place
        FROM unnest(place_keys, places) AS p(key_hash, place) JOIN hit ON hit.key_hash = p.key_hash
        WHERE length(p.place) = 32
          AND (hit.id IN (SELECT id FROM rev) OR hit.id IN (SELECT id FROM again))
        ON CONFLICT DO NOTHING
        RETURNING leak_places.key_id, leak_places.place
    ), known AS (
        SELECT rev.id, rev.customer_id, rev.kind, rev.name, rev.last4, rev.revoked_at, true AS newly FROM rev
        UNION ALL
        SELECT again.id, again.customer_id, again.kind, again.name, again.last4, again.revoked_at, false FROM again
        WHERE EXISTS (SELECT 1 FROM placed WHERE placed.key_id = again.id)
    )
    SELECT hit.key_hash, known.id, known.customer_id, known.kind, known.name, known.last4, known.revoked_at, c.audit_salt, known.newly,
           (SELECT array_agg(placed.place) FROM placed WHERE placed.key_id = known.id)
    FROM hit LEFT JOIN known ON known.id = hit.id LEFT JOIN customers c ON c.id = known.customer_id
$$;

REVOKE ALL ON FUNCTION revoke_reported_keys(bytea[], bytea[], bytea[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION revoke_reported_keys(bytea[], bytea[], bytea[]) TO {{fn_role:secretscan}};
