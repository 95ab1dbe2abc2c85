-- A server deleted through the API (DELETE /api/v1/servers/{id}) leaves
-- its rows in ClickHouse; this records it until account-purge has deleted
-- them, then the record goes. An account's purge covers its servers' rows
-- by customer_id, so the records go with the account.
CREATE TABLE deleted_servers (
    server_id   uuid PRIMARY KEY,
    customer_id uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    deleted_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX deleted_servers_deleted_at_idx ON deleted_servers (deleted_at);

GRANT SELECT, DELETE ON deleted_servers TO {{app_role}};
GRANT INSERT ON deleted_servers TO {{fn_role:servers}};
