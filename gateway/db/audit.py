"""The audit aggregate: runtime decision events and OPA decision-log events, joinable by decision id."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from gateway.db.audit_ingest import EVENT_FIELDS

__all__ = ["DecisionQuery", "get_decision", "query_decisions"]

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


@dataclass(frozen=True)
class DecisionQuery:
    """Filters for :func:`query_decisions`; None means "any"."""

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
    """Keyset position: return rows strictly older than this ``(timestamp, decision_id)``."""
    limit: int = 50


def _item(row: asyncpg.Record) -> dict[str, Any]:
    item = dict(row)
    item["timestamp"] = item["timestamp"].isoformat()
    return item


async def query_decisions(
    conn: asyncpg.Connection | asyncpg.Pool, tenant: str, environment: str, q: DecisionQuery
) -> list[dict[str, Any]]:
    """Return up to ``q.limit`` events newest first (by ``timestamp``, then ``decision_id``)."""
    where = ["a.tenant = $1", "a.environment = $2"]
    args: list[Any] = [tenant, environment]

    def add(sql: str, value: Any) -> None:
        args.append(value)
        where.append(sql.format(f"${len(args)}"))

    for column in ("subject", "server", "tool", "allowed", "action"):
        value = getattr(q, column)
        if value is not None:
            add(f"a.{column} = {{}}", value)
    if q.since is not None:
        add('a."timestamp" >= {}', q.since)
    if q.until is not None:
        add('a."timestamp" < {}', q.until)
    if q.after is not None:
        args.extend(q.after)
        where.append(f'(a."timestamp", a.decision_id) < (${len(args) - 1}, ${len(args)})')
    args.append(q.limit)
    sql = (
        f"SELECT {_ITEM_COLUMNS} FROM audit_decisions a WHERE {' AND '.join(where)}"
        f' ORDER BY a."timestamp" DESC, a.decision_id DESC LIMIT ${len(args)}'
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
