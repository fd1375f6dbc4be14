-- API keys for machine agents (issue 8): an alternative to JWTs on the data plane. Only an
-- argon2id hash of the whole key is stored (PHC string), never the key; the key is shown once
-- at creation. Revoked keys keep their row (metadata, who revoked, when).
CREATE TABLE api_keys (
    id          text        PRIMARY KEY CHECK (id ~ '^[0-9a-f]{16}$'),
    tenant      text        NOT NULL,
    environment text        NOT NULL,
    subject     text        NOT NULL CHECK (length(btrim(subject)) > 0),
    roles       jsonb       NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(roles) = 'array'),
    description text        NOT NULL DEFAULT '',
    secret_hash text        NOT NULL CHECK (secret_hash LIKE '$argon2id$%'),
    created_by  text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz,
    revoked_by  text
);
CREATE INDEX api_keys_scope ON api_keys (tenant, environment, created_at, id);
