-- Every Caddy instance caches keys and sessions and LISTENs on
-- guardian_auth. Any change that can withdraw access, made by any path (a
-- function, a job, an operator's SQL), notifies at commit, so every cache
-- drops the entry within milliseconds. Payloads: "k:<key_hash hex>",
-- "s:<session id>", "u:<user id>".

CREATE FUNCTION guardian_auth_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'api_keys' THEN
        PERFORM pg_notify('guardian_auth', 'k:' || encode(OLD.key_hash, 'hex'));
    ELSIF TG_TABLE_NAME = 'sessions' THEN
        PERFORM pg_notify('guardian_auth', 's:' || OLD.id::text);
    ELSIF TG_TABLE_NAME = 'users' THEN
        PERFORM pg_notify('guardian_auth', 'u:' || OLD.id::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER api_keys_auth_notify
    AFTER UPDATE OF revoked_at, scope, server_id, customer_id OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION guardian_auth_notify();

CREATE TRIGGER sessions_auth_notify
    AFTER UPDATE OF revoked_at, expires_at OR DELETE ON sessions
    FOR EACH ROW EXECUTE FUNCTION guardian_auth_notify();

CREATE TRIGGER users_auth_notify
    AFTER UPDATE OF role, customer_id OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION guardian_auth_notify();
