-- A revocation in effect stands whole. 0026 let a key's reason change with
-- a revoked_at moved earlier, which is any revoked_at: moving one a
-- microsecond earlier relabelled it all the same. Once revoked_at has
-- passed, neither it nor the reason changes any more, for any role; before
-- that (a rotation's grace window) it may be moved earlier, with a reason
-- (revoked during the window). Every path of the product updates only keys
-- whose revoked_at is unset or still ahead. now() is the transaction's
-- start, so a revocation is in effect for the statements after the one
-- that made it, not for that one.
DROP TRIGGER api_keys_revocation_stands ON api_keys;

CREATE TRIGGER api_keys_revocation_stands
    BEFORE UPDATE ON api_keys
    FOR EACH ROW
    WHEN (OLD.revoked_at IS NOT NULL AND (
        NEW.revoked_at IS NULL OR NEW.revoked_at > OLD.revoked_at
        OR (NEW.revoked_at = OLD.revoked_at AND NEW.revoked_reason IS DISTINCT FROM OLD.revoked_reason)
        OR (OLD.revoked_at <= now() AND (NEW.revoked_at <> OLD.revoked_at OR NEW.revoked_reason IS DISTINCT FROM OLD.revoked_reason))))
    EXECUTE FUNCTION revocation_stands();
