-- The reviewers' trail (docs/audit.md): the indexes behind GET /v1/audit/decisions, /v1/audit/stats
-- and /v1/audit/export. Created on the parent table, so they cascade to every partition (0013) and
-- to partitions created later. Idempotent (IF NOT EXISTS / OR REPLACE): deploy/bench/audit_bench.py
-- re-runs it around its bulk fill.
--
-- Few on purpose: every index is paid on every ingested event. Measured (docs/audit.md): 17 indexes
-- (one per filter and a trigram GIN index) brought ingest on one connection from about 20,000 to
-- about 5,000 events/s. So an index exists only where a reviewer's query would otherwise read whole
-- partitions: the time order (every page, every aggregate), one subject's decisions, and the
-- denials. Every other filter reads the time index newest first and filters: cheap for frequent
-- values and bounded by since/until (daily partitions are pruned), which the docs tell reviewers
-- to give for rare values and for free text.

-- The reasons array as one text, elements joined by a newline (a `reason` filter never holds a
-- newline, so a match never spans two elements). Not an array: the empty text.
CREATE OR REPLACE FUNCTION audit_reasons_text(reasons jsonb) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN jsonb_typeof(reasons) = 'array'
                THEN (SELECT coalesce(string_agg(r, E'\n'), '') FROM jsonb_array_elements_text(reasons) AS r)
                ELSE '' END
$$;

-- The time order of every page, covering the per-hour outcomes and the latency percentiles
-- by server (index-only): replaces 0013's plain time index.
DROP INDEX IF EXISTS audit_decisions_scope_time;
CREATE INDEX IF NOT EXISTS audit_decisions_time
    ON audit_decisions (tenant, environment, "timestamp" DESC, decision_id DESC)
    INCLUDE (allowed, status, server, latency_ms);
-- One subject's decisions, in order, whatever the subject's share of the traffic.
CREATE INDEX IF NOT EXISTS audit_decisions_subject
    ON audit_decisions (tenant, environment, subject, "timestamp" DESC, decision_id DESC);
-- The denials (a small share of the traffic, so a small index): pages of denials, top denied
-- tools and subjects (index-only).
CREATE INDEX IF NOT EXISTS audit_decisions_denied
    ON audit_decisions (tenant, environment, "timestamp" DESC, decision_id DESC)
    INCLUDE (server, tool, subject, status) WHERE NOT allowed;

-- The control-plane trail's filters (its time index and actor index are in 0013); low volume.
CREATE INDEX IF NOT EXISTS control_plane_audit_action
    ON control_plane_audit (tenant, environment, action, "timestamp" DESC, id DESC);
CREATE INDEX IF NOT EXISTS control_plane_audit_resource
    ON control_plane_audit (tenant, environment, resource_kind, resource_id, "timestamp" DESC, id DESC)
    WHERE resource_kind IS NOT NULL;
