-- The three audit tables become natively partitioned by time (RANGE on "timestamp"), and every
-- record carries a hash chain link (docs/audit-integrity.md): chain_seq (1, 2, ... per tenant,
-- environment, stream and partition, in insertion order) and chain_hash = SHA-256(previous
-- link || canonical record bytes). Rows moved here from the unpartitioned tables get their links
-- from the control plane on start (gateway.db.audit_chain.seal_unchained): the canonical bytes are
-- defined in Python, so SQL does not compute them. OPA's JSON payloads move from jsonb to json,
-- which keeps the stored text byte for byte (the chain commits to that text).

-- Physical partitions the control plane created, with their bounds (the partition of a
-- timestamp, neighbours when the interval changes, retention).
CREATE TABLE audit_partitions (
    name        text        PRIMARY KEY,
    stream      text        NOT NULL CHECK (stream IN ('decisions', 'opa_logs', 'control_plane')),
    lower_bound timestamptz NOT NULL,
    upper_bound timestamptz NOT NULL CHECK (upper_bound > lower_bound),
    created_at  timestamptz NOT NULL DEFAULT now(),
    dropped_at  timestamptz,
    UNIQUE (stream, lower_bound)
);

-- The head of each chain: the last link's sequence number and hash; dropped_at is set when
-- retention dropped the partition (the final head stays, and is signed into checkpoints).
CREATE TABLE audit_chain_heads (
    tenant      text        NOT NULL,
    environment text        NOT NULL,
    stream      text        NOT NULL,
    partition   text        NOT NULL,
    seq         bigint      NOT NULL,
    hash        bytea       NOT NULL,
    record_key  text,
    record_ts   timestamptz,
    dropped_at  timestamptz,
    PRIMARY KEY (tenant, environment, stream, partition)
);
-- (record_key, record_ts): the last record's key (decision id, or the trail's id) and timestamp,
-- so a checkpoint can find the record it signed through the primary key.

-- The scopes whose rows this migration moves (below) and that wait for their links: each
-- scope's control plane links them on its next start and deletes its row. No other unlinked
-- row is ever linked (one is reported as a break).
CREATE TABLE audit_seal_pending (
    tenant      text NOT NULL,
    environment text NOT NULL,
    PRIMARY KEY (tenant, environment)
);
INSERT INTO audit_seal_pending
SELECT tenant, environment FROM audit_decisions
UNION SELECT tenant, environment FROM opa_decision_logs
UNION SELECT tenant, environment FROM control_plane_audit;

-- Signed checkpoints: the exact body bytes (canonical JSON text) and an Ed25519 signature.
CREATE TABLE audit_checkpoints (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant      text        NOT NULL,
    environment text        NOT NULL,
    created_at  timestamptz NOT NULL,
    body        text        NOT NULL,
    signature   bytea       NOT NULL,
    key_id      text        NOT NULL
);
CREATE INDEX audit_checkpoints_scope ON audit_checkpoints (tenant, environment, id DESC);

-- Creates the daily partitions that hold an unpartitioned table's rows and registers them.
CREATE FUNCTION pg_temp.audit_legacy_partitions(parent text, legacy text, stream text, ts_expr text)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    d date;
    lower_ts timestamptz;
    name text;
BEGIN
    FOR d IN EXECUTE format('SELECT DISTINCT ((%s) AT TIME ZONE ''UTC'')::date FROM %I', ts_expr, legacy) LOOP
        lower_ts := d::timestamp AT TIME ZONE 'UTC';
        name := parent || '_p' || to_char(d, 'YYYYMMDD');
        EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
                       name, parent, lower_ts, lower_ts + interval '1 day');
        INSERT INTO audit_partitions (name, stream, lower_bound, upper_bound)
        VALUES (name, stream, lower_ts, lower_ts + interval '1 day');
    END LOOP;
END
$$;

-- Runtime decision events.
ALTER TABLE audit_decisions RENAME TO audit_decisions_unpartitioned;
ALTER TABLE audit_decisions_unpartitioned RENAME CONSTRAINT audit_decisions_pkey TO audit_decisions_unpartitioned_pkey;
DROP INDEX audit_decisions_scope_time;
CREATE TABLE audit_decisions (
    decision_id         text             NOT NULL,
    tenant              text             NOT NULL,
    environment         text             NOT NULL,
    "timestamp"         timestamptz      NOT NULL,
    dataplane_id        text,
    subject             text,
    client_id           text,
    action              text,
    server              text,
    tool                text,
    allowed             boolean          NOT NULL,
    reasons             jsonb            NOT NULL DEFAULT '[]'::jsonb,
    policy_revision     text,
    projection_version  bigint,
    latency_ms          double precision,
    status              text,
    error_category      text,
    arguments_sha256    text,
    result_sha256       text,
    session_id          text,
    protocol_version    text,
    received_at         timestamptz      NOT NULL DEFAULT now(),
    chain_seq           bigint,
    chain_hash          bytea,
    PRIMARY KEY (decision_id, "timestamp")
) PARTITION BY RANGE ("timestamp");
CREATE INDEX audit_decisions_scope_time ON audit_decisions (tenant, environment, "timestamp" DESC, decision_id DESC);
-- Rows without a link (moved here below, linked on the next start): an index that stays empty.
CREATE INDEX audit_decisions_unsealed ON audit_decisions (tenant, environment) WHERE chain_seq IS NULL;
SELECT pg_temp.audit_legacy_partitions('audit_decisions', 'audit_decisions_unpartitioned', 'decisions', '"timestamp"');
INSERT INTO audit_decisions (decision_id, tenant, environment, "timestamp", dataplane_id, subject, client_id, action,
    server, tool, allowed, reasons, policy_revision, projection_version, latency_ms, status, error_category,
    arguments_sha256, result_sha256, session_id, protocol_version, received_at)
