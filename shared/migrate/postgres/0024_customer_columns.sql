-- auth, oidc, servers and sessions could read every column of customers
-- (0009), audit_salt (0017) included: a compromised function could collect
-- every customer's salt and later tie a deleted customer's audit rows back
-- to it, which 0020 and 0022 closed for secretscan and the audit reader.
-- Each now reads only the columns its statements name. Revoking the table's
-- SELECT revokes it on every column too; the UPDATE (created_at) their
-- share locks need (0009, 0014) stays.

REVOKE SELECT ON customers FROM {{fn_role:auth}}, {{fn_role:oidc}}, {{fn_role:servers}}, {{fn_role:sessions}};

-- auth and oidc: whether the user's account is closing (sign-in, re-auth),
-- and the share lock of a session's start (shared/account LockOpen); oidc
-- also reads back the id of a customer it creates. servers: the lock of
-- enrolment and key rotation.
GRANT SELECT (id, deletion_requested_at) ON customers TO {{fn_role:auth}}, {{fn_role:oidc}}, {{fn_role:servers}};

-- sessions: scheduling the account's deletion, and reading its date.
GRANT SELECT (id, deletion_requested_at, delete_after) ON customers TO {{fn_role:sessions}};
