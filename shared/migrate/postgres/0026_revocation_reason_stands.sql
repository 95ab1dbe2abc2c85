-- A revocation's reason stands with it. 0023 kept revoked_at from being
-- withdrawn or postponed, but revoked_reason could still be changed alone
-- by the roles that may revoke keys: a compromised function could relabel
-- every key GitHub reported as leaked ('github_secret_scanning') as merely
-- 'rotated', hiding from customers why their keys stopped. The reason may
-- now change only with revoked_at itself (set, or moved earlier: a key
-- revoked during its rotation's grace is 'revoked', no longer 'rotated').
DROP TRIGGER api_keys_revocation_stands ON api_keys;

CREATE TRIGGER api_keys_revocation_stands
    BEFORE UPDATE ON api_keys
    FOR EACH ROW
    WHEN (OLD.revoked_at IS NOT NULL AND (
        NEW.revoked_at IS NULL OR NEW.revoked_at > OLD.revoked_at
        OR (NEW.revoked_at = OLD.revoked_at AND NEW.revoked_reason IS DISTINCT FROM OLD.revoked_reason)))
    EXECUTE FUNCTION revocation_stands();
