-- A ClickHouse set restored after data loss (docs/deployment.md) is up to
-- 30 days old, and brings back the rows of the accounts and servers
-- deleted since. account-purge worked only from what was still to purge:
-- a purged account's row in customers and a deleted server's record were
-- gone, so nothing deleted those rows again, and every night's set copied
-- them anew. It now deletes them again whenever they reappear, for as
-- long as a set can hold them, from what PostgreSQL remembers:
--
--   * deleted_customers, kept 30 days (forget_deleted_customers, 0042):
--     account-purge reads its ids;
--   * deleted_servers, whose records are now kept 31 days after the
--     deletion, marked purged_at once the rows were first found gone.
ALTER TABLE deleted_servers ADD COLUMN purged_at timestamptz;

GRANT SELECT (customer_id, deleted_at) ON deleted_customers TO {{fn_role:account_purge}};
GRANT SELECT (purged_at), UPDATE (purged_at) ON deleted_servers TO {{fn_role:account_purge}};
