-- Each function connects as a role of its own ({{app_role}}_<function>,
-- listed in shared/migrate.FunctionRoles), granted exactly what the
-- function's statements need, so that a compromised function reaches only
-- the rows its routes touch. The edge itself (key and session checks, the
-- audit writer) and the jobs keep the runtime role; the function roles are
-- not members of it. The roles exist before this runs (deploy/stack and
-- docs/deployment.md create them). Where a function locks rows it only
-- reads (SELECT ... FOR UPDATE/SHARE needs UPDATE on some column), the
-- UPDATE is on a column it never writes.

GRANT USAGE ON SCHEMA public TO {{fn_role:auth}}, {{fn_role:mfa}}, {{fn_role:oidc}}, {{fn_role:keys}},
    {{fn_role:servers}}, {{fn_role:sessions}}, {{fn_role:audit}}, {{fn_role:ingest}},
    {{fn_role:secretscan}}, {{fn_role:healthz}};

-- functions/auth: sign-in, re-auth, sign-out, passwords, second factors at sign-in.
GRANT SELECT ON customers TO {{fn_role:auth}};
GRANT SELECT, UPDATE ON users TO {{fn_role:auth}};
GRANT SELECT, INSERT, UPDATE ON sessions TO {{fn_role:auth}};
GRANT SELECT, UPDATE ON mfa_totp, webauthn_credentials, mfa_recovery_codes TO {{fn_role:auth}};
GRANT SELECT, INSERT, UPDATE, DELETE ON mfa_challenges TO {{fn_role:auth}};
GRANT SELECT, INSERT, UPDATE ON mfa_attempts TO {{fn_role:auth}};

-- functions/mfa: enrolling and removing second factors.
GRANT SELECT ON users TO {{fn_role:mfa}};
GRANT UPDATE (updated_at) ON users TO {{fn_role:mfa}};
GRANT SELECT, UPDATE ON sessions TO {{fn_role:mfa}};
GRANT SELECT, INSERT, UPDATE, DELETE ON mfa_totp TO {{fn_role:mfa}};
GRANT SELECT, INSERT, DELETE ON webauthn_credentials, mfa_recovery_codes TO {{fn_role:mfa}};
GRANT SELECT, INSERT, UPDATE, DELETE ON mfa_challenges TO {{fn_role:mfa}};
GRANT SELECT, INSERT, UPDATE ON mfa_attempts TO {{fn_role:mfa}};

-- functions/oidc: Google sign-up and sign-in.
GRANT SELECT, INSERT ON customers TO {{fn_role:oidc}};
GRANT SELECT, INSERT, UPDATE ON users, sessions TO {{fn_role:oidc}};
GRANT SELECT ON mfa_totp, webauthn_credentials, mfa_recovery_codes TO {{fn_role:oidc}};
GRANT SELECT, INSERT, DELETE ON mfa_challenges TO {{fn_role:oidc}};

-- functions/keys: account keys.
GRANT SELECT, INSERT, UPDATE ON api_keys TO {{fn_role:keys}};
GRANT SELECT ON sessions, mfa_totp, webauthn_credentials TO {{fn_role:keys}};

-- functions/servers: enrolment, collector keys.
GRANT SELECT ON customers TO {{fn_role:servers}};
GRANT UPDATE (created_at) ON customers TO {{fn_role:servers}};
GRANT SELECT, INSERT, UPDATE, DELETE ON servers TO {{fn_role:servers}};
GRANT SELECT, INSERT, UPDATE ON api_keys, idempotency_keys TO {{fn_role:servers}};
GRANT SELECT ON sessions, mfa_totp, webauthn_credentials TO {{fn_role:servers}};

-- functions/sessions: sessions, account deletion.
GRANT SELECT, UPDATE ON sessions, customers, api_keys TO {{fn_role:sessions}};
GRANT SELECT ON mfa_totp, webauthn_credentials TO {{fn_role:sessions}};

-- functions/audit: reading the log.
GRANT SELECT ON api_audit_log TO {{fn_role:audit}};

-- functions/ingest: the customer's plan (its retention).
GRANT SELECT (id, plan) ON customers TO {{fn_role:ingest}};

-- functions/secretscan: revoking leaked keys, with their audit rows.
GRANT SELECT, UPDATE ON api_keys TO {{fn_role:secretscan}};
GRANT SELECT ON users TO {{fn_role:secretscan}};
GRANT INSERT ON api_audit_log TO {{fn_role:secretscan}};

-- functions/healthz: SELECT 1 only.
