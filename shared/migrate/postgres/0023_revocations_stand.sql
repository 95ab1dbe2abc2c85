-- A revocation stands. The functions that revoke keys (keys, servers,
-- sessions) hold UPDATE on api_keys.revoked_at, and those that end
-- sessions (auth, mfa, oidc, sessions) on sessions.revoked_at (0015). A
-- grant cannot say how a column may change: a compromised function could
-- set revoked_at back to NULL (every key GitHub reported as leaked working
-- again) or push a revocation into the future. These triggers let
-- revoked_at be set (NULL to a time) or moved earlier, nothing else: a
-- rotation sets a future time (its grace window), and revoking the key
-- during the window brings it forward. Every path of the product does one
-- of the two, and changes revoked_reason only with it. Like the audit
-- log's (0002), they bind every role, the owner included. WHEN is checked
-- without calling the function, so other updates of these rows (a key's
-- last use, a session's last sight) cost nothing more.
CREATE FUNCTION revocation_stands() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '%: a revocation cannot be withdrawn or postponed', TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;

REVOKE ALL ON FUNCTION revocation_stands() FROM PUBLIC;

CREATE TRIGGER api_keys_revocation_stands
    BEFORE UPDATE ON api_keys
    FOR EACH ROW
    WHEN (OLD.revoked_at IS NOT NULL AND (NEW.revoked_at IS NULL OR NEW.revoked_at > OLD.revoked_at))
    EXECUTE FUNCTION revocation_stands();

CREATE TRIGGER sessions_revocation_stands
    BEFORE UPDATE ON sessions
    FOR EACH ROW
    WHEN (OLD.revoked_at IS NOT NULL AND (NEW.revoked_at IS NULL OR NEW.revoked_at > OLD.revoked_at))
    EXECUTE FUNCTION revocation_stands();

-- secretscan revokes only through revoke_reported_keys (0020), which runs
-- as the owner; it no longer reads or updates api_keys itself. Its table
-- grants (0009, 0015) would let a compromised webhook function (public,
-- and it holds the key pepper) list every customer's keys and relabel any
-- revocation.
REVOKE SELECT, UPDATE ON api_keys FROM {{fn_role:secretscan}};
