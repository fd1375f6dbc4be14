-- Every resolution of a credential by a data plane (the credential broker), audited: who asked,
-- for whom, through which binding, and the outcome. Never any secret material.
CREATE TABLE credential_uses (
    id             bigserial   PRIMARY KEY,
    tenant         text        NOT NULL,
    environment    text        NOT NULL,
    credential_id  uuid        NOT NULL,
    binding_id     uuid,
    server         text        NOT NULL,
    dataplane_id   text        NOT NULL,
    subject_issuer text        NOT NULL,
    subject_sub    text        NOT NULL,
    outcome        text        NOT NULL CHECK (outcome IN ('resolved', 'refused', 'failed')),
    error_category text,
    at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX credential_uses_credential ON credential_uses (tenant, environment, credential_id, at DESC);

-- A server that requires a credential: every call to it needs one of its bindings, never goes
-- unauthenticated. Set at registration, and by the first binding to the server; revoking or
-- unbinding its credentials leaves it set (its callers are refused, not let through bare).
ALTER TABLE mcp_servers ADD COLUMN requires_credential boolean NOT NULL DEFAULT false;
