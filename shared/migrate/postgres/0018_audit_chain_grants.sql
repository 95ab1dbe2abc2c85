-- Only the edge's writer places rows in an audit chain. secretscan writes
-- its revocation rows itself (one statement with the revocation), outside
-- any chain; with INSERT on every column it could also write a row at a
-- chain position the edge is about to use, and the edge, taking the
-- stored row for a replay of its own, would drop its real one. It now
-- inserts only the columns of an unchained row.
REVOKE INSERT ON api_audit_log FROM {{fn_role:secretscan}};
GRANT INSERT (customer_id, source_ip, user_agent, request_id, method, path,
    resource_type, resource_id, action, result, status_code, metadata)
    ON api_audit_log TO {{fn_role:secretscan}};

-- A customer's audit salt never changes (0017): rewriting it would make
-- every salted row of that customer fail verify. The runtime role keeps
-- UPDATE on the other columns.
REVOKE UPDATE ON customers FROM {{app_role}};
GRANT UPDATE (name, plan, created_at, deletion_requested_at, delete_after)
    ON customers TO {{app_role}};
