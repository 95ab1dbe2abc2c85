-- The edge refuses to start against a database its migrations have not
-- reached (caddymodules/guardian): it reads which migrations are applied.
GRANT SELECT ON schema_migrations TO {{app_role}};
