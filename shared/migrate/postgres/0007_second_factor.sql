-- Second factors (shared/mfa): authenticator apps (TOTP), WebAuthn
-- credentials (security keys, passkeys), recovery codes; the challenges of
-- sign-ins and re-auths that wait for their second factor; and the counters
-- that limit code guessing per user and per client address. Everything of a
-- user goes with the user (ON DELETE CASCADE).

-- The assurance level of the authentication that made a session: 1 for a
-- password or Google alone, 2 with a second factor. Sensitive actions of a
-- user who has a second factor need 2 (shared/stepup).
ALTER TABLE sessions ADD COLUMN aal smallint NOT NULL DEFAULT 1 CHECK (aal IN (1, 2));

-- One authenticator app per user. The seed is sealed with AES-256-GCM under
-- a key derived from GUARDIAN_MFA_SECRET; confirmed_at stays NULL until a
-- first code proves the app holds it. last_step is the RFC 6238 time step
-- of the last accepted code: codes of that step or older are refused, so a
-- code is accepted once.
CREATE TABLE mfa_totp (
    user_id        uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    secret_sealed  bytea NOT NULL CHECK (length(secret_sealed) BETWEEN 29 AND 256),
    created_at     timestamptz NOT NULL DEFAULT now(),
    confirmed_at   timestamptz,
    last_step      bigint,
    last_used_at   timestamptz
);

-- Security keys and passkeys, several per user. credential is what
-- go-webauthn keeps of one (public key, flags, AAGUID, signature counter):
-- nothing secret.
CREATE TABLE webauthn_credentials (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id        uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    credential_id  bytea NOT NULL UNIQUE CHECK (length(credential_id) BETWEEN 1 AND 1023),
    name           text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    credential     jsonb NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    last_used_at   timestamptz
);
CREATE INDEX webauthn_credentials_user_idx ON webauthn_credentials (user_id);

-- Single-use recovery codes, kept as HMAC-SHA256 under a key derived from
-- GUARDIAN_MFA_SECRET; the codes themselves are shown once.
CREATE TABLE mfa_recovery_codes (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash   bytea NOT NULL CHECK (length(code_hash) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    used_at     timestamptz,
    UNIQUE (user_id, code_hash)
);

-- A sign-in (purpose login) or re-auth (reauth) whose first factor was
-- right and that waits for the second, or a WebAuthn registration in
-- progress (register). The client holds an opaque random token; only its
-- SHA-256 is kept. A challenge is deleted when it is used, and is worth
-- nothing after expires_at.
CREATE TABLE mfa_challenges (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    token_hash   bytea NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    customer_id  uuid NOT NULL REFERENCES customers (id) ON DELETE CASCADE,
    purpose      text NOT NULL CHECK (purpose IN ('login', 'reauth', 'register')),
    -- reauth and register: the session it belongs to; login: the session a
    -- completed sign-in replaces, if any.
    session_id   uuid,
    -- How the first factor was given.
    method       text NOT NULL CHECK (method IN ('password', 'google')),
    -- Whether the session it leads to counts as re-authenticated.
    reauthed     boolean NOT NULL DEFAULT false,
    -- go-webauthn's SessionData of the ceremony begun for it, if any.
    webauthn     jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);
CREATE INDEX mfa_challenges_expires_idx ON mfa_challenges (expires_at);

-- Second-factor attempts per user and per client address, in fixed
-- windows, shared by every instance of every function.
CREATE TABLE mfa_attempts (
    scope         text NOT NULL CHECK (scope IN ('user', 'ip')),
    subject       text NOT NULL CHECK (length(subject) BETWEEN 1 AND 64),
    window_start  timestamptz NOT NULL,
    attempts      integer NOT NULL CHECK (attempts >= 0),
    PRIMARY KEY (scope, subject)
);

GRANT SELECT, INSERT, UPDATE, DELETE ON mfa_totp, webauthn_credentials, mfa_recovery_codes, mfa_challenges, mfa_attempts TO {{app_role}};
