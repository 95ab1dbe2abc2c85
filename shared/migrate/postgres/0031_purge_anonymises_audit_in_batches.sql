-- account-purge anonymises a deleted account's audit rows in batches, each
-- committed on its own, before it deletes the customer. In the delete's
-- own transaction (the trigger of 0011) every row is updated at once, with
-- the append-only trigger's check per row: tens of millions of rows took
-- longer than the job may run, the delete rolled back at every run, and
-- the account was never purged.
--
-- pg_temp last in search_path: otherwise a caller's temporary table named
-- customers would be read instead, and let the purge role anonymise any
-- customer's log.
CREATE FUNCTION forget_audit_rows_of(customer uuid, max_rows integer) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    nulled bigint;
BEGIN
    -- Only an account whose deletion is due (it cannot be called off):
    -- the purge role must not be able to anonymise a live customer's log.
    IF NOT EXISTS (SELECT 1 FROM public.customers WHERE id = customer AND delete_after <= now()) THEN
        RAISE EXCEPTION 'customer % is not due for deletion', customer USING ERRCODE = 'insufficient_privilege';
    END IF;
    UPDATE public.api_audit_log SET customer_id = NULL
     WHERE id IN (SELECT id FROM public.api_audit_log WHERE customer_id = customer LIMIT max_rows);
    GET DIAGNOSTICS nulled = ROW_COUNT;
    RETURN nulled;
END
$$;

REVOKE ALL ON FUNCTION forget_audit_rows_of(uuid, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION forget_audit_rows_of(uuid, integer) TO {{fn_role:account_purge}};

-- The definer functions before it, alike: pg_temp searched last.
ALTER FUNCTION audit_forget_deleted_customer() SET search_path = pg_catalog, public, pg_temp;
ALTER FUNCTION forget_deleted_customers(interval) SET search_path = pg_catalog, public, pg_temp;
ALTER FUNCTION revoke_reported_keys(bytea[]) SET search_path = pg_catalog, public, pg_temp;

-- audit-verify counts a row anonymised while its customer is due for
-- deletion (above) as purged, not as moved out of a live customer's log.
GRANT SELECT (delete_after) ON customers TO {{fn_role:audit_verify}};
