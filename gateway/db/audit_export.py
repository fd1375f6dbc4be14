"""Streaming reads of the audit trails for export: a server-side cursor, constant memory.

Each generator holds one connection in a read-only ``REPEATABLE READ`` transaction (one
snapshot: rows ingested while the export runs are not half-included) and fetches
``prefetch`` rows at a time from a PostgreSQL cursor, so memory does not grow with the number
of rows. Closing the generator early (the client went away) ends the transaction.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import asyncpg

from gateway.db.audit import DecisionQuery, decision_where, event_columns
from gateway.db.audit_control_plane import (
    CONTROL_PLANE_SELECT,
    ControlPlaneQuery,
    control_plane_item,
    control_plane_where,
)

__all__ = ["PREFETCH", "stream_control_plane", "stream_decisions"]

PREFETCH = 1000
"""Rows fetched from the cursor per round trip."""


async def stream_decisions(
    conn: asyncpg.Connection, tenant: str, environment: str, q: DecisionQuery, *, prefetch: int = PREFETCH
) -> AsyncGenerator[dict[str, Any], None]:
    """Yield every runtime event matching ``q`` (``q.limit`` ignored) in ``q.order``.

    Each item has the :data:`~gateway.db.audit_ingest.EVENT_FIELDS` keys; ``timestamp`` is a
    ``datetime``, ``reasons`` a list. ``conn`` must not be inside a transaction.
    """
    where, args = decision_where(tenant, environment, q)
    direction = "DESC" if q.order == "desc" else "ASC"
    sql = (
        f"SELECT {event_columns()} FROM audit_decisions a WHERE {where}"
        f' ORDER BY a."timestamp" {direction}, a.decision_id {direction}'
    )
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        async for row in conn.cursor(sql, *args, prefetch=prefetch):
            yield dict(row)


async def stream_control_plane(
    conn: asyncpg.Connection, tenant: str, environment: str, q: ControlPlaneQuery, *, prefetch: int = PREFETCH
) -> AsyncGenerator[dict[str, Any], None]:
    """Yield every control-plane trail row matching ``q`` (``q.limit`` ignored) in ``q.order``.

    Items as :func:`gateway.db.admin.control_plane_item` (``timestamp`` ISO 8601).
    ``conn`` must not be inside a transaction.
    """
    where, args = control_plane_where(tenant, environment, q)
    direction = "DESC" if q.order == "desc" else "ASC"
    sql = (
        f"SELECT {CONTROL_PLANE_SELECT} FROM control_plane_audit WHERE {where}"
        f' ORDER BY "timestamp" {direction}, id {direction}'
    )
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        async for row in conn.cursor(sql, *args, prefetch=prefetch):
            yield control_plane_item(row)
