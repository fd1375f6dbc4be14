"""Aggregates of the runtime trail over a time range (``GET /v1/audit/stats``), computed in SQL.

Two paths with the same answer shape:

* **rollups** (no filter other than ``since``/``until``/``server``): the whole UTC hours of the
  range are read from the hourly rollups of migration 0016 (:mod:`gateway.db.audit_rollups`), the
  partial hours at either end from the events. Counts are exact; latency percentiles are exact
  while the range holds at most ``exact_latency_max`` events with a latency, else estimated from
  the merged histograms (``latency_method: "histogram"``, within 4.9 %).
* **raw** (any other filter): every aggregate reads the matching events, through the indexes of
  migration 0014 (``audit_decisions_time`` and ``audit_decisions_denied`` let the big ones scan
  the index only); percentiles exact.

The outcome of a decision is :data:`~gateway.db.audit.OUTCOME_SQL`; a *denial* is the outcome
``denied``. docs/audit.md has the measurements at 10 million events.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from gateway.db.audit import OUTCOME_SQL, OUTCOMES, DecisionQuery, decision_where
from gateway.db.audit_rollups import hist_percentile

__all__ = ["decision_stats"]

_DENIED = "NOT a.allowed AND a.status IS DISTINCT FROM 'error' AND a.status IS DISTINCT FROM 'rejected'"
"""The ``denied`` outcome (as :data:`~gateway.db.audit.OUTCOME_SQL`), spelt to use the partial index."""


def _per_hour(where: str) -> str:
    return (
        f"SELECT date_trunc('hour', a.\"timestamp\", 'UTC') AS hour, {OUTCOME_SQL.format(a='a.')} AS outcome,"
        f" count(*) AS n FROM audit_decisions a WHERE {where} GROUP BY 1, 2"
    )


def _top_tools(where: str, top: str) -> str:
    return (
        f"SELECT a.server, a.tool, count(*) AS n FROM audit_decisions a WHERE {where} AND {_DENIED}"
        f" GROUP BY 1, 2 ORDER BY n DESC, 1, 2 LIMIT {top}"
    )


def _top_subjects(where: str, top: str) -> str:
    return (
        f"SELECT a.subject, count(*) AS n FROM audit_decisions a WHERE {where} AND {_DENIED}"
        f" GROUP BY 1 ORDER BY n DESC, 1 LIMIT {top}"
    )


def _by_reason(where: str, top: str) -> str:
    return (
        "SELECT r.reason, count(*) AS n FROM audit_decisions a CROSS JOIN LATERAL jsonb_array_elements_text("
        "CASE WHEN jsonb_typeof(a.reasons) = 'array' THEN a.reasons ELSE '[]'::jsonb END) AS r(reason)"
        f" WHERE {where} AND {_DENIED} GROUP BY 1 ORDER BY n DESC, 1 LIMIT {top}"
    )


def _latency(where: str, top: str) -> str:
    return (
        "SELECT a.server, count(*) AS n,"
        " percentile_cont(0.5) WITHIN GROUP (ORDER BY a.latency_ms) AS p50,"
        " percentile_cont(0.99) WITHIN GROUP (ORDER BY a.latency_ms) AS p99"
        f" FROM audit_decisions a WHERE {where} AND a.latency_ms IS NOT NULL"
        f" GROUP BY 1 ORDER BY n DESC, 1 LIMIT {top}"
    )


def _hours(since: datetime, until: datetime) -> list[datetime]:
    hour = since.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    hours = []
    while hour < until:
        hours.append(hour)
        hour += timedelta(hours=1)
    return hours


EXACT_LATENCY_MAX = 50_000
"""On the rollup path, percentiles are computed exactly from the events while the range holds at
most this many events with a latency (a cheap query); above, from the hourly histograms."""

_Queries = list[tuple[str, list[Any]]]


async def _fetch_all(conn: asyncpg.Pool | asyncpg.Connection, queries: _Queries) -> list[list[asyncpg.Record]]:
    """Each query's rows: concurrently on pooled connections, or one after the other on ``conn``."""
    if isinstance(conn, asyncpg.Pool):
        pool = conn

        def run(sql: str, a: list[Any]) -> Callable[[], Awaitable[list[asyncpg.Record]]]:
            async def go() -> list[asyncpg.Record]:
                async with pool.acquire() as c:
                    return list(await c.fetch(sql, *a))

            return go

        return list(await asyncio.gather(*(run(sql, a)() for sql, a in queries)))
    return [list(await conn.fetch(sql, *a)) for sql, a in queries]


