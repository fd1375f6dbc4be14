"""Hourly rollups of the runtime trail (migration 0016), kept by the ingest transaction.

Four tables keyed by ``(tenant, environment, hour, ...)`` (``hour``: the event's UTC hour):
outcomes per server, latency per server (count, min, max and a log-scale histogram), denials
per server, tool and subject, and denial reasons per server. :func:`record_ingested` adds a
batch of newly stored events to them (inside the ingest transaction, so they never count an
event twice or miss one); ``audit_rollups_rebuild()`` (SQL) recomputes a range from the events.
:mod:`gateway.db.audit_stats` reads them. docs/audit.md "Stats" says what is exact.

The latency histogram: bucket 0 holds latencies below :data:`HIST_MIN_MS`; bucket ``i``
(1 .. :data:`HIST_BUCKETS` - 2) holds ``[HIST_MIN_MS * HIST_RATIO**(i-1), HIST_MIN_MS *
HIST_RATIO**i)`` ms; the last bucket everything from ``HIST_MIN_MS * HIST_RATIO**(HIST_BUCKETS
- 2)`` ms (about 4.4 hours) up.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from gateway.db.audit_streams import EVENT_FIELDS

__all__ = [
    "HIST_BUCKETS",
    "HIST_MIN_MS",
    "HIST_RATIO",
    "bucket_value",
    "forget_before",
    "hist_percentile",
    "latency_bucket",
    "rebuild",
    "record_ingested",
]

HIST_MIN_MS = 0.1
"""Lower bound of the first log-scale bucket, in milliseconds."""
HIST_RATIO = 1.1
"""Ratio of a bucket's upper to its lower bound: a value read back as the bucket's geometric
middle is within ``sqrt(1.1) - 1`` (4.9 %) of the true value."""
HIST_BUCKETS = 200
"""Buckets of a histogram (the first and the last are open-ended)."""
_LN_RATIO = math.log(HIST_RATIO)

_I = {f: EVENT_FIELDS.index(f) for f in EVENT_FIELDS}


def latency_bucket(ms: float) -> int:
    """The 0-based histogram bucket of a latency in milliseconds (as SQL ``audit_latency_bucket``)."""
    if ms < HIST_MIN_MS:
        return 0
    if ms >= 1e300:
        return HIST_BUCKETS - 1
    return min(math.floor(math.log(ms / HIST_MIN_MS) / _LN_RATIO) + 1, HIST_BUCKETS - 1)


def bucket_value(bucket: int) -> float:
    """The value (ms) a bucket stands for: its geometric middle; half of :data:`HIST_MIN_MS` for
    bucket 0; its lower bound for the last one (callers clamp to the observed min/max)."""
    if bucket <= 0:
        return HIST_MIN_MS / 2
    lower = HIST_MIN_MS * HIST_RATIO ** (bucket - 1)
    return lower if bucket >= HIST_BUCKETS - 1 else lower * math.sqrt(HIST_RATIO)


def hist_percentile(buckets: Sequence[int], p: float, lo: float, hi: float) -> float | None:
    """``percentile_cont(p)`` estimated from a histogram (``buckets[i]``: count of bucket ``i``).

    The ranks ``floor`` and ``ceil`` of ``p * (n - 1)`` are read as their buckets' values
    (:func:`bucket_value`), interpolated linearly as ``percentile_cont`` does, and clamped to
    ``[lo, hi]`` (the observed minimum and maximum, ms). None for an empty histogram.
    """
    n = sum(buckets)
    if n == 0:
        return None
    h = p * (n - 1)
    k = math.floor(h)

    def at(rank: int) -> float:
        seen = 0
        for i, c in enumerate(buckets):
            seen += c
            if rank < seen:
                return min(max(bucket_value(i), lo), hi)
        return hi

    v = at(k)
    if h > k:
        v += (at(k + 1) - v) * (h - k)
    return v


def _outcome(row: Sequence[Any]) -> str:
    status = row[_I["status"]]
    if status == "error":
        return "error"
    if status == "rejected":
        return "rejected"
    return "allowed" if row[_I["allowed"]] else "denied"


def _reason_text(value: Any) -> str | None:
    """An element of the reasons array as ``jsonb_array_elements_text`` returns it (strings are
    the validated case; null is NULL; other scalars their JSON text)."""
    if value is None or isinstance(value, str):
        return value
    return orjson.dumps(value).decode()


def _hour(hours: int) -> datetime:
    """The UTC hour of ``ordinal * 24 + hour``."""
    day, hour = divmod(hours, 24)
    return datetime.fromordinal(day).replace(hour=hour, tzinfo=UTC)


_UPSERT_OUTCOMES = """
INSERT INTO audit_rollup_outcomes AS t (tenant, environment, hour, server, outcome, n)
SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::bigint[])
ON CONFLICT ON CONSTRAINT audit_rollup_outcomes_key DO UPDATE SET n = t.n + EXCLUDED.n
"""
_UPSERT_LATENCY = """
INSERT INTO audit_rollup_latency AS t (tenant, environment, hour, server, n, min_ms, max_ms, buckets)
SELECT te, en, h, s, n, mn, mx, b::bigint[]
FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::bigint[], $6::float8[], $7::float8[],
            $8::text[]) AS u(te, en, h, s, n, mn, mx, b)
ON CONFLICT ON CONSTRAINT audit_rollup_latency_key DO UPDATE
SET n = t.n + EXCLUDED.n, min_ms = least(t.min_ms, EXCLUDED.min_ms), max_ms = greatest(t.max_ms, EXCLUDED.max_ms),
    buckets = audit_hist_add(t.buckets, EXCLUDED.buckets)
