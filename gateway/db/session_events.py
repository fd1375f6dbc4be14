"""Session events (migration 0017): ``DELETE`` and ``logging/setLevel`` of sealed MCP sessions,
shared by every data plane through the control plane (:mod:`gateway.controlplane.session_events`).

Sequence numbers are visible in commit order: every insert takes a transaction-scoped
advisory lock before it draws its ``seq`` and holds it until it commits, so a reader that saw
``seq = n`` can never later see a row with a smaller one. A reader's cursor is therefore just
the last ``seq`` it read, and no event is read twice or skipped, however slow a commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import asyncpg

__all__ = ["SessionEvent", "append_events", "read_events"]

_LOCK_KEY = 0x7365_7373_6576_7473 & 0x7FFF_FFFF_FFFF_FFFF
"""Advisory lock serialising inserts (``seq`` drawn and committed in one order)."""

_INSERT = """
INSERT INTO session_events (tenant, environment, session_ref, kind, value, dataplane_id, expires_at)
SELECT $1, $2, e.session_ref, e.kind, e.value, $3, e.expires_at
FROM unnest($4::text[], $5::text[], $6::text[], $7::timestamptz[]) WITH ORDINALITY
     AS e(session_ref, kind, value, expires_at, n)
ORDER BY e.n
"""
_PURGE = "DELETE FROM session_events WHERE expires_at <= now()"
_READ = """
SELECT seq, session_ref, kind, value, expires_at
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
    pool: asyncpg.Pool,
    tenant: str,
    environment: str,
    dataplane_id: str,
    events: list[tuple[str, str, str | None, datetime]],
) -> None:
    """Store ``events`` (``(session_ref, kind, value, expires_at)``, in this order) in one
    transaction under the insert lock, and drop the expired ones."""
    refs, kinds, values, expiries = (list(col) for col in zip(*events, strict=True)) if events else ([], [], [], [])
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _LOCK_KEY)
        await conn.execute(_INSERT, tenant, environment, dataplane_id, refs, kinds, values, expiries)
    await pool.execute(_PURGE)


async def read_events(
    conn: asyncpg.Connection | asyncpg.Pool, tenant: str, environment: str, after: int, limit: int
) -> tuple[list[SessionEvent], int]:
    """Unexpired events with ``seq > after`` (oldest first, at most ``limit``), and the cursor
    to read from next (the last one's ``seq``, or ``after``)."""
    rows = await conn.fetch(_READ, tenant, environment, after, limit)
    events = [SessionEvent(r["seq"], r["session_ref"], r["kind"], r["value"], r["expires_at"]) for r in rows]
    return events, events[-1].seq if events else after