def _rollups_apply(q: DecisionQuery) -> bool:
    """No filter other than since/until/server (the ones the rollups are keyed by)."""
    base = DecisionQuery()
    rest = dataclasses.replace(q, since=None, until=None, after=None, server=None, limit=base.limit, order=base.order)
    return rest == base


def _whole_hours(since: datetime, until: datetime) -> tuple[datetime, datetime]:
    """``(first, end)``: the UTC hours ``first <= h < end`` lying wholly inside ``[since, until)``."""
    floor = since.astimezone(UTC).replace(minute=0, second=0, microsecond=0)
    first = floor if floor == since else floor + timedelta(hours=1)
    return first, until.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


class _Union:
    """SQL of the rollup path: rollup rows of the whole hours ``[$3, $4)`` UNION ALL the same
    aggregate of the events in the partial hours ``[$5, $3)`` and ``[$4, $6)`` ($1 tenant, $2
    environment, $7 the server when filtered)."""

    def __init__(self, server: bool) -> None:
        s_r, s_a = (" AND r.server = $7", " AND a.server = $7") if server else ("", "")
        scope = "a.tenant = $1 AND a.environment = $2"
        self.rollup = f"r.tenant = $1 AND r.environment = $2 AND r.hour >= $3 AND r.hour < $4{s_r}"
        self.edges = (
            f'{scope} AND a."timestamp" >= $5 AND a."timestamp" < $3{s_a}',
            f'{scope} AND a."timestamp" >= $4 AND a."timestamp" < $6{s_a}',
        )

    def __call__(self, rollup: str, raw: str) -> str:
        """``rollup`` and ``raw`` with ``{w}`` where their conditions go."""
        return " UNION ALL ".join([rollup.format(w=self.rollup), *(raw.format(w=e) for e in self.edges)])


def _rollup_queries(u: _Union, args: list[Any], top: int) -> _Queries:
    top_p = f"${len(args) + 1}"
    outcome = OUTCOME_SQL.format(a="a.")
    per_hour = u(
        "SELECT r.hour, r.outcome, r.n FROM audit_rollup_outcomes r WHERE {w}",
        f"SELECT date_trunc('hour', a.\"timestamp\", 'UTC'), {outcome}, count(*) FROM audit_decisions a"
        " WHERE {w} GROUP BY 1, 2",
    )
    tools = u(
        "SELECT r.server, r.tool, r.n FROM audit_rollup_denials r WHERE {w}",
        f"SELECT a.server, a.tool, count(*) FROM audit_decisions a WHERE {{w}} AND {_DENIED} GROUP BY 1, 2",
    )
    subjects = u(
        "SELECT r.subject, r.n FROM audit_rollup_denials r WHERE {w}",
        f"SELECT a.subject, count(*) FROM audit_decisions a WHERE {{w}} AND {_DENIED} GROUP BY 1",
    )
    reasons = u(
        "SELECT r.reason, r.n FROM audit_rollup_reasons r WHERE {w}",
        "SELECT e.reason, count(*) FROM audit_decisions a CROSS JOIN LATERAL jsonb_array_elements_text("
        "CASE WHEN jsonb_typeof(a.reasons) = 'array' THEN a.reasons ELSE '[]'::jsonb END) AS e(reason)"
        f" WHERE {{w}} AND {_DENIED} GROUP BY 1",
    )
    latency = u(
        "SELECT r.server, r.n, r.min_ms, r.max_ms FROM audit_rollup_latency r WHERE {w}",
        "SELECT a.server, count(*), min(a.latency_ms), max(a.latency_ms) FROM audit_decisions a"
        " WHERE {w} AND a.latency_ms IS NOT NULL GROUP BY 1",
    )
    top_args = [*args, top]
    return [
        (f"SELECT hour, outcome, sum(n)::bigint AS n FROM ({per_hour}) AS s(hour, outcome, n) GROUP BY 1, 2", args),
        (
            f"SELECT server, tool, sum(n)::bigint AS n FROM ({tools}) AS s(server, tool, n)"
            f" GROUP BY 1, 2 ORDER BY n DESC, 1, 2 LIMIT {top_p}",
            top_args,
        ),
        (
            f"SELECT subject, sum(n)::bigint AS n FROM ({subjects}) AS s(subject, n)"
            f" GROUP BY 1 ORDER BY n DESC, 1 LIMIT {top_p}",
            top_args,
        ),
        (
            f"SELECT reason, sum(n)::bigint AS n FROM ({reasons}) AS s(reason, n)"
            f" GROUP BY 1 ORDER BY n DESC, 1 LIMIT {top_p}",
            top_args,
        ),
        (
            f"SELECT server, sum(n)::bigint AS n, min(mn) AS mn, max(mx) AS mx FROM ({latency}) AS s(server, n, mn, mx)"
            " GROUP BY 1 ORDER BY n DESC, 1",
            args,
        ),
    ]


