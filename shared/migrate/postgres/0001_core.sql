-- Core data model: customers own users, sessions, servers and API keys; all
-- of it is hard-deleted with the customer (ON DELETE CASCADE), except the
-- audit log, which outlives the customer (see 0002).

CREATE TABLE customers (
    id                    uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name                  text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    plan                  text NOT NULL DEFAULT 'free' CHECK (plan IN ('free', 'pro')),
    created_at            timestamptz NOT NULL DEFAULT now(),
    -- Set when the customer asks for deletion; the purge job removes the
    -- customer once delete_after has passed (at most 30 days later).
    deletion_requested_at timestamptz,
    delete_after          timestamptz,
    CHECK ((deletion_requested_at IS NULL) = (delete_after IS NULL))
);

CREATE TABLE users (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id     uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    email           text NOT NULL CHECK (email = lower(email) AND length(email) BETWEEN 3 AND 320),
    -- bcrypt hash; NULL for users who only sign in with Google.
    password_hash   text,
    google_subject  text UNIQUE,
    role            text NOT NULL DEFAULT 'admin' CHECK (role IN ('admin', 'member')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_email_key ON users (email);
CREATE INDEX users_customer_idx ON users (customer_id);

CREATE TABLE sessions (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    customer_id   uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    -- Last time the password was verified on this session (step-up).
    reauth_at     timestamptz,
    revoked_at    timestamptz,
    source_ip     inet,
    user_agent    text
);
CREATE INDEX sessions_user_idx ON sessions (user_id) WHERE revoked_at IS NULL;
CREATE INDEX sessions_customer_idx ON sessions (customer_id);

CREATE TABLE servers (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id  uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    hostname     text NOT NULL CHECK (length(hostname) BETWEEN 1 AND 253),
    -- /etc/machine-id of the host; enrolling the same machine again returns
    -- the same server.
    machine_id   text CHECK (length(machine_id) BETWEEN 1 AND 128),
    tags         text[] NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (customer_id, machine_id)
);
CREATE INDEX servers_customer_idx ON servers (customer_id);

CREATE TABLE api_keys (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    customer_id     uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    kind            text NOT NULL CHECK (kind IN ('account', 'collector')),
    -- Account keys carry a scope; collector keys are bound to one server.
    scope           text CHECK (scope IN ('read', 'write', 'admin')),
    server_id       uuid REFERENCES servers (id) ON DELETE CASCADE,
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    -- HMAC-SHA256(pepper, key): the key itself is never stored.
    key_hash        bytea NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    last4           text NOT NULL CHECK (length(last4) = 4),
    created_by      uuid REFERENCES users (id) ON DELETE SET NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    last_used_at    timestamptz,
    revoked_at      timestamptz,
    revoked_reason  text,
    CHECK ((kind = 'account' AND scope IS NOT NULL AND server_id IS NULL)
        OR (kind = 'collector' AND scope IS NULL AND server_id IS NOT NULL))
);
CREATE INDEX api_keys_customer_idx ON api_keys (customer_id);
CREATE INDEX api_keys_server_idx ON api_keys (server_id) WHERE server_id IS NOT NULL;
