-- 0037 chose the rows to delete in a subquery without a lock and locked
-- them by id alone: a row another transaction changed and committed in
-- between (a key GitHub reported, its revocation reason set to
-- github_secret_scanning, which 0036 keeps) was deleted all the same. The
-- locking query now checks the conditions again, on the row as locked.
CREATE OR REPLACE FUNCTION prune_ended_keys() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    IF NEW.kind = 'collector' THEN
        DELETE FROM public.api_keys WHERE id IN (
            SELECT id FROM public.api_keys
            WHERE id IN (
                SELECT id FROM public.api_keys
                WHERE server_id = NEW.server_id AND least(revoked_at, expires_at) <= now()
                  AND revoked_reason IS DISTINCT FROM 'github_secret_scanning'
                ORDER BY least(revoked_at, expires_at) DESC, id DESC
                OFFSET 10 LIMIT 500)
              AND least(revoked_at, expires_at) <= now()
              AND revoked_reason IS DISTINCT FROM 'github_secret_scanning'
            FOR UPDATE SKIP LOCKED);
    ELSE
        DELETE FROM public.api_keys WHERE id IN (
            SELECT id FROM public.api_keys
            WHERE id IN (
                SELECT id FROM public.api_keys
                WHERE customer_id = NEW.customer_id AND kind = 'account' AND least(revoked_at, expires_at) <= now()
                  AND revoked_reason IS DISTINCT FROM 'github_secret_scanning'
                ORDER BY least(revoked_at, expires_at) DESC, id DESC
                OFFSET 1000 LIMIT 500)
              AND least(revoked_at, expires_at) <= now()
              AND revoked_reason IS DISTINCT FROM 'github_secret_scanning'
            FOR UPDATE SKIP LOCKED);
    END IF;
    RETURN NULL;
END $$;
