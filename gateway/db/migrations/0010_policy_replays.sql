-- Decision replays (issue 8): a candidate policy version re-evaluated by a scratch OPA against the
-- OPA decision logs of this scope (gateway.controlplane.replay). One row per replay; it survives a
-- restart. At most one replay runs per scope (a second POST is 409). A running row whose heartbeat
-- is older than the stale bound is marked failed when replays are read or started: the control
-- plane that ran it died.
CREATE TABLE policy_replays (
    id                uuid        PRIMARY KEY,
    tenant            text        NOT NULL,
    environment       text        NOT NULL,
    policy_version    bigint      NOT NULL REFERENCES policy_versions (version),
    -- The policy version active when the replay started (null before any approval).
    baseline_version  bigint,
    status            text        NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'done', 'failed')),
    since             timestamptz,
    until             timestamptz,
    max_inputs        integer     NOT NULL CHECK (max_inputs > 0),
    created_by        text        NOT NULL,
    -- The control-plane process running it (host:pid:nonce).
    owner             text        NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now(),
    heartbeat_at      timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz,
    total             integer,
    done              integer     NOT NULL DEFAULT 0,
    summary           jsonb,
    error             text
);
CREATE INDEX policy_replays_version ON policy_replays (tenant, environment, policy_version, created_at DESC);
CREATE UNIQUE INDEX policy_replays_one_running ON policy_replays (tenant, environment) WHERE status = 'running';

-- Replay reads a scope's decision logs newest first, page by page (keyset on timestamp, id).
CREATE INDEX opa_decision_logs_scope_time ON opa_decision_logs (tenant, environment, "timestamp" DESC, decision_id DESC);
