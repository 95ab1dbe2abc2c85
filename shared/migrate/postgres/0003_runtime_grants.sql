-- The runtime role ({{app_role}}) reads and writes the customer data it
-- serves, but may only read and append to the audit log.

GRANT USAGE ON SCHEMA public TO {{app_role}};
GRANT SELECT, INSERT, UPDATE, DELETE ON customers, users, sessions, servers, api_keys TO {{app_role}};
REVOKE ALL ON api_audit_log FROM {{app_role}};
GRANT SELECT, INSERT ON api_audit_log TO {{app_role}};
