-- secretscan and mfa could read every column of users (0009), password
-- hashes and Google subjects included, and keys, servers, sessions and
-- oidc every column of the second-factor tables: the sealed TOTP secrets,
-- the WebAuthn credentials and (oidc) the recovery codes' hashes. None of
-- them reads those columns. secretscan answers the internet before it has
-- checked a signature, so what it can read matters most. Each now reads
-- only the columns its statements name, as 0024 did for customers.
-- Revoking the table's SELECT revokes it on every column too.

REVOKE SELECT ON users FROM {{fn_role:secretscan}}, {{fn_role:mfa}};

-- secretscan: the e-mail addresses of the admins of a leaked key's account
-- (functions/secretscan store.go adminEmails).
GRANT SELECT (customer_id, email, role) ON users TO {{fn_role:secretscan}};

-- mfa: the account name a WebAuthn registration shows, and the user's lock
-- before a change of factors (shared/mfa webauthn.go, service.go; FOR
-- UPDATE also needs the UPDATE (updated_at) that 0009 granted).
GRANT SELECT (id, email) ON users TO {{fn_role:mfa}};

-- keys, servers, sessions (stepup.Admit) and oidc (session.Start,
-- mfa.Enrolled) only ask whether a user has a second factor, and oidc
-- how many recovery codes are left.
REVOKE SELECT ON mfa_totp, webauthn_credentials FROM {{fn_role:keys}}, {{fn_role:servers}}, {{fn_role:sessions}}, {{fn_role:oidc}};
REVOKE SELECT ON mfa_recovery_codes FROM {{fn_role:oidc}};
GRANT SELECT (user_id, confirmed_at) ON mfa_totp TO {{fn_role:keys}}, {{fn_role:servers}}, {{fn_role:sessions}}, {{fn_role:oidc}};
GRANT SELECT (user_id) ON webauthn_credentials TO {{fn_role:keys}}, {{fn_role:servers}}, {{fn_role:sessions}}, {{fn_role:oidc}};
GRANT SELECT (user_id, used_at) ON mfa_recovery_codes TO {{fn_role:oidc}};
