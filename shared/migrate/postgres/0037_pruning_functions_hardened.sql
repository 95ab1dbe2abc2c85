-- 0035's pruning functions again (0036's exception for leaked keys kept):
--   * pg_temp searched last (0031's rule): otherwise a caller's temporary
--     table named api_keys or sessions would be read, and written, by the
--     tables' owner, which the definer runs as;
--   * tables named with their schema;
--   * only the rows to delete are locked: OFFSET locked the ones it kept
--     as well, which other writers may be waiting for;
--   * at most 500 removed per insert, so a backlog found at the upgrade is
--     worked off over the next inserts, not in one request.
CREATE OR REPLACE FUNCTION prune_ended_keys() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    IF NEW.kind = 'collector' THEN
        DELETE FROM public.api_keys WHERE id IN (
            SELECT id FROM public.api_keys WHERE id IN (
                SELECT id FROM public.api_keys
                WHERE server_id = NEW.server_id AND least(revoked_at, expires_at) <= now()
                  AND revoked_reason IS DISTINCT FROM 'github_secret_scanning'
                ORDER BY least(revoked_at, expires_at) DESC, id DESC
                OFFSET 10 LIMIT 500)
            FOR UPDATE SKIP LOCKED);
    ELSE
        DELETE FROM public.api_keys WHERE id IN (
            SELECT id FROM public.api_keys WHERE id IN (
                SELECT id FROM public.api_keys
                WHERE customer_id = NEW.customer_id AND kind = 'account' AND least(revoked_at, expires_at) <= now()
                  AND revoked_reason IS DISTINCT FROM 'github_secret_scanning'
                ORDER BY least(revoked_at, expires_at) DESC, id DESC
                OFFSET 1000 LIMIT 500)
            FOR UPDATE SKIP LOCKED);
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION prune_ended_sessions() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
BEGIN
    DELETE FROM public.sessions WHERE id IN (
        SELECT id FROM public.sessions WHERE id IN (
            SELECT id FROM public.sessions
            WHERE user_id = NEW.user_id AND (revoked_at IS NOT NULL OR expires_at <= now())
            ORDER BY least(revoked_at, expires_at) DESC, id DESC
            OFFSET 100 LIMIT 500)
        FOR UPDATE SKIP LOCKED);
    RETURN NULL;
END $$;
