-- Function roles update only the columns their statements write. Migration
-- 0009 granted UPDATE on whole tables, so a compromised function could
-- rewrite any column of any row it can reach: secretscan (public, and it
-- holds the key pepper) could set a leaked key's hash, scope and
-- revoked_at to mint a working admin key for any customer; sessions could
-- un-revoke keys or change a plan. Revoking a table's UPDATE revokes it on
-- every column too, so each table's columns are granted again below, and
-- SELECT ... FOR UPDATE/SHARE, which needs UPDATE on some column, keeps
-- working. (0009's column grants, users.updated_at for mfa, and 0012/0014's
-- customers.created_at for the share lock are on other tables or stay.)

-- functions/auth: passwords, sign-out, second factors at sign-in.
REVOKE UPDATE ON users, sessions, mfa_totp, webauthn_credentials, mfa_recovery_codes, mfa_challenges, mfa_attempts FROM {{fn_role:auth}};
GRANT UPDATE (password_hash, updated_at) ON users TO {{fn_role:auth}};
GRANT UPDATE (revoked_at) ON sessions TO {{fn_role:auth}};
GRANT UPDATE (last_step, last_used_at) ON mfa_totp TO {{fn_role:auth}};
GRANT UPDATE (credential, last_used_at) ON webauthn_credentials TO {{fn_role:auth}};
GRANT UPDATE (used_at) ON mfa_recovery_codes TO {{fn_role:auth}};
GRANT UPDATE (webauthn) ON mfa_challenges TO {{fn_role:auth}};
GRANT UPDATE (attempts, window_start) ON mfa_attempts TO {{fn_role:auth}};

-- functions/mfa: enrolling factors (mfa_totp is its own, whole).
REVOKE UPDATE ON sessions, mfa_challenges, mfa_attempts FROM {{fn_role:mfa}};
GRANT UPDATE (revoked_at) ON sessions TO {{fn_role:mfa}};
GRANT UPDATE (webauthn) ON mfa_challenges TO {{fn_role:mfa}};
GRANT UPDATE (attempts, window_start) ON mfa_attempts TO {{fn_role:mfa}};

-- functions/oidc: linking a Google account, replacing a session.
REVOKE UPDATE ON users, sessions FROM {{fn_role:oidc}};
GRANT UPDATE (google_subject, updated_at) ON users TO {{fn_role:oidc}};
GRANT UPDATE (revoked_at) ON sessions TO {{fn_role:oidc}};

-- functions/keys: rotating and revoking account keys.
REVOKE UPDATE ON api_keys FROM {{fn_role:keys}};
GRANT UPDATE (revoked_at, revoked_reason) ON api_keys TO {{fn_role:keys}};

-- functions/servers: a re-enrolled server's hostname, collector keys,
-- enrolment's idempotency records.
REVOKE UPDATE ON servers, api_keys, idempotency_keys FROM {{fn_role:servers}};
GRANT UPDATE (hostname) ON servers TO {{fn_role:servers}};
GRANT UPDATE (revoked_at, revoked_reason) ON api_keys TO {{fn_role:servers}};
GRANT UPDATE (request_hash, server_id, created_at) ON idempotency_keys TO {{fn_role:servers}};

-- functions/sessions: ending sessions, scheduling account deletion.
REVOKE UPDATE ON sessions, customers, api_keys FROM {{fn_role:sessions}};
GRANT UPDATE (revoked_at) ON sessions TO {{fn_role:sessions}};
GRANT UPDATE (deletion_requested_at, delete_after) ON customers TO {{fn_role:sessions}};
GRANT UPDATE (revoked_at, revoked_reason) ON api_keys TO {{fn_role:sessions}};

-- functions/secretscan: revoking leaked keys.
REVOKE UPDATE ON api_keys FROM {{fn_role:secretscan}};
GRANT UPDATE (revoked_at, revoked_reason) ON api_keys TO {{fn_role:secretscan}};
