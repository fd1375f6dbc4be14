-- Upstream credentials (write-only secrets) and their bindings; see docs/credentials.md.
-- Only ciphertext is stored: the secret fields are sealed with a per-secret AES-256-GCM data
-- key, itself wrapped by a key-encryption key (KEK) that never reaches the database. `config`
-- holds the non-secret fields only. A revoked credential keeps its metadata and loses its
-- sealed parts (kek_id, wrapped_dek, nonce, ciphertext are set to NULL).
CREATE TABLE credentials (
    id            uuid        PRIMARY KEY,
    tenant        text        NOT NULL,
    environment   text        NOT NULL,
    name          text        NOT NULL,
    kind          text        NOT NULL CHECK (kind IN ('bearer', 'headers', 'query', 'stdio_env',
                                                       'oauth_client_credentials', 'oauth_token_exchange')),
    config        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    fingerprint   text        NOT NULL,
    kek_id        text,
    wrapped_dek   bytea,
    nonce         bytea,
    ciphertext    bytea,
    created_by    text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    rotated_at    timestamptz,
    last_used_at  timestamptz,
    revoked_at    timestamptz,
    UNIQUE (tenant, environment, id),
    CHECK (CASE WHEN revoked_at IS NULL
                THEN num_nonnulls(kek_id, wrapped_dek, nonce, ciphertext) = 4
                ELSE num_nonnulls(kek_id, wrapped_dek, nonce, ciphertext) = 0 END)
);
-- A name is unique among the live credentials of a scope (a revoked one frees its name).
CREATE UNIQUE INDEX credentials_live_name ON credentials (tenant, environment, name) WHERE revoked_at IS NULL;
-- Re-wrapping looks for the rows not yet under the current KEK.
CREATE INDEX credentials_kek ON credentials (kek_id) WHERE kek_id IS NOT NULL;

CREATE TABLE credential_bindings (
    id             uuid        PRIMARY KEY,
    tenant         text        NOT NULL,
    environment    text        NOT NULL,
    server         text        NOT NULL,
    subject_kind   text        NOT NULL CHECK (subject_kind IN ('user', 'role', 'client', 'everyone')),
    subject_value  text,
    credential_id  uuid        NOT NULL,
    created_by     text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((subject_kind = 'everyone') = (subject_value IS NULL)),
    FOREIGN KEY (tenant, environment, server)
        REFERENCES mcp_servers (tenant, environment, name) ON DELETE CASCADE,
    FOREIGN KEY (tenant, environment, credential_id)
        REFERENCES credentials (tenant, environment, id) ON DELETE CASCADE
);
-- One binding per server and subject selector.
CREATE UNIQUE INDEX credential_bindings_selector
    ON credential_bindings (tenant, environment, server, subject_kind, (coalesce(subject_value, '')));
CREATE INDEX credential_bindings_credential ON credential_bindings (credential_id);
