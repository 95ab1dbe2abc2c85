-- The audit log: one row per authenticated API call or failed
-- authentication. It is append-only at the database level twice over: the
-- runtime role is granted only SELECT and INSERT (0003), and triggers refuse
-- UPDATE, DELETE and TRUNCATE for every role, the owner included. The one
-- change allowed is the foreign key nulling customer_id when a customer is
-- deleted, so the trail outlives the customer.

CREATE TABLE api_audit_log (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Who
    customer_id    uuid REFERENCES customers (id) ON DELETE SET NULL,
    key_id         uuid,
    user_id        uuid,
    -- When and where
    occurred_at    timestamptz NOT NULL DEFAULT now(),
    source_ip      inet,
    user_agent     text,
    -- Unique so that a replayed spool never writes a row twice.
    request_id     text NOT NULL UNIQUE CHECK (length(request_id) BETWEEN 1 AND 128),
    -- What
    method         text NOT NULL CHECK (length(method) BETWEEN 1 AND 16),
    path           text NOT NULL,
    resource_type  text,
    resource_id    text,
    action         text NOT NULL CHECK (action IN ('create', 'list', 'read', 'update', 'delete', 'rotate', 'auth_failed')),
    -- Outcome
    result         text NOT NULL CHECK (result IN ('success', 'denied', 'error')),
    status_code    smallint NOT NULL CHECK (status_code BETWEEN 100 AND 599),
    -- Context
    metadata       jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(metadata) = 'object')
);
CREATE INDEX api_audit_log_customer_idx ON api_audit_log (customer_id, occurred_at DESC, id DESC);

CREATE FUNCTION api_audit_log_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND NEW.customer_id IS NULL
       AND OLD.customer_id IS NOT NULL
       AND (to_jsonb(NEW) - 'customer_id') = (to_jsonb(OLD) - 'customer_id') THEN
        -- The customer was deleted: keep the row, forget the owner.
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'api_audit_log is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER api_audit_log_no_update_delete
    BEFORE UPDATE OR DELETE ON api_audit_log
    FOR EACH ROW EXECUTE FUNCTION api_audit_log_append_only();

CREATE TRIGGER api_audit_log_no_truncate
    BEFORE TRUNCATE ON api_audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION api_audit_log_append_only();
