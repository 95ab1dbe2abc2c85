-- retention-sweep and account-purge ran as the runtime role, the edge's,
-- which may write audit rows, read every audit salt, password hash and
-- second-factor secret, and update keys. Each job gets a role of its own,
-- granted what its statements need (functions/jobs/*/). The runtime role
-- keeps its grants: the edge uses them.
GRANT USAGE ON SCHEMA public TO {{fn_role:retention_sweep}}, {{fn_role:account_purge}};

-- retention-sweep: the current plan of the customers with snapshots.
GRANT SELECT (id, plan) ON customers TO {{fn_role:retention_sweep}};

-- account-purge: the accounts due, and their deletion (the foreign keys'
-- cascades run as the tables' owner, the audit trigger as its definer);
-- servers deleted through the API; late audit rows of deleted accounts
-- (forget_deleted_customers, 0011); old second-factor attempt counters.
GRANT SELECT (id, delete_after), DELETE ON customers TO {{fn_role:account_purge}};
GRANT SELECT (server_id, customer_id, deleted_at), DELETE ON deleted_servers TO {{fn_role:account_purge}};
GRANT EXECUTE ON FUNCTION forget_deleted_customers(interval) TO {{fn_role:account_purge}};
GRANT SELECT (window_start), DELETE ON mfa_attempts TO {{fn_role:account_purge}};
