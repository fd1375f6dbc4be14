-- Admin identity, four-eyes and the control-plane change trail (docs/admin-identity.md).

-- Who wrote and who approved each policy version and registry record (four-eyes).
ALTER TABLE policy_versions ADD COLUMN IF NOT EXISTS created_by text NOT NULL DEFAULT 'admin';
ALTER TABLE policy_versions ADD COLUMN IF NOT EXISTS approved_by text;
ALTER TABLE policy_versions ADD COLUMN IF NOT EXISTS approval_comment text;
ALTER TABLE mcp_servers ADD COLUMN IF NOT EXISTS registered_by text NOT NULL DEFAULT 'admin';
ALTER TABLE mcp_servers ADD COLUMN IF NOT EXISTS approved_by text;
ALTER TABLE mcp_servers ADD COLUMN IF NOT EXISTS approval_comment text;

-- Roles granted by the control plane, in addition to those of an admin JWT's roles claim.
CREATE TABLE admin_role_grants (
    id          uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    tenant      text        NOT NULL,
    environment text        NOT NULL,
    issuer      text        NOT NULL,
    subject     text        NOT NULL,
    role        text        NOT NULL CHECK (role IN ('admin', 'policy_author', 'approver', 'registry_editor',
                                                      'auditor', 'operator')),
    granted_by  text        NOT NULL,
    comment     text        NOT NULL,
    granted_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant, environment, issuer, subject, role)
);

-- Every admin request: who, what, the control-plane policy's decision, the outcome; for a
-- change also the resource, the comment and SHA-256 of its canonical JSON before and after.
CREATE TABLE control_plane_audit (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant        text        NOT NULL,
    environment   text        NOT NULL,
    "timestamp"   timestamptz NOT NULL DEFAULT now(),
    request_id    text,
    actor         text        NOT NULL,
    actor_issuer  text        NOT NULL,
    roles         text[]      NOT NULL,
    action        text        NOT NULL,
    method        text        NOT NULL,
    path          text        NOT NULL,
    decision_id   text,
    allowed       boolean     NOT NULL,
    reasons       jsonb       NOT NULL DEFAULT '[]'::jsonb,
    status        integer     NOT NULL,
    resource_kind text,
    resource_id   text,
    comment       text,
    before_sha256 text,
    after_sha256  text
);
CREATE INDEX control_plane_audit_scope_time ON control_plane_audit (tenant, environment, "timestamp" DESC);
CREATE INDEX control_plane_audit_actor ON control_plane_audit (tenant, environment, actor, "timestamp" DESC);