"""
_UPSERT_DENIALS = """
INSERT INTO audit_rollup_denials AS t (tenant, environment, hour, server, tool, subject, n)
SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::text[], $7::bigint[])
ON CONFLICT ON CONSTRAINT audit_rollup_denials_key DO UPDATE SET n = t.n + EXCLUDED.n
"""
_UPSERT_REASONS = """
INSERT INTO audit_rollup_reasons AS t (tenant, environment, hour, server, reason, n)
SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[], $6::bigint[])
ON CONFLICT ON CONSTRAINT audit_rollup_reasons_key DO UPDATE SET n = t.n + EXCLUDED.n
"""


def _columns(counts: dict[tuple[Any, ...], Any]) -> list[list[Any]]:
    """The keys' components and the values as parallel lists (the ``unnest`` arguments); a key
    is ``(tenant, environment, hour as ordinal * 24 + hour, server, ...)``."""
    keys = list(counts)  # no lock order needed: appends to one scope hold its advisory lock
    if not keys:
        return []
    cols = [[k[i] for k in keys] for i in range(len(keys[0]))]
    cols[2] = [_hour(h) for h in cols[2]]
    return [*cols, [counts[k] for k in keys]]


async def record_ingested(conn: asyncpg.Connection, rows: Sequence[Sequence[Any]]) -> None:
    """Add newly stored events to the rollups: at most four statements, whatever the batch size.

    Called inside the ingest transaction, after the ``COPY`` (the ``after_copy`` hook of
    :func:`gateway.db.audit_chain.append`), with only the rows actually inserted.

    Args:
        conn: The ingest transaction's connection.
        rows: Events in :data:`~gateway.db.audit_streams.EVENT_FIELDS` order, stored form
            (timezone-aware ``timestamp``, ``reasons`` a Python list); each carries its tenant
            and environment.

    Raises:
        asyncpg.PostgresError: An upsert failed (the caller's transaction is rolled back).
    """
    outcomes: Counter[tuple[Any, ...]] = Counter()
    denials: Counter[tuple[Any, ...]] = Counter()
    reasons: Counter[tuple[Any, ...]] = Counter()
    latency: dict[tuple[Any, ...], list[Any]] = {}  # key -> [n, min, max, Counter(bucket)]
    i_ts, i_srv, i_ms, i_rs = _I["timestamp"], _I["server"], _I["latency_ms"], _I["reasons"]
    i_t, i_e, i_tool, i_subj = _I["tenant"], _I["environment"], _I["tool"], _I["subject"]
    for row in rows:
        ts = row[i_ts]
        if ts.tzinfo is not UTC:
            ts = ts.astimezone(UTC)
        # the hour as an integer (hours since 0001-01-01) while counting: cheaper to hash
        scope = (row[i_t], row[i_e], ts.toordinal() * 24 + ts.hour, row[i_srv])
        outcome = _outcome(row)
        outcomes[(*scope, outcome)] += 1
        if outcome == "denied":
            denials[(*scope, row[i_tool], row[i_subj])] += 1
            rs = row[i_rs]
            for r in rs if isinstance(rs, list) else ():
                reasons[(*scope, _reason_text(r))] += 1
        ms = row[i_ms]
        if ms is not None:
            bucket = latency_bucket(ms)
            entry = latency.get(scope)
            if entry is None:
                latency[scope] = [1, ms, ms, Counter({bucket: 1})]
            else:
                entry[0] += 1
                if ms < entry[1]:
                    entry[1] = ms
                elif ms > entry[2]:
                    entry[2] = ms
                entry[3][bucket] += 1
    if outcomes:
        await conn.execute(_UPSERT_OUTCOMES, *_columns(dict(outcomes)))
    if latency:
        packed = {}
        for key, (n, lo, hi, hist) in latency.items():
            dense = [hist.get(i, 0) for i in range(max(hist) + 1)]
            packed[key] = (n, lo, hi, "{" + ",".join(map(str, dense)) + "}")
        cols = _columns(packed)
        values = cols.pop()
        await conn.execute(_UPSERT_LATENCY, *cols, *([v[i] for v in values] for i in range(4)))
    if denials:
        await conn.execute(_UPSERT_DENIALS, *_columns(dict(denials)))
    if reasons:
        await conn.execute(_UPSERT_REASONS, *_columns(dict(reasons)))


async def rebuild(
    conn: asyncpg.Connection | asyncpg.Pool,
    tenant: str | None,
    environment: str | None,
    since: datetime,
    until: datetime,
) -> int:
    """Recompute the rollups of the UTC hours overlapping ``[since, until)`` from the stored
    events (SQL ``audit_rollups_rebuild``; None tenant/environment: every scope). For events
    stored without the ingest path (a bulk load). Blocks ingest while it runs; no timeout.

    Returns:
        How many events the rebuilt hours hold.
    """
    n: int = await conn.fetchval(
        "SELECT audit_rollups_rebuild($1, $2, $3, $4)", tenant, environment, since, until, timeout=None
    )
    return n


async def forget_before(
    conn: asyncpg.Connection | asyncpg.Pool, tenant: str, environment: str, before: datetime
) -> int:
    """Delete the scope's rollup rows of the hours before ``before`` (retention).

    ``before`` should be on an hour (partition bounds are): an hour that starts before it is
    forgotten whole.

    Returns:
        How many rollup rows were deleted (all four tables).
    """
    total = 0
    for table in ("audit_rollup_outcomes", "audit_rollup_latency", "audit_rollup_denials", "audit_rollup_reasons"):
        status = await conn.execute(
            f"DELETE FROM {table} WHERE tenant = $1 AND environment = $2 AND hour < $3", tenant, environment, before
        )
        total += int(status.split()[-1])
    return total
