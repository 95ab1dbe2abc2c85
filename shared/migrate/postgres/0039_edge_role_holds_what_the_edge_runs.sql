-- The runtime role ({{app_role}}) is the edge's alone: the functions and
-- the jobs connect as roles of their own (0009, 0022, 0025). It still held
-- what every component needed when they shared it: writing customers,
-- users, servers and keys, the second-factor tables, deleted_servers and
-- forget_deleted_customers. With the edge's DSN, one DELETE of a live
-- customer ran the trigger of 0011, which anonymises its audit trail as
-- for a deletion, and an UPDATE could raise a key's scope. It now holds
-- what the edge's statements need, and no more:
--
--   * caddymodules/auth reads keys and sessions, a session's user's role,
--     and records when each was last used (touch.go: UPDATE of one column,
--     FOR NO KEY UPDATE of the rows it writes);
--   * caddymodules/audit reads each customer's salt for its rows' digest,
--     appends rows and reads back a replayed row's hash (0003, 0018);
--   * caddymodules/guardian reads schema_migrations (0030).
REVOKE ALL ON customers, users, sessions, servers, api_keys, idempotency_keys,
    mfa_totp, webauthn_credentials, mfa_recovery_codes, mfa_challenges, mfa_attempts,
    deleted_servers FROM {{app_role}};
REVOKE EXECUTE ON FUNCTION forget_deleted_customers(interval) FROM {{app_role}};

GRANT SELECT ON api_keys, sessions TO {{app_role}};
GRANT UPDATE (last_used_at) ON api_keys TO {{app_role}};
GRANT UPDATE (last_seen_at) ON sessions TO {{app_role}};
GRANT SELECT (id, role) ON users TO {{app_role}};
GRANT SELECT (id, audit_salt) ON customers TO {{app_role}};
