-- A session starts under a share lock on its customer row and not for an
-- account scheduled for deletion (shared/session Start, shared/account):
-- a sign-in that read the account as open before a deletion committed
-- would otherwise add a session the deletion never ended. The functions
-- that start sessions read the row already; FOR SHARE also needs an
-- UPDATE grant on some column, created_at, as 0009 and 0012 give the
-- servers and keys roles.
GRANT UPDATE (created_at) ON customers TO {{fn_role:auth}}, {{fn_role:oidc}};
