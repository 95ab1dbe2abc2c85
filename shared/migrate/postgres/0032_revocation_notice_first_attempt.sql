-- A revocation notice is retried for a day from its first attempt, not
-- from its writing: an e-mail written by a process without a mail relay
-- waits, untried, for one that has a relay, and then deserves its day of
-- retries rather than one try.
ALTER TABLE revocation_notices ADD COLUMN first_attempt_at timestamptz;
GRANT UPDATE (first_attempt_at) ON revocation_notices TO {{fn_role:secretscan}};
