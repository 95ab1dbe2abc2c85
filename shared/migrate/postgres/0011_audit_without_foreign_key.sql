-- The foreign key from api_audit_log.customer_id to customers made every
-- audit row look its customer up and lock it (FOR KEY SHARE) on insert:
-- about 9 µs of PostgreSQL CPU per row, a quarter of what a row costs in
-- the audit writer's COPY. Its one job was ON DELETE SET NULL, and a
-- trigger on customers does that job instead:
--
--   * deleting a customer nulls customer_id on its audit rows (as the
--     foreign key did, as the table's owner: the append-only trigger
--     allows this one change) and records the id in deleted_customers;
--   * a row written after its customer was deleted (a request in flight
--     during the purge, a spool replayed later) keeps the id until
--     forget_deleted_customers() runs: account-purge calls it every run,
--     and it nulls such rows and forgets ids older than its argument.
--
-- The edge only writes customer ids it has just authenticated (or that
-- its own functions name), so nothing is lost by not checking them again.
ALTER TABLE api_audit_log DROP CONSTRAINT api_audit_log_customer_id_fkey;

CREATE TABLE deleted_customers (
    customer_id uuid PRIMARY KEY,
    deleted_at  timestamptz NOT NULL DEFAULT now()
);

CREATE FUNCTION audit_forget_deleted_customer() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    INSERT INTO deleted_customers (customer_id) VALUES (OLD.id) ON CONFLICT DO NOTHING;
    UPDATE api_audit_log SET customer_id = NULL WHERE customer_id = OLD.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER customers_forget_audit_rows
    AFTER DELETE ON customers
    FOR EACH ROW EXECUTE FUNCTION audit_forget_deleted_customer();

-- forget_deleted_customers nulls customer_id on audit rows of deleted
-- customers written since their deletion, then forgets the deletions
-- older than keep. It returns how many rows it nulled.
CREATE FUNCTION forget_deleted_customers(keep interval) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    nulled bigint;
BEGIN
    UPDATE api_audit_log SET customer_id = NULL
     WHERE customer_id IN (SELECT customer_id FROM deleted_customers);
    GET DIAGNOSTICS nulled = ROW_COUNT;
    DELETE FROM deleted_customers WHERE deleted_at < now() - keep;
    RETURN nulled;
END
$$;

REVOKE ALL ON FUNCTION audit_forget_deleted_customer() FROM PUBLIC;
REVOKE ALL ON FUNCTION forget_deleted_customers(interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION forget_deleted_customers(interval) TO {{app_role}};
