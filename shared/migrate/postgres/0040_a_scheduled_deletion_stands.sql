-- A scheduled deletion stands. functions/sessions holds UPDATE on
-- customers.deletion_requested_at and delete_after (0015) to schedule an
-- account's deletion, an hour ahead; a grant cannot say how the columns
-- may change. A compromised function could set delete_after in the past
-- (account-purge then deletes the account's data within the hour) or
-- call a deletion off after account-purge had anonymised the account's
-- audit trail. For every role but the table's owner (an operator, who may
-- still undo a deletion by hand before it runs), the two columns may only
-- go from NULL to the time of the request and at least an hour after it,
-- once. WHEN is checked without calling the function, so other updates of
-- customers cost nothing more.
CREATE FUNCTION deletion_stands() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF pg_has_role(current_user, (SELECT relowner FROM pg_catalog.pg_class WHERE oid = TG_RELID), 'USAGE') THEN
        RETURN NEW;
    END IF;
    IF OLD.deletion_requested_at IS NULL AND NEW.deletion_requested_at = now()
        AND NEW.delete_after >= now() + interval '1 hour' THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'customers: a deletion is scheduled once, an hour ahead or more, and stands'
        USING ERRCODE = 'insufficient_privilege';
END
$$;

REVOKE ALL ON FUNCTION deletion_stands() FROM PUBLIC;

CREATE TRIGGER customers_deletion_stands
    BEFORE UPDATE ON customers
    FOR EACH ROW
    WHEN (NEW.deletion_requested_at IS DISTINCT FROM OLD.deletion_requested_at
        OR NEW.delete_after IS DISTINCT FROM OLD.delete_after)
    EXECUTE FUNCTION deletion_stands();
