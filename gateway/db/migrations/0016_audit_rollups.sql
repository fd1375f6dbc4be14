-- Hourly rollups of the runtime trail (docs/audit.md "Stats"): GET /v1/audit/stats reads them
-- for the whole UTC hours of its range when no filter other than since/until/server is given,
-- instead of every event. Maintained by the ingest transaction (gateway.db.audit_rollups.
-- record_ingested, after the COPY of the new rows), rebuilt from audit_decisions by
-- audit_rollups_rebuild() (below: the backfill of this migration, and the benchmark's bulk fill).
--
-- Keys: (tenant, environment, hour, ...) where hour is date_trunc('hour', "timestamp", 'UTC').
-- A NULL server/tool/subject/reason is stored as NULL, and the unique keys are NULLS NOT
-- DISTINCT (PostgreSQL 15): no sentinel value, so an empty-string server stays apart from none.
-- The outcome is gateway.db.audit.OUTCOME_SQL: error if status = 'error', rejected if status =
-- 'rejected', denied if not allowed, else allowed.

-- Decisions per hour, server and outcome.
CREATE TABLE audit_rollup_outcomes (
    tenant      text        NOT NULL,
    environment text        NOT NULL,
    hour        timestamptz NOT NULL,
    server      text,
    outcome     text        NOT NULL CHECK (outcome IN ('allowed', 'denied', 'rejected', 'error')),
    n           bigint      NOT NULL,
    CONSTRAINT audit_rollup_outcomes_key UNIQUE NULLS NOT DISTINCT (tenant, environment, hour, server, outcome)
);

-- Latency (events with a latency_ms) per hour and server: count, extremes, and a histogram.
-- buckets[1] counts latencies below 0.1 ms; buckets[i + 1] (i = 1 .. 198) those in
-- [0.1 * 1.1^(i - 1), 0.1 * 1.1^i) ms; buckets[200] those of 0.1 * 1.1^198 ms (about 4.4 hours)
-- and more. Trailing empty buckets are left out (the array is as long as its last non-zero one).
CREATE TABLE audit_rollup_latency (
    tenant      text             NOT NULL,
    environment text             NOT NULL,
    hour        timestamptz      NOT NULL,
    server      text,
    n           bigint           NOT NULL,
    min_ms      double precision NOT NULL,
    max_ms      double precision NOT NULL,
    buckets     bigint[]         NOT NULL,
    CONSTRAINT audit_rollup_latency_key UNIQUE NULLS NOT DISTINCT (tenant, environment, hour, server)
);

-- Denials (outcome denied) per hour, server, tool and subject.
CREATE TABLE audit_rollup_denials (
    tenant      text        NOT NULL,
    environment text        NOT NULL,
    hour        timestamptz NOT NULL,
    server      text,
    tool        text,
    subject     text,
    n           bigint      NOT NULL,
    CONSTRAINT audit_rollup_denials_key UNIQUE NULLS NOT DISTINCT (tenant, environment, hour, server, tool, subject)
);

-- Reasons of the denials per hour, server and reason (a denial with two reasons counts for both;
-- the elements of a reasons array, as jsonb_array_elements_text gives them).
CREATE TABLE audit_rollup_reasons (
    tenant      text        NOT NULL,
    environment text        NOT NULL,
    hour        timestamptz NOT NULL,
    server      text,
    reason      text,
    n           bigint      NOT NULL,
    CONSTRAINT audit_rollup_reasons_key UNIQUE NULLS NOT DISTINCT (tenant, environment, hour, server, reason)
);

-- The histogram bucket (0-based: buckets[result + 1]) of a latency in milliseconds; NULL for NULL.
-- gateway.db.audit_rollups.latency_bucket computes the same (same float arithmetic).
CREATE FUNCTION audit_latency_bucket(ms double precision) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN ms < 0.1::float8 THEN 0
                WHEN ms >= 1e300::float8 THEN 199
                ELSE least(floor(ln(ms / 0.1::float8) / ln(1.1::float8))::integer + 1, 199) END
$$;

-- Element-wise sum of two histograms (the shorter one padded with zeros).
CREATE FUNCTION audit_hist_add(a bigint[], b bigint[]) RETURNS bigint[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(array_agg(coalesce(a[i], 0) + coalesce(b[i], 0) ORDER BY i), '{}'::bigint[])
    FROM generate_series(1, greatest(coalesce(cardinality(a), 0), coalesce(cardinality(b), 0))) AS i
$$;

-- The histogram of (0-based bucket, count) pairs, as stored in audit_rollup_latency.buckets.
CREATE FUNCTION audit_hist_from(idx integer[], counts bigint[]) RETURNS bigint[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT coalesce(array_agg(coalesce(u.c, 0) ORDER BY i), '{}'::bigint[])
    FROM generate_series(0, (SELECT max(x) FROM unnest(idx) AS x)) AS i
    LEFT JOIN unnest(idx, counts) AS u(b, c) ON u.b = i
$$;

-- Rebuilds the rollups of the UTC hours overlapping [p_since, p_until) from audit_decisions, for
-- one scope (or every scope when p_tenant/p_environment are NULL): deletes those hours' rows, then
-- aggregates the stored events. Locks the rollup tables against ingest while it runs (an ingest
-- transaction that copied its events before the lock is waited for; one that copies after adds
-- its events afterwards), so rollups and events agree when it returns. Returns how many events
-- were aggregated.
CREATE FUNCTION audit_rollups_rebuild(p_tenant text, p_environment text, p_since timestamptz, p_until timestamptz)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    lo timestamptz := date_trunc('hour', p_since, 'UTC');
    hi timestamptz := CASE WHEN date_trunc('hour', p_until, 'UTC') = p_until THEN p_until
                           ELSE date_trunc('hour', p_until, 'UTC') + interval '1 hour' END;
    events bigint;
BEGIN
    LOCK TABLE audit_rollup_outcomes, audit_rollup_latency, audit_rollup_denials, audit_rollup_reasons
        IN SHARE ROW EXCLUSIVE MODE;
    DELETE FROM audit_rollup_outcomes r WHERE r.hour >= lo AND r.hour < hi
        AND (p_tenant IS NULL OR r.tenant = p_tenant) AND (p_environment IS NULL OR r.environment = p_environment);
    DELETE FROM audit_rollup_latency r WHERE r.hour >= lo AND r.hour < hi
        AND (p_tenant IS NULL OR r.tenant = p_tenant) AND (p_environment IS NULL OR r.environment = p_environment);
    DELETE FROM audit_rollup_denials r WHERE r.hour >= lo AND r.hour < hi
        AND (p_tenant IS NULL OR r.tenant = p_tenant) AND (p_environment IS NULL OR r.environment = p_environment);
    DELETE FROM audit_rollup_reasons r WHERE r.hour >= lo AND r.hour < hi
        AND (p_tenant IS NULL OR r.tenant = p_tenant) AND (p_environment IS NULL OR r.environment = p_environment);

    INSERT INTO audit_rollup_outcomes (tenant, environment, hour, server, outcome, n)
    SELECT a.tenant, a.environment, date_trunc('hour', a."timestamp", 'UTC'), a.server,
           CASE WHEN a.status = 'error' THEN 'error' WHEN a.status = 'rejected' THEN 'rejected'
                WHEN NOT a.allowed THEN 'denied' ELSE 'allowed' END,
           count(*)
    FROM audit_decisions a
    WHERE a."timestamp" >= lo AND a."timestamp" < hi
      AND (p_tenant IS NULL OR a.tenant = p_tenant) AND (p_environment IS NULL OR a.environment = p_environment)
    GROUP BY 1, 2, 3, 4, 5;
    SELECT coalesce(sum(r.n), 0) INTO events FROM audit_rollup_outcomes r WHERE r.hour >= lo AND r.hour < hi
        AND (p_tenant IS NULL OR r.tenant = p_tenant) AND (p_environment IS NULL OR r.environment = p_environment);

    INSERT INTO audit_rollup_latency (tenant, environment, hour, server, n, min_ms, max_ms, buckets)
    SELECT b.tenant, b.environment, b.hour, b.server, sum(b.c), min(b.mn), max(b.mx),
           audit_hist_from(array_agg(b.bucket), array_agg(b.c))
    FROM (
        SELECT a.tenant, a.environment, date_trunc('hour', a."timestamp", 'UTC') AS hour, a.server,
               audit_latency_bucket(a.latency_ms) AS bucket, count(*) AS c, min(a.latency_ms) AS mn,
               max(a.latency_ms) AS mx
        FROM audit_decisions a
        WHERE a."timestamp" >= lo AND a."timestamp" < hi AND a.latency_ms IS NOT NULL
          AND (p_tenant IS NULL OR a.tenant = p_tenant) AND (p_environment IS NULL OR a.environment = p_environment)
        GROUP BY 1, 2, 3, 4, 5
    ) AS b
    GROUP BY 1, 2, 3, 4;

    INSERT INTO audit_rollup_denials (tenant, environment, hour, server, tool, subject, n)
    SELECT a.tenant, a.environment, date_trunc('hour', a."timestamp", 'UTC'), a.server, a.tool, a.subject, count(*)
    FROM audit_decisions a
    WHERE a."timestamp" >= lo AND a."timestamp" < hi
      AND NOT a.allowed AND a.status IS DISTINCT FROM 'error' AND a.status IS DISTINCT FROM 'rejected'
      AND (p_tenant IS NULL OR a.tenant = p_tenant) AND (p_environment IS NULL OR a.environment = p_environment)
    GROUP BY 1, 2, 3, 4, 5, 6;

    INSERT INTO audit_rollup_reasons (tenant, environment, hour, server, reason, n)
    SELECT a.tenant, a.environment, date_trunc('hour', a."timestamp", 'UTC'), a.server, r.reason, count(*)
    FROM audit_decisions a
    CROSS JOIN LATERAL jsonb_array_elements_text(
        CASE WHEN jsonb_typeof(a.reasons) = 'array' THEN a.reasons ELSE '[]'::jsonb END) AS r(reason)
    WHERE a."timestamp" >= lo AND a."timestamp" < hi
      AND NOT a.allowed AND a.status IS DISTINCT FROM 'error' AND a.status IS DISTINCT FROM 'rejected'
      AND (p_tenant IS NULL OR a.tenant = p_tenant) AND (p_environment IS NULL OR a.environment = p_environment)
    GROUP BY 1, 2, 3, 4, 5;

    RETURN events;
END
$$;

-- Backfill: the events stored before this migration (one pass per table over the events; about
-- a minute per 10 million events, so no statement timeout for the rest of this transaction).
SET LOCAL statement_timeout = 0;
SELECT audit_rollups_rebuild(NULL, NULL, '-infinity', 'infinity');
