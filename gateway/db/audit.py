"""The audit aggregate: runtime decision events and OPA decision-log events, joinable by decision id.

One filter set (:class:`DecisionQuery`, rendered to SQL by :func:`decision_where`) serves the
reviewers' pages (:func:`query_decisions`), the aggregates (:mod:`gateway.db.audit_stats`) and
the export (:mod:`gateway.db.audit_export`). The indexes that keep each filter fast are in
``migrations/0014_audit_query_indexes.sql``; docs/audit.md has the measurements.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg

from gateway.db.audit_ingest import EVENT_FIELDS

__all__ = [
    "OUTCOMES",
    "OUTCOME_SQL",
    "REASONS_TEXT_SQL",
    "DecisionQuery",
    "decision_where",
    "event_columns",
    "get_decision",
    "like_pattern",
    "query_decisions",
]

OUTCOMES = ("allowed", "denied", "rejected", "error")
"""The outcome of a decision, derived from ``status`` and ``allowed`` (:data:`OUTCOME_SQL`)."""
OUTCOME_SQL = (
    "CASE WHEN {a}status = 'error' THEN 'error' WHEN {a}status = 'rejected' THEN 'rejected' "
    "WHEN NOT {a}allowed THEN 'denied' ELSE 'allowed' END"
)
"""SQL of the outcome (``{a}`` is the table alias with its dot): ``status`` ``error`` -> error
(the gateway or upstream failed, allowed or not); ``rejected`` -> rejected (refused before or
outside policy, e.g. a per-user credential not connected); otherwise ``allowed = false`` ->
denied (policy or a credential obligation refused); else allowed (``ok`` and ``tool_error``:
the gateway let the call through, whatever the tool answered)."""
REASONS_TEXT_SQL = "audit_reasons_text({a}reasons)"
"""The reasons array as one text (elements joined by a newline; the function is defined, with
in migration 0014). ``reason`` and ``q`` match against it (``ILIKE``, no index of its own)."""

_ITEM_COLUMNS = (
    ", ".join(f'a."{f}"' if f == "timestamp" else f"a.{f}" for f in EVENT_FIELDS)
    + ", EXISTS (SELECT 1 FROM opa_decision_logs o WHERE o.decision_id = a.decision_id) AS opa_logged"
)
_GET = (
    f"SELECT {_ITEM_COLUMNS} FROM audit_decisions a WHERE a.tenant = $1 AND a.environment = $2 AND a.decision_id = $3"
)
_GET_OPA_LOG = """
SELECT path, revision, "timestamp", input, result, erased, masked FROM opa_decision_logs
WHERE tenant = $1 AND environment = $2 AND decision_id = $3
"""
_TEXT_FILTERS = (
    "subject",
    "client_id",
    "server",
    "tool",
    "action",
    "status",
    "error_category",
    "policy_revision",
    "protocol_version",
    "dataplane_id",
)
"""Filters compared for equality with the column of the same name."""
_NOT_FAILED = "{a}status IS DISTINCT FROM 'error' AND {a}status IS DISTINCT FROM 'rejected'"
_OUTCOME_WHERE = {
    "error": "{a}status = 'error'",
    "rejected": "{a}status = 'rejected'",
    "denied": "NOT {a}allowed AND " + _NOT_FAILED,
    "allowed": "{a}allowed AND " + _NOT_FAILED,
}
""":data:`OUTCOME_SQL` = value, spelt so that ``denied`` can use the partial index on ``NOT allowed``."""


@dataclass(frozen=True)
class DecisionQuery:
    """Filters of the runtime trail; None means "any". Every filter is ANDed with the others."""

    subject: str | None = None
    server: str | None = None
    tool: str | None = None
    allowed: bool | None = None
    action: str | None = None
    since: datetime | None = None
    """Inclusive lower bound on ``timestamp``."""
    until: datetime | None = None
    """Exclusive upper bound on ``timestamp``."""
    after: tuple[datetime, str] | None = None
    """Keyset position ``(timestamp, decision_id)``: rows strictly past it in ``order``."""
    limit: int = 50
    client_id: str | None = None
    status: str | None = None
    """``ok``, ``tool_error``, ``denied``, ``rejected``, ``error`` (as the data plane wrote it)."""
    error_category: str | None = None
    policy_revision: str | None = None
    projection_version: int | None = None
    protocol_version: str | None = None
    dataplane_id: str | None = None
    min_latency_ms: float | None = None
    """Only decisions whose ``latency_ms`` is strictly greater (milliseconds)."""
    reason: str | None = None
    """Case-insensitive substring of one of the reasons (no newline)."""
    terms: tuple[str, ...] = ()
    """Free-text search: every term is a case-insensitive substring of the reasons."""
    outcome: str | None = None
    """One of :data:`OUTCOMES`."""
    order: Literal["desc", "asc"] = "desc"
    """``desc``: newest first; ``asc``: oldest first (by ``timestamp``, then ``decision_id``)."""


def like_pattern(text: str) -> str:
    """``%text%`` for ``ILIKE`` with ``\\``, ``%`` and ``_`` in ``text`` escaped (matched literally)."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def decision_where(
    tenant: str, environment: str, q: DecisionQuery, *, alias: str = "a", keyset: bool = True
) -> tuple[str, list[Any]]:
    """The SQL condition (``$1``-numbered) and its arguments selecting ``q``'s rows of one scope.

    Args:
        alias: The ``audit_decisions`` alias in the caller's SQL (empty: none).
        keyset: Include the ``q.after`` position (pages and exports; stats ignore it).

    Returns:
        ``(condition, args)``; further parameters of the caller start at ``len(args) + 1``.
    """
    a = f"{alias}." if alias else ""
    where = [f"{a}tenant = $1", f"{a}environment = $2"]
    args: list[Any] = [tenant, environment]

    def add(sql: str, value: Any) -> None:
        args.append(value)
        where.append(sql.format(p=f"${len(args)}"))

    for column in _TEXT_FILTERS:
        value = getattr(q, column)
        if value is not None:
            add(f"{a}{column} = {{p}}", value)
    if q.allowed is not None:
        add(f"{a}allowed = {{p}}", q.allowed)
    if q.projection_version is not None:
        add(f"{a}projection_version = {{p}}", q.projection_version)
    if q.min_latency_ms is not None:
        add(f"{a}latency_ms > {{p}}", q.min_latency_ms)
    reasons = REASONS_TEXT_SQL.format(a=a)
    for term in ((q.reason,) if q.reason is not None else ()) + q.terms:
        add(f"{reasons} ILIKE {{p}}", like_pattern(term))
        if not any(c in term for c in '"\\') and all(c >= " " for c in term):
            # A cheap prefilter first (the jsonb text holds every reason verbatim when the term
            # has no character JSON escapes); the exact match above decides.
            where.insert(len(where) - 1, f"{a}reasons::text ILIKE ${len(args)}")
    if q.outcome is not None:
        where.append(_OUTCOME_WHERE[q.outcome].format(a=a))
    if q.since is not None:
        add(f'{a}"timestamp" >= {{p}}', q.since)
    if q.until is not None:
        add(f'{a}"timestamp" < {{p}}', q.until)
    if keyset and q.after is not None:
        args.extend(q.after)
        op = "<" if q.order == "desc" else ">"
        where.append(f'({a}"timestamp", {a}decision_id) {op} (${len(args) - 1}, ${len(args)})')
    return " AND ".join(where), args