def _histograms_sql(u: _Union, first: int) -> str:
    """Merged histograms ``(server, bucket, c)`` of the servers ``$first`` (text[]) and, when
    ``$first+1`` is true, of the events without a server."""
    in_top = "({x}.server = ANY(${p}::text[]) OR (${q}::boolean AND {x}.server IS NULL))"
    r_top = in_top.format(x="r", p=first, q=first + 1)
    a_top = in_top.format(x="a", p=first, q=first + 1)
    union = u(
        "SELECT r.server, u.i - 1, u.c FROM audit_rollup_latency r"
        " CROSS JOIN LATERAL unnest(r.buckets) WITH ORDINALITY AS u(c, i) WHERE {w} AND u.c > 0 AND " + r_top,
        "SELECT a.server, audit_latency_bucket(a.latency_ms), count(*) FROM audit_decisions a"
        " WHERE {w} AND a.latency_ms IS NOT NULL AND " + a_top + " GROUP BY 1, 2",
    )
    return f"SELECT server, bucket, sum(c)::bigint AS c FROM ({union}) AS s(server, bucket, c) GROUP BY 1, 2"


async def decision_stats(
    conn: asyncpg.Pool | asyncpg.Connection,
    tenant: str,
    environment: str,
    q: DecisionQuery,
    *,
    since: datetime,
    until: datetime,
    top: int = 10,
    rollups: bool = True,
    exact_latency_max: int = EXACT_LATENCY_MAX,
) -> dict[str, Any]:
    """The aggregates of the decisions matching ``q`` with ``since <= timestamp < until``.

    With a pool the queries run concurrently on pooled connections; with a connection one after
    the other. ``q.since``/``q.until``/``q.after``/``q.limit``/``q.order`` are ignored. When
    ``rollups`` is true, ``q`` has no filter other than ``server`` and the range holds a whole
    UTC hour, the whole hours are read from the hourly rollups (module docstring).

    Args:
        since: Inclusive lower bound (timezone-aware).
        until: Exclusive upper bound (timezone-aware).
        top: Length of each ranking.
        rollups: False: always read the events (the reference the rollups are tested against).
        exact_latency_max: Rollup path: exact percentiles up to this many events with a latency.

    Returns:
        ``{"since", "until"`` (ISO 8601), ``"total"``, ``"outcomes": {outcome: n}``,
        ``"per_hour": [{"hour", "allowed", "denied", "rejected", "error"}]`` (every UTC hour of
        the range, zeros included), ``"top_denied_tools": [{"server", "tool", "count"}]``,
        ``"top_denied_subjects": [{"subject", "count"}]``, ``"denials_by_reason": [{"reason",
        "count"}]`` (a denial with two reasons counts for both), ``"latency_by_server":
        [{"server", "count", "p50_ms", "p99_ms"}]`` (events with a latency; continuous
        percentiles), ``"latency_method"``: ``"exact"`` or ``"histogram"`` (estimated within
        4.9 %)``}``; lists at most ``top`` long, largest first.

    Raises:
        asyncpg.PostgresError: A query failed (e.g. the statement timeout).
    """
    first, end = _whole_hours(since, until)
    if rollups and first < end and _rollups_apply(q):
        return await _from_rollups(conn, tenant, environment, q, since, until, top, exact_latency_max)
    bounded = dataclasses.replace(q, since=since, until=until, after=None)
    where, args = decision_where(tenant, environment, bounded, keyset=False)
    args.append(top)
    top_p = f"${len(args)}"
    queries: _Queries = [
        (_per_hour(where), args[:-1]),
        (_top_tools(where, top_p), args),
        (_top_subjects(where, top_p), args),
        (_by_reason(where, top_p), args),
        (_latency(where, top_p), args),
    ]
    per_hour_rows, tools, subjects, reasons, latency = await _fetch_all(conn, queries)
    return _answer(since, until, per_hour_rows, tools, subjects, reasons, _exact_latency(latency), "exact")


