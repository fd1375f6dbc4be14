"""Session events (migration 0017): ``DELETE`` and ``logging/setLevel`` of sealed MCP sessions,
shared by every data plane through the control plane (:mod:`gateway.controlplane.session_events`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

__all__ = ["SETTLE_SECONDS", "SessionEvent", "append_events", "read_events"]

SETTLE_SECONDS = 5
"""Seconds after which an event's sequence number is taken as settled. Rows commit out of
sequence order (``bigserial`` is taken before commit), so a reader's cursor only moves past
events older than this; newer ones are read again (applying an event twice is harmless)."""

_INSERT = """
INSERT INTO session_events (tenant, environment, session_ref, kind, value, dataplane_id, expires_at)
SELECT $1, $2, e.session_ref, e.kind, e.value, $3, e.expires_at
FROM unnest($4::text[], $5::text[], $6::text[], $7::timestamptz[]) AS e(session_ref, kind, value, expires_at)
"""
_PURGE = "DELETE FROM session_events WHERE expires_at <= now()"
_READ = """
SELECT seq, session_ref, kind, value, expires_at, created_at <= now() - make_interval(secs => $5) AS settled
FROM session_events
WHERE tenant = $1 AND environment = $2 AND seq > $3 AND expires_at > now()
ORDER BY seq
LIMIT $4
"""


@dataclass(frozen=True, slots=True)
class SessionEvent:
    """One event: ``kind`` ``ended`` (value None) or ``log_level`` (value the level)."""

    seq: int
    session_ref: str
    kind: str
    value: str | None
    expires_at: datetime


async def append_events(
    conn: asyncpg.Connection | asyncpg.Pool,
    tenant: str,
    environment: str,
    dataplane_id: str,
    events: list[tuple[str, str, str | None, datetime]],
) -> None:
    """Store ``events`` (``(session_ref, kind, value, expires_at)``) in one statement, and
    drop the expired ones."""
    refs, kinds, values, expiries = (list(col) for col in zip(*events, strict=True)) if events else ([], [], [], [])
    await conn.execute(_INSERT, tenant, environment, dataplane_id, refs, kinds, values, expiries)
    await conn.execute(_PURGE)


async def read_events(
    conn: asyncpg.Connection | asyncpg.Pool, tenant: str, environment: str, after: int, limit: int
) -> tuple[list[SessionEvent], int]:
    """Unexpired events with ``seq > after`` (oldest first, at most ``limit``), and the
    cursor to read from next: the last *settled* event's ``seq`` (:data:`SETTLE_SECONDS`)."""
    rows = await conn.fetch(_READ, tenant, environment, after, limit, float(SETTLE_SECONDS))
    cursor = after
    for row in rows:
        if not row["settled"]:
            break
        cursor = row["seq"]
    events = [SessionEvent(r["seq"], r["session_ref"], r["kind"], r["value"], r["expires_at"]) for r in rows]
    return events, cursor
