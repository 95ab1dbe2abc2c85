-- The key list reads, per key, the key that replaced it (rotated_from),
-- and deleting a key sets its successors' rotated_from to NULL: without
-- an index each of those scanned every customer's keys, so one account
-- that enrolled servers by the hundred thousand slowed every customer's
-- key list and deletions (25 ms per listed key at 500,000 keys).
CREATE INDEX api_keys_rotated_from_idx ON api_keys (rotated_from) WHERE rotated_from IS NOT NULL;
