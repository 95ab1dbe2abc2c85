-- audit-verify, a job, ran as the audit reader's role (functions/audit),
-- which therefore held every customer's audit salt (0017) and id list
-- (0013). The reader, reachable from the web by any admin, never reads
-- either: a compromised reader could collect the salts and tie a deleted
-- customer's rows back to it later. Verify gets a role of its own.
GRANT USAGE ON SCHEMA public TO {{fn_role:audit_verify}};
GRANT SELECT ON api_audit_log TO {{fn_role:audit_verify}};
GRANT SELECT (id, audit_salt) ON customers TO {{fn_role:audit_verify}};
REVOKE SELECT (id, audit_salt) ON customers FROM {{fn_role:audit}};
