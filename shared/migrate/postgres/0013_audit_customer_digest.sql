-- customer_id stays outside an audit row's hash, because deleting a
-- customer nulls it and the chain must survive that. But then a row could
-- be moved to another customer (from one customer's log into another's)
-- without verify noticing. customer_digest, a SHA-256 of the customer id
-- the row was written for (of "" for none), is inside the hash and is
-- never changed: verify checks that a row's customer_id, when set, is the
-- one the digest names, and that a row whose customer_id was nulled does
-- not belong to a customer that still exists. Rows written before this
-- migration have no digest and are hashed as before.
ALTER TABLE api_audit_log ADD COLUMN customer_digest bytea;

-- Verify runs as the audit reader's role, and needs to know which
-- customers exist: their ids, nothing else.
GRANT SELECT (id) ON customers TO {{fn_role:audit}};
