-- A sensitive action made with a session (creating or rotating a key,
-- enrolling a server or rotating its key) takes a share lock on the
-- session's row in its transaction (shared/stepup.LockSession): a
-- revocation committed first (signing out everywhere, a first factor, a
-- password change) stops the action, one committed later waits for it.
-- FOR SHARE asks for UPDATE on some column; last_seen_at is the harmless
-- one (the edge writes it).
GRANT UPDATE (last_seen_at) ON sessions TO {{fn_role:keys}}, {{fn_role:servers}};
