-- Each customer gets a random salt for its audit rows' customer_digest.
-- An unsalted digest (0013) is a SHA-256 of the customer id, so anyone who
-- knew a deleted customer's id could find its rows again by recomputing
-- it: nulling customer_id on deletion would hide nothing. The edge now
-- hashes the id with the customer's own salt (shared/audit
-- SaltedCustomerDigest), and the salt is deleted with the customer.
--
-- 32 bytes from two version-4 UUIDs: gen_random_uuid() draws from
-- PostgreSQL's strong random source, 244 random bits in all. Adding the
-- column gives every existing customer its own salt.
ALTER TABLE customers ADD COLUMN audit_salt bytea NOT NULL
    DEFAULT (uuid_send(gen_random_uuid()) || uuid_send(gen_random_uuid()));

-- Verify recomputes the digests of existing customers.
GRANT SELECT (id, audit_salt) ON customers TO {{fn_role:audit}};
