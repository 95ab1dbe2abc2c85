-- functions/keys refuses to mint an account key (create or rotate) for an
-- account scheduled for deletion, as functions/servers does for collector
-- keys: it reads the customer's deletion date under a share lock, so that
-- account deletion, which updates that row, waits for a key being minted
-- and then revokes it too. FOR SHARE needs an UPDATE grant on some column
-- of the row; created_at is the column nothing reads as a change.
GRANT SELECT (id, deletion_requested_at) ON customers TO {{fn_role:keys}};
GRANT UPDATE (created_at) ON customers TO {{fn_role:keys}};
