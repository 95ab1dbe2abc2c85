-- Keys may expire, and a rotated key remembers its predecessor so its audit
-- trail stays linked to the new one. revoked_at may lie in the future: a
-- rotation's grace window, during which the old key still works.
ALTER TABLE api_keys
    ADD COLUMN expires_at   timestamptz,
    ADD COLUMN rotated_from uuid REFERENCES api_keys (id) ON DELETE SET NULL;

-- Idempotency-Key of server enrollment: a retried request finds the server
-- the first one made instead of making another. No key material is kept.
CREATE TABLE idempotency_keys (
    customer_id   uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    key           text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    request_hash  bytea NOT NULL,
    server_id     uuid REFERENCES servers (id) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, key)
);

GRANT SELECT, INSERT, UPDATE, DELETE ON idempotency_keys TO {{app_role}};

CREATE TRIGGER api_keys_auth_notify_expiry
    AFTER UPDATE OF expires_at ON api_keys
    FOR EACH ROW EXECUTE FUNCTION guardian_auth_notify();
