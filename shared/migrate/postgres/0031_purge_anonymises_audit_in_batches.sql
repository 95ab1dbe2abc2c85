-- account-purge anonymises a deleted account's audit rows in batches, each
-- committed on its own, before it deletes the customer. In the delete's
-- own transaction (the trigger of 0011) every row is updated at once, with
-- the append-only trigger's check per row: tens of millions of rows took
-- longer than the job may run, the delete rolled back at every run, and
-- the account was never purged.
CREATE FUNCTION forget_audit_rows_of(customer uuid, max_rows integer) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    nulled bigint;
BEGIN
    -- Only an account whose deletion is scheduled (it cannot be called
    -- off): the purge role must not be able to anonymise a live
    -- customer's log.
    IF NOT EXISTS (SELECT 1 FROM customers WHERE id = customer AND delete_after IS NOT NULL) THEN
        RAISE EXCEPTION 'customer % is not scheduled for deletion', customer USING ERRCODE = 'insufficient_privilege';
    END IF;
    UPDATE api_audit_log SET customer_id = NULL
     WHERE id IN (SELECT id FROM api_audit_log WHERE customer_id = customer LIMIT max_rows);
    GET DIAGNOSTICS nulled = ROW_COUNT;
    RETURN nulled;
END
$$;

REVOKE ALL ON FUNCTION forget_audit_rows_of(uuid, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION forget_audit_rows_of(uuid, integer) TO {{fn_role:account_purge}};
