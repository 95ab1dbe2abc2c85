-- account-purge holds DELETE on customers (0025) to delete the accounts
-- whose deletion is due; a grant cannot say which rows. With the job's
-- DSN, one DELETE of a live customer deletes its users, servers and keys
-- and, by the trigger of 0011, anonymises its audit trail as for a
-- deletion, which forget_audit_rows_of (0031) was written to refuse for
-- an account not yet due. For every role but the table's owner (an
-- operator, who may delete by hand), a customer may now be deleted only
-- once its deletion is due by PostgreSQL's clock.
CREATE FUNCTION customer_deletion_due() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF pg_catalog.pg_has_role(current_user, (SELECT relowner FROM pg_catalog.pg_class WHERE oid = TG_RELID), 'USAGE')
        OR OLD.delete_after <= now() THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'customers: only an account whose deletion is due may be deleted'
        USING ERRCODE = 'insufficient_privilege';
END
$$;

REVOKE ALL ON FUNCTION customer_deletion_due() FROM PUBLIC;

CREATE TRIGGER customers_deletion_due
    BEFORE DELETE ON customers
    FOR EACH ROW
    EXECUTE FUNCTION customer_deletion_due();

-- forget_deleted_customers (0011) forgot the deletions older than the
-- interval its caller gave: with '0', a row of a deleted account that a
-- spool replays later would keep the account's id. Deletions are now
-- remembered for at least 30 days, what account-purge asks for; a caller
-- may ask for longer.
CREATE OR REPLACE FUNCTION forget_deleted_customers(keep interval) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public, pg_temp AS $$
DECLARE
    nulled bigint;
BEGIN
    UPDATE api_audit_log SET customer_id = NULL
     WHERE customer_id IN (SELECT customer_id FROM deleted_customers);
    GET DIAGNOSTICS nulled = ROW_COUNT;
    DELETE FROM deleted_customers WHERE deleted_at < now() - greatest(keep, interval '30 days');
    RETURN nulled;
END
$$;
