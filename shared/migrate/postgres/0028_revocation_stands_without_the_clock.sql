-- A revocation stands without the clock's help. 0027 took "in effect" from
-- now(), which is the start of the caller's transaction: a function
-- holding a transaction open from before a key was revoked could still
-- move that revocation a microsecond earlier and relabel it. The only
-- revocation the product ever changes is a rotation's ('rotated', its
-- grace ahead), which a revoke during the window brings forward with a
-- reason of its own. Any other revocation, and a rotation once in effect,
-- now stands whole: neither revoked_at nor the reason changes.
DROP TRIGGER api_keys_revocation_stands ON api_keys;

CREATE TRIGGER api_keys_revocation_stands
    BEFORE UPDATE ON api_keys
    FOR EACH ROW
    WHEN (OLD.revoked_at IS NOT NULL AND (
        NEW.revoked_at IS NULL OR NEW.revoked_at > OLD.revoked_at
        OR (NEW.revoked_at = OLD.revoked_at AND NEW.revoked_reason IS DISTINCT FROM OLD.revoked_reason)
        OR ((OLD.revoked_at <= now() OR OLD.revoked_reason IS DISTINCT FROM 'rotated')
            AND (NEW.revoked_at <> OLD.revoked_at OR NEW.revoked_reason IS DISTINCT FROM OLD.revoked_reason))))
    EXECUTE FUNCTION revocation_stands();