def event_columns(alias: str = "a") -> str:
    """The stored event's columns (:data:`EVENT_FIELDS` order) as a SQL select list."""
    a = f"{alias}." if alias else ""
    return ", ".join(f'{a}"{f}"' if f == "timestamp" else f"{a}{f}" for f in EVENT_FIELDS)


def _item(row: asyncpg.Record) -> dict[str, Any]:
    item = dict(row)
    item["timestamp"] = item["timestamp"].isoformat()
    return item


async def query_decisions(
    conn: asyncpg.Connection | asyncpg.Pool, tenant: str, environment: str, q: DecisionQuery
) -> list[dict[str, Any]]:
    """Up to ``q.limit`` events in ``q.order`` (``timestamp``, then ``decision_id``), each with
    ``opa_logged`` (an OPA decision log with the same decision id is stored)."""
    where, args = decision_where(tenant, environment, q)
    args.append(q.limit)
    direction = "DESC" if q.order == "desc" else "ASC"
    sql = (
        f"SELECT {_ITEM_COLUMNS} FROM audit_decisions a WHERE {where}"
        f' ORDER BY a."timestamp" {direction}, a.decision_id {direction} LIMIT ${len(args)}'
    )
    return [_item(r) for r in await conn.fetch(sql, *args)]


async def get_decision(
    conn: asyncpg.Connection | asyncpg.Pool, tenant: str, environment: str, decision_id: str
) -> dict[str, Any] | None:
    """Return one event plus ``opa_decision_log`` (the joined OPA event or None), or None."""
    row = await conn.fetchrow(_GET, tenant, environment, decision_id)
    if row is None:
        return None
    item = _item(row)
    log = await conn.fetchrow(_GET_OPA_LOG, tenant, environment, decision_id)
    if log is None:
        item["opa_decision_log"] = None
    else:
        entry = dict(log)
        entry["timestamp"] = entry["timestamp"].isoformat() if entry["timestamp"] else None
        item["opa_decision_log"] = entry
    return item
