"""The audit aggregate: runtime decision events and OPA decision-log events, joinable by decision id."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

__all__ = [
    "EVENT_FIELDS",
    "DecisionQuery",
    "get_decision",
    "insert_decision_events",
    "insert_opa_logs",
    "pg_safe",
    "query_decisions",
]

EVENT_FIELDS = (
    "decision_id",
    "timestamp",
    "tenant",
    "environment",
    "dataplane_id",
    "subject",
    "client_id",
    "action",
    "server",
    "tool",
    "allowed",
    "reasons",
    "policy_revision",
    "projection_version",
    "latency_ms",
    "status",
    "error_category",
    "arguments_sha256",
    "result_sha256",
    "session_id",
    "protocol_version",
)
"""The only columns a runtime audit event may fill, in insert order."""

_QUOTED = ", ".join(f'"{f}"' if f == "timestamp" else f for f in EVENT_FIELDS)
_INSERT_EVENT = f"""
INSERT INTO audit_decisions ({_QUOTED})
VALUES ({", ".join(f"${i}" for i in range(1, len(EVENT_FIELDS) + 1))})
ON CONFLICT (decision_id) DO NOTHING
"""
_INSERT_OPA_LOG = """
INSERT INTO opa_decision_logs (decision_id, tenant, environment, opa_id, path, revision, "timestamp",
                               input, result, erased, masked)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (decision_id) DO NOTHING
"""
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


def pg_safe(value: Any) -> Any:
    """``value`` with every U+0000 in strings (and object keys) replaced by U+FFFD.

    PostgreSQL ``text`` and ``jsonb`` cannot hold NUL; one NUL in a client-chosen
    string would otherwise fail a whole batch, and audit is all-or-nothing.
    """
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, dict):
        return {pg_safe(k): pg_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(pg_safe(v) for v in value)
    return value


async def insert_decision_events(conn: asyncpg.Connection | asyncpg.Pool, events: Sequence[Sequence[Any]]) -> None:
    """Insert validated events (tuples ordered as :data:`EVENT_FIELDS`); duplicates are ignored."""
    await conn.executemany(_INSERT_EVENT, [pg_safe(tuple(e)) for e in events])


async def insert_opa_logs(
    conn: asyncpg.Connection | asyncpg.Pool, tenant: str, environment: str, logs: Sequence[dict[str, Any]]
) -> None:
    """Insert OPA decision-log events (already normalised); duplicates are ignored.

    Args:
        logs: Dicts with ``decision_id, opa_id, path, revision, timestamp (datetime|None),
            input, result, erased, masked``.
    """
    await conn.executemany(
        _INSERT_OPA_LOG,
        [
            pg_safe(
                (
                    e["decision_id"],
                    tenant,
                    environment,
                    e["opa_id"],
                    e["path"],
                    e["revision"],
                    e["timestamp"],
                    e["input"],
                    e["result"],
                    e["erased"],
                    e["masked"],
                )
            )
            for e in logs
        ],
    )


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
