-- functions/secretscan writes one audit row per key it revokes, in a hash
-- chain of its own (0019), with the customer's salted digest that
-- revoke_reported_keys hands back for that key only (0020). Its grant
-- lets it insert any row, though: a compromised webhook function (public,
-- and it holds the key pepper) could add rows to any customer's log under
-- a chain of its own making, with no customer digest, which verify cannot
-- hold to a customer. As that role, a row must now be what secretscan
-- writes: an api_key deletion of a customer, with a salted digest
-- (0x03 and 32 bytes, checked by verify against the customer's salt) in a
-- chain named secretscan-*. The trigger runs after the insert (and its
-- error undoes it): a BEFORE ROW trigger would make every COPY of the
-- edge's audit writer insert row by row instead of in batches. WHEN
-- compares the role's name without calling the function, so the edge's
-- rows cost only that comparison.
CREATE FUNCTION audit_row_of_secretscan() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.customer_id IS NOT NULL AND NEW.key_id IS NULL AND NEW.user_id IS NULL
        AND NEW.resource_type = 'api_key' AND NEW.action = 'delete'
        AND NEW.writer_id LIKE 'secretscan-%'
        AND length(NEW.customer_digest) = 33 AND get_byte(NEW.customer_digest, 0) = 3 THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'api_audit_log: secretscan writes only the rows of its revocations'
        USING ERRCODE = 'insufficient_privilege';
END
$$;

REVOKE ALL ON FUNCTION audit_row_of_secretscan() FROM PUBLIC;

CREATE TRIGGER api_audit_log_secretscan_rows
    AFTER INSERT ON api_audit_log
    FOR EACH ROW
    WHEN ('"' || current_user || '"' = '{{fn_role:secretscan}}')
    EXECUTE FUNCTION audit_row_of_secretscan();