def _exact_latency(rows: list[asyncpg.Record]) -> list[dict[str, Any]]:
    return [{"server": r["server"], "count": r["n"], "p50_ms": r["p50"], "p99_ms": r["p99"]} for r in rows]


async def _from_rollups(
    conn: asyncpg.Pool | asyncpg.Connection,
    tenant: str,
    environment: str,
    q: DecisionQuery,
    since: datetime,
    until: datetime,
    top: int,
    exact_latency_max: int,
) -> dict[str, Any]:
    first, end = _whole_hours(since, until)
    args: list[Any] = [tenant, environment, first, end, since, until]
    if q.server is not None:
        args.append(q.server)
    u = _Union(q.server is not None)
    per_hour_rows, tools, subjects, reasons, servers = await _fetch_all(conn, _rollup_queries(u, args, top))

    ranked = servers[:top]
    if sum(r["n"] for r in servers) <= exact_latency_max:
        bounded = DecisionQuery(server=q.server, since=since, until=until)
        where, raw_args = decision_where(tenant, environment, bounded, keyset=False)
        raw_args.append(top)
        rows = await conn.fetch(_latency(where, f"${len(raw_args)}"), *raw_args)
        return _answer(since, until, per_hour_rows, tools, subjects, reasons, _exact_latency(list(rows)), "exact")

    names = [r["server"] for r in ranked if r["server"] is not None]
    with_null = any(r["server"] is None for r in ranked)
    hist_rows = await conn.fetch(_histograms_sql(u, len(args) + 1), *args, names, with_null)
    hists: dict[str | None, list[int]] = {}
    for h in hist_rows:
        buckets = hists.setdefault(h["server"], [])
        if len(buckets) <= h["bucket"]:
            buckets.extend([0] * (h["bucket"] + 1 - len(buckets)))
        buckets[h["bucket"]] += h["c"]
    latency = []
    for r in ranked:
        buckets = hists.get(r["server"], [])
        latency.append(
            {
                "server": r["server"],
                "count": r["n"],
                "p50_ms": hist_percentile(buckets, 0.5, r["mn"], r["mx"]),
                "p99_ms": hist_percentile(buckets, 0.99, r["mn"], r["mx"]),
            }
        )
    return _answer(since, until, per_hour_rows, tools, subjects, reasons, latency, "histogram")


def _answer(
    since: datetime,
    until: datetime,
    per_hour_rows: list[asyncpg.Record],
    tools: list[asyncpg.Record],
    subjects: list[asyncpg.Record],
    reasons: list[asyncpg.Record],
    latency: list[dict[str, Any]],
    latency_method: str,
) -> dict[str, Any]:
    counts: dict[datetime, dict[str, int]] = {}
    for r in per_hour_rows:
        counts.setdefault(r["hour"], dict.fromkeys(OUTCOMES, 0))[r["outcome"]] = r["n"]
    per_hour = [{"hour": h.isoformat(), **counts.get(h, dict.fromkeys(OUTCOMES, 0))} for h in _hours(since, until)]
    outcomes = {o: sum(c[o] for c in counts.values()) for o in OUTCOMES}
    return {
        "since": since.isoformat(),
        "until": until.isoformat(),
        "total": sum(outcomes.values()),
        "outcomes": outcomes,
        "per_hour": per_hour,
        "top_denied_tools": [{"server": r["server"], "tool": r["tool"], "count": r["n"]} for r in tools],
        "top_denied_subjects": [{"subject": r["subject"], "count": r["n"]} for r in subjects],
        "denials_by_reason": [{"reason": r["reason"], "count": r["n"]} for r in reasons],
        "latency_by_server": latency,
        "latency_method": latency_method,
    }
