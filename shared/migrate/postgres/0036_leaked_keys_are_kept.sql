-- A key revoked because GitHub reported it leaked is kept whatever 0035's
-- bounds: the same token found again later (a fork, a scan of a whole
-- history) must still be answered true_positive and told to its customer's
-- audit log, which needs its row. These rows stay bounded: each needs a
-- report signed by GitHub.
CREATE OR REPLACE FUNCTION prune_ended_keys() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    IF NEW.kind = 'collector' THEN
        DELETE FROM api_keys WHERE id IN (
            SELECT id FROM api_keys
            WHERE server_id = NEW.server_id AND least(revoked_at, expires_at) <= now()
              AND revoked_reason IS DISTINCT FROM 'github_secret_scanning'
            ORDER BY least(revoked_at, expires_at) DESC, id DESC
            OFFSET 10 FOR UPDATE SKIP LOCKED);
    ELSE
        DELETE FROM api_keys WHERE id IN (
            SELECT id FROM api_keys
            WHERE customer_id = NEW.customer_id AND kind = 'account' AND least(revoked_at, expires_at) <= now()
              AND revoked_reason IS DISTINCT FROM 'github_secret_scanning'
            ORDER BY least(revoked_at, expires_at) DESC, id DESC
            OFFSET 1000 FOR UPDATE SKIP LOCKED);
    END IF;
    RETURN NULL;
END $$;
