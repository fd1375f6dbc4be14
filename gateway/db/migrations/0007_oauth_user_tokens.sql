-- Per-user OAuth 2.1 tokens (credential kind oauth_authorization_code); see docs/credentials.md
-- "Per-user OAuth (authorization code + PKCE)". Tokens and PKCE verifiers are sealed with the
-- credentials' envelope scheme (AES-256-GCM, a data key per secret wrapped by the KEK), with
-- associated data naming the credential and the subject, so no row can be moved to another.
ALTER TABLE credentials DROP CONSTRAINT IF EXISTS credentials_kind_check;
ALTER TABLE credentials ADD CONSTRAINT credentials_kind_check
    CHECK (kind IN ('bearer', 'headers', 'query', 'stdio_env', 'oauth_client_credentials',
                    'oauth_token_exchange', 'oauth_authorization_code'));

-- One user's tokens for one credential: the refresh token (and the last access token) sealed
-- together; access_expires_at in clear so a stale one is refreshed without decrypting first.
CREATE TABLE credential_user_tokens (
    tenant            text        NOT NULL,
    environment       text        NOT NULL,
    credential_id     uuid        NOT NULL,
    subject_issuer    text        NOT NULL,
    subject_sub       text        NOT NULL,
    issuer            text        NOT NULL,
    token_endpoint    text        NOT NULL,
    kek_id            text        NOT NULL,
    wrapped_dek       bytea       NOT NULL,
    nonce             bytea       NOT NULL,
    ciphertext        bytea       NOT NULL,
    access_expires_at timestamptz,
    scope             text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, environment, credential_id, subject_issuer, subject_sub),
    FOREIGN KEY (tenant, environment, credential_id)
        REFERENCES credentials (tenant, environment, id) ON DELETE CASCADE
);

-- A pending connect: the handle is the connect URL's bearer (10 minutes, single use); state
-- and the sealed PKCE verifier are set when the user opens it.
CREATE TABLE oauth_connects (
    handle           text        PRIMARY KEY,
    tenant           text        NOT NULL,
    environment      text        NOT NULL,
    credential_id    uuid        NOT NULL,
    server           text        NOT NULL,
    subject_issuer   text        NOT NULL,
    subject_sub      text        NOT NULL,
    state            text        UNIQUE,
    issuer           text,
    token_endpoint   text,
    kek_id           text,
    wrapped_dek      bytea,
    nonce            bytea,
    ciphertext       bytea,
    redirect_uri     text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    expires_at       timestamptz NOT NULL,
    opened_at        timestamptz,
    used_at          timestamptz,
    FOREIGN KEY (tenant, environment, credential_id)
        REFERENCES credentials (tenant, environment, id) ON DELETE CASCADE
);
CREATE INDEX oauth_connects_credential ON oauth_connects (tenant, environment, credential_id);
CREATE INDEX oauth_connects_expiry ON oauth_connects (expires_at);

-- Clients the gateway registered at an authorization server (RFC 7591), per credential and
-- issuer; a client_secret, when the server issued one, is sealed.
CREATE TABLE credential_oauth_clients (
    tenant         text        NOT NULL,
    environment    text        NOT NULL,
    credential_id  uuid        NOT NULL,
    issuer         text        NOT NULL,
    client_id      text        NOT NULL,
    auth_method    text        NOT NULL,
    redirect_uri   text        NOT NULL,
    kek_id         text,
    wrapped_dek    bytea,
    nonce          bytea,
    ciphertext     bytea,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, environment, credential_id, issuer),
    CHECK (num_nonnulls(kek_id, wrapped_dek, nonce, ciphertext) IN (0, 4)),
    FOREIGN KEY (tenant, environment, credential_id)
        REFERENCES credentials (tenant, environment, id) ON DELETE CASCADE
);
