-- A scheduled deletion stands. functions/sessions holds UPDATE on
-- customers.deletion_requested_at and delete_after (0015) to schedule an
-- account's deletion, an hour ahead; a grant cannot say how the columns
-- may change. A compromised function could set delete_after in the past
-- (account-purge then deletes the account's data within the hour), far
-- ahead (the account closed, its data kept past the promise), or call a
-- deletion off after account-purge had anonymised the account's audit
-- trail. For every role but the table's owner (an operator, who may still
-- undo a deletion by hand before it runs), the two columns may only go
-- from NULL to a schedule, once, and the schedule is counted from the
-- moment of the update (clock_timestamp(), not the transaction's start,
-- which a transaction held open could move back), an hour ahead, the
-- delay functions/sessions asks for: the purge runs an hour after the
-- request so that backups, kept 30 days, are gone within the 30 days the
-- posture promises (shared/chbackup pruneSlack counts on it); a longer
-- delay would break that, a shorter one take the hour to undo away.
-- WHEN is checked without calling the function, so other updates of
-- customers cost nothing more.
CREATE FUNCTION deletion_stands() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    delay interval;
BEGIN
    IF pg_has_role(current_user, (SELECT relowner FROM pg_catalog.pg_class WHERE oid = TG_RELID), 'USAGE') THEN
        RETURN NEW;
    END IF;
    IF OLD.deletion_requested_at IS NULL AND NEW.deletion_requested_at IS NOT NULL
        AND isfinite(NEW.delete_after) THEN
        delay := NEW.delete_after - now();
        IF delay = interval '1 hour' THEN
            NEW.deletion_requested_at := clock_timestamp();
            NEW.delete_after := NEW.deletion_requested_at + delay;
            RETURN NEW;
        END IF;
    END IF;
    RAISE EXCEPTION 'customers: a deletion is scheduled once, an hour ahead, and stands'
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
