-- Ended keys and sessions are kept, for the dashboard's history and so that
-- a leaked key can still be told apart from a stranger's, but not without
-- bound: a write key re-enrolling one machine in a loop, a session rotating
-- keys, or sign-ins repeated by a script each leave a row behind, and at
-- the rate limits' pace that is millions a day. Each new key or session
-- now removes, in its own transaction, the ended ones of its kind past the
-- newest:
--   collector keys of the same server: 10;
--   account keys of the same customer: 1,000;
--   sessions of the same user: 100.
-- A key is ended once revoked_at or expires_at has passed (a rotation's
-- grace window still works); a session, once revoked or expired. Working
-- keys and sessions are never removed here: their bounds are plan's.
-- The functions run as the tables' owner, so no function role needs
-- DELETE; rows it cannot lock at once (another transaction's) are left
-- for the next insert.
CREATE FUNCTION prune_ended_keys() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    IF NEW.kind = 'collector' THEN
        DELETE FROM api_keys WHERE id IN (
            SELECT id FROM api_keys
            WHERE server_id = NEW.server_id AND least(revoked_at, expires_at) <= now()
            ORDER BY least(revoked_at, expires_at) DESC, id DESC
            OFFSET 10 FOR UPDATE SKIP LOCKED);
    ELSE
        DELETE FROM api_keys WHERE id IN (
            SELECT id FROM api_keys
            WHERE customer_id = NEW.customer_id AND kind = 'account' AND least(revoked_at, expires_at) <= now()
            ORDER BY least(revoked_at, expires_at) DESC, id DESC
            OFFSET 1000 FOR UPDATE SKIP LOCKED);
    END IF;
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION prune_ended_keys() FROM PUBLIC;

CREATE TRIGGER api_keys_prune_ended
    AFTER INSERT ON api_keys
    FOR EACH ROW EXECUTE FUNCTION prune_ended_keys();

CREATE FUNCTION prune_ended_sessions() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    DELETE FROM sessions WHERE id IN (
        SELECT id FROM sessions
        WHERE user_id = NEW.user_id AND (revoked_at IS NOT NULL OR expires_at <= now())
        ORDER BY least(revoked_at, expires_at) DESC, id DESC
        OFFSET 100 FOR UPDATE SKIP LOCKED);
    RETURN NULL;
END $$;
REVOKE ALL ON FUNCTION prune_ended_sessions() FROM PUBLIC;

CREATE TRIGGER sessions_prune_ended
    AFTER INSERT ON sessions
    FOR EACH ROW EXECUTE FUNCTION prune_ended_sessions();

-- The account keys of a customer without its collector keys (which may
-- number 100,000), and a user's sessions whatever their state (the
-- existing index holds open ones only; deleting a user reads it too).
CREATE INDEX api_keys_account_idx ON api_keys (customer_id) WHERE kind = 'account';
CREATE INDEX sessions_user_all_idx ON sessions (user_id);
