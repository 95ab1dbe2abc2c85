-- Time series live in ClickHouse. Columns use only types that ClickHouse
-- 18.16 has (no DateTime64, LowCardinality, Map or JSON); retention is
-- applied by TTL where the server supports it (see ttl.go) and by the
-- retention-sweep job everywhere. Daily partitions let the sweep drop whole
-- days cheaply.

CREATE TABLE IF NOT EXISTS {{db}}.snapshots (
    customer_id        String,
    server_id          String,
    ts                 DateTime,
    received_at        DateTime,
    collector_version  String,
    -- 90 on Pro, 7 on Free, fixed when the snapshot is stored.
    retention_days     UInt16,
    payload            String
) ENGINE = MergeTree
PARTITION BY toYYYYMMDD(ts)
ORDER BY (customer_id, server_id, ts);

CREATE TABLE IF NOT EXISTS {{db}}.alert_history (
    customer_id  String,
    server_id    String,
    ts           DateTime,
    alert_id     String,
    rule         String,
    severity     String,
    state        String,
    details      String
) ENGINE = MergeTree
PARTITION BY toYYYYMMDD(ts)
ORDER BY (customer_id, server_id, ts);

CREATE TABLE IF NOT EXISTS {{db}}.analyses (
    customer_id  String,
    server_id    String,
    ts           DateTime,
    kind         String,
    body         String
) ENGINE = MergeTree
PARTITION BY toYYYYMMDD(ts)
ORDER BY (customer_id, server_id, ts);

CREATE TABLE IF NOT EXISTS {{db}}.notifications (
    customer_id  String,
    ts           DateTime,
    channel      String,
    kind         String,
    status       String,
    body         String
) ENGINE = MergeTree
PARTITION BY toYYYYMMDD(ts)
ORDER BY (customer_id, ts);