SELECT decision_id, tenant, environment, "timestamp", dataplane_id, subject, client_id, action, server, tool, allowed,
    reasons, policy_revision, projection_version, latency_ms, status, error_category, arguments_sha256, result_sha256,
    session_id, protocol_version, received_at
FROM audit_decisions_unpartitioned;
DROP TABLE audit_decisions_unpartitioned;

-- OPA decision-log events ("timestamp" is the decision's, or the receipt time when OPA sent none).
ALTER TABLE opa_decision_logs RENAME TO opa_decision_logs_unpartitioned;
ALTER TABLE opa_decision_logs_unpartitioned RENAME CONSTRAINT opa_decision_logs_pkey TO opa_decision_logs_unpartitioned_pkey;
DROP INDEX opa_decision_logs_scope_time;
CREATE TABLE opa_decision_logs (
    decision_id  text        NOT NULL,
    tenant       text        NOT NULL,
    environment  text        NOT NULL,
    opa_id       text,
    path         text,
    revision     text,
    "timestamp"  timestamptz NOT NULL,
    input        json,
    result       json,
    erased       json,
    masked       json,
    received_at  timestamptz NOT NULL DEFAULT now(),
    chain_seq    bigint,
    chain_hash   bytea,
    PRIMARY KEY (decision_id, "timestamp")
) PARTITION BY RANGE ("timestamp");
CREATE INDEX opa_decision_logs_scope_time ON opa_decision_logs (tenant, environment, "timestamp" DESC, decision_id DESC);
CREATE INDEX opa_decision_logs_unsealed ON opa_decision_logs (tenant, environment) WHERE chain_seq IS NULL;
SELECT pg_temp.audit_legacy_partitions('opa_decision_logs', 'opa_decision_logs_unpartitioned', 'opa_logs',
                                       'coalesce("timestamp", received_at)');
INSERT INTO opa_decision_logs (decision_id, tenant, environment, opa_id, path, revision, "timestamp", input, result,
    erased, masked, received_at)
SELECT decision_id, tenant, environment, opa_id, path, revision, coalesce("timestamp", received_at), input::json,
    result::json, erased::json, masked::json, received_at
FROM opa_decision_logs_unpartitioned;
DROP TABLE opa_decision_logs_unpartitioned;

-- The control-plane trail (its identity becomes a plain sequence: partitioned tables of
-- PostgreSQL 15 have no identity columns).
ALTER TABLE control_plane_audit RENAME TO control_plane_audit_unpartitioned;
ALTER TABLE control_plane_audit_unpartitioned RENAME CONSTRAINT control_plane_audit_pkey TO control_plane_audit_unpartitioned_pkey;
DROP INDEX control_plane_audit_scope_time;
DROP INDEX control_plane_audit_actor;
CREATE SEQUENCE control_plane_audit_record_id_seq AS bigint;
CREATE TABLE control_plane_audit (
    id            bigint      NOT NULL DEFAULT nextval('control_plane_audit_record_id_seq'),
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
    after_sha256  text,
    chain_seq     bigint,
    chain_hash    bytea,
    PRIMARY KEY (id, "timestamp")
) PARTITION BY RANGE ("timestamp");
ALTER SEQUENCE control_plane_audit_record_id_seq OWNED BY control_plane_audit.id;
CREATE INDEX control_plane_audit_scope_time ON control_plane_audit (tenant, environment, "timestamp" DESC);
CREATE INDEX control_plane_audit_actor ON control_plane_audit (tenant, environment, actor, "timestamp" DESC);
CREATE INDEX control_plane_audit_unsealed ON control_plane_audit (tenant, environment) WHERE chain_seq IS NULL;
SELECT pg_temp.audit_legacy_partitions('control_plane_audit', 'control_plane_audit_unpartitioned', 'control_plane',
                                       '"timestamp"');
INSERT INTO control_plane_audit (id, tenant, environment, "timestamp", request_id, actor, actor_issuer, roles, action,
    method, path, decision_id, allowed, reasons, status, resource_kind, resource_id, comment, before_sha256,
    after_sha256)
SELECT id, tenant, environment, "timestamp", request_id, actor, actor_issuer, roles, action, method, path,
    decision_id, allowed, reasons, status, resource_kind, resource_id, comment, before_sha256, after_sha256
FROM control_plane_audit_unpartitioned;
SELECT setval('control_plane_audit_record_id_seq', coalesce((SELECT max(id) FROM control_plane_audit_unpartitioned), 0) + 1,
              false);
DROP TABLE control_plane_audit_unpartitioned;
