"""Aggregates of the runtime trail over a time range (``GET /v1/audit/stats``), computed in SQL.

Every aggregate takes the trail's filter set (:class:`~gateway.db.audit.DecisionQuery`) and
reads the rows directly, through the indexes of migration 0014 (``audit_decisions_stats`` and
``audit_decisions_denied`` let the big ones scan the index only). The outcome of a decision is
:data:`~gateway.db.audit.OUTCOME_SQL`; a *denial* is the outcome ``denied``. docs/audit.md has
the measurements at 10 million events.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from gateway.db.audit import OUTCOME_SQL, OUTCOMES, DecisionQuery, decision_where

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


async def decision_stats(
    conn: asyncpg.Pool | asyncpg.Connection,
    tenant: str,
    environment: str,
    q: DecisionQuery,
    *,
    since: datetime,
    until: datetime,
    top: int = 10,
) -> dict[str, Any]:
    """The aggregates of the decisions matching ``q`` with ``since <= timestamp < until``.

    With a pool the five queries run concurrently on five connections; with a connection one
    after the other. ``q.since``/``q.until``/``q.after``/``q.limit``/``q.order`` are ignored.

    Returns:
        ``{"since", "until"`` (ISO 8601), ``"total"``, ``"outcomes": {outcome: n}``,
        ``"per_hour": [{"hour", "allowed", "denied", "rejected", "error"}]`` (every UTC hour of
        the range, zeros included), ``"top_denied_tools": [{"server", "tool", "count"}]``,
        ``"top_denied_subjects": [{"subject", "count"}]``, ``"denials_by_reason": [{"reason",
        "count"}]`` (a denial with two reasons counts for both), ``"latency_by_server":
        [{"server", "count", "p50_ms", "p99_ms"}]`` (events with a latency; continuous
        percentiles)``}``; lists at most ``top`` long, largest first.
    """
    bounded = dataclasses.replace(q, since=since, until=until, after=None)
    where, args = decision_where(tenant, environment, bounded, keyset=False)
    args.append(top)
    top_p = f"${len(args)}"
    queries: list[tuple[str, list[Any]]] = [
        (_per_hour(where), args[:-1]),
        (_top_tools(where, top_p), args),
        (_top_subjects(where, top_p), args),
        (_by_reason(where, top_p), args),
        (_latency(where, top_p), args),
    ]
    if isinstance(conn, asyncpg.Pool):
        pool = conn

        def run(sql: str, a: list[Any]) -> Callable[[], Awaitable[list[asyncpg.Record]]]:
            async def go() -> list[asyncpg.Record]:
                async with pool.acquire() as c:
                    return list(await c.fetch(sql, *a))

            return go

        results = await asyncio.gather(*(run(sql, a)() for sql, a in queries))
    else:
        results = [list(await conn.fetch(sql, *a)) for sql, a in queries]
    per_hour_rows, tools, subjects, reasons, latency = results

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
        "latency_by_server": [
            {"server": r["server"], "count": r["n"], "p50_ms": r["p50"], "p99_ms": r["p99"]} for r in latency
        ],
    }
