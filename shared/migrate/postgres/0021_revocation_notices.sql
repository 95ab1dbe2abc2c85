-- The notices of keys revoked because GitHub found them public wait here
-- until they are delivered. They were held in the secretscan function's
-- memory, so one in delivery when the function stopped (a crash, a
-- deploy, a relay down for longer than the retries) was never sent,
-- although the posture promises the customer is told.
--
-- One row per delivery: an e-mail to one admin, or one call of one of the
-- operator's webhooks. The transaction that revokes the keys writes them,
-- so a revocation is never committed without its notices. secretscan
-- delivers and deletes them (functions/secretscan outbox.go); a row that
-- cannot be delivered is given up after a day. They go with the customer.
CREATE TABLE revocation_notices (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id     uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    channel         text NOT NULL CHECK (channel IN ('email', 'webhook')),
    target          text NOT NULL,             -- the address, or the webhook URL
    subject         text NOT NULL DEFAULT '',  -- e-mail only
    body            text NOT NULL,             -- the e-mail's text, or the webhook's JSON
    created_at      timestamptz NOT NULL DEFAULT now(),
    attempts        integer NOT NULL DEFAULT 0,
    -- When the row is next due. Taking a row moves this past the delivery
    -- attempt (a lease): a process that dies mid-delivery leaves the row
    -- to be taken again once it passes.
    next_attempt_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX revocation_notices_due ON revocation_notices (next_attempt_at);
CREATE INDEX revocation_notices_customer ON revocation_notices (customer_id);

GRANT SELECT, INSERT, DELETE ON revocation_notices TO {{fn_role:secretscan}};
GRANT UPDATE (attempts, next_attempt_at) ON revocation_notices TO {{fn_role:secretscan}};
