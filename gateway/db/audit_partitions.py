"""Time partitions of the audit tables: which partition holds a timestamp, creating them, dropping them.

Each audit table (:mod:`gateway.db.audit_streams`) is ``PARTITION BY RANGE ("timestamp")``;
its partitions are named ``<table>_p<YYYYMMDD>`` after their lower bound (UTC) and registered
in ``audit_partitions``. The interval (``day``, ``week`` from Monday, ``month``) applies to new
partitions; a partition is clipped to its neighbours, so changing the interval never overlaps.
Partitions are created in their own short transaction under an advisory lock (creating one
locks the parent table), ahead of time by the maintenance task and on demand by ingest.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import anyio
import asyncpg

from gateway.db.audit_streams import STREAMS, Stream

__all__ = [
    "INTERVALS",
    "Partition",
    "PartitionMap",
    "catalog_partitions",
    "interval_bounds",
    "list_partitions",
    "mark_dropped",
    "partition_date",
]

INTERVALS = ("day", "week", "month")
"""Partition intervals (``GATEWAY_AUDIT_PARTITION_INTERVAL``)."""
_CREATE_LOCK = 0x6761_7465_7761_7902
"""Advisory lock key serialising partition creation across control-plane processes."""


@dataclass(frozen=True, slots=True)
class Partition:
    """One physical partition: ``[lower, upper)`` of ``stream``'s table, named ``name``."""

    stream: str
    name: str
    lower: datetime
    upper: datetime
    dropped_at: datetime | None = None


def interval_bounds(ts: datetime, interval: str) -> tuple[datetime, datetime]:
    """The ``[lower, upper)`` UTC bounds of the ``interval`` that holds ``ts``.

    Raises:
        ValueError: ``interval`` is not one of :data:`INTERVALS`.
    """
    day = ts.astimezone(UTC).date()
    if interval == "day":
        start, end = day, day + timedelta(days=1)
    elif interval == "week":
        start = day - timedelta(days=day.weekday())
        end = start + timedelta(days=7)
    elif interval == "month":
        start = day.replace(day=1)
        end = date(start.year + start.month // 12, start.month % 12 + 1, 1)
    else:
        raise ValueError(f"unknown partition interval {interval!r}; use one of {', '.join(INTERVALS)}")
    return _midnight(start), _midnight(end)


def partition_date(name: str) -> datetime | None:
    """The lower bound a partition's name gives (``<table>_pYYYYMMDD``, UTC midnight), or None."""
    m = re.search(r"_p(\d{8})$", name)
    if m is None:
        return None
    try:
        return datetime.strptime(m.group(1), "%Y%m%d").replace(tzinfo=UTC)
    except ValueError:
        return None


def _midnight(d: date) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=UTC)


def _row(r: asyncpg.Record) -> Partition:
    return Partition(r["stream"], r["name"], r["lower_bound"], r["upper_bound"], r["dropped_at"])


async def list_partitions(conn: asyncpg.Connection | asyncpg.Pool, stream: str | None = None) -> list[Partition]:
    """Registered partitions (live and dropped), by stream then lower bound."""
    rows = await conn.fetch(
        "SELECT stream, name, lower_bound, upper_bound, dropped_at FROM audit_partitions"
        " WHERE $1::text IS NULL OR stream = $1 ORDER BY stream, lower_bound",
        stream,
    )
    return [_row(r) for r in rows]


_CATALOG = """
SELECT parent.relname AS parent, child.relname AS name, pg_get_expr(child.relpartbound, child.oid) AS bound
FROM pg_inherits i
JOIN pg_class parent ON parent.oid = i.inhparent
JOIN pg_class child ON child.oid = i.inhrelid
WHERE parent.relname = ANY($1::text[]) AND parent.relnamespace = child.relnamespace
  AND parent.relnamespace = (SELECT oid FROM pg_namespace WHERE nspname = current_schema())
"""
_BOUND = re.compile(r"FOR VALUES FROM \('([^']+)'\) TO \('([^']+)'\)")


async def catalog_partitions(conn: asyncpg.Connection | asyncpg.Pool) -> list[Partition]:
    """The audit tables' partitions as PostgreSQL itself knows them (``pg_inherits`` and each
    partition's bound), by stream then lower bound.

    The source of truth for retention and verification: the ``audit_partitions`` registry is
    a cache for ingest, and a row of it proves nothing (anyone who can write the database
    could have changed it).
    """
    by_table = {s.table: s.name for s in STREAMS}
    out = []
    for r in await conn.fetch(_CATALOG, list(by_table)):
        m = _BOUND.fullmatch(r["bound"] or "")
        if m is None:
            continue  # not a range partition of ours (e.g. a DEFAULT partition someone attached)
        lower, upper = (datetime.fromisoformat(v).astimezone(UTC) for v in m.groups())
        out.append(Partition(by_table[r["parent"]], r["name"], lower, upper))
    return sorted(out, key=lambda p: (p.stream, p.lower))


async def mark_dropped(conn: asyncpg.Connection, partition: Partition, at: datetime) -> None:
    """Drop a partition's table and record it (the caller's transaction; retention)."""
    await conn.execute(f'DROP TABLE IF EXISTS "{partition.name}"')
    await conn.execute("UPDATE audit_partitions SET dropped_at = $2 WHERE name = $1", partition.name, at)
    await conn.execute(
        "UPDATE audit_chain_heads SET dropped_at = $2 WHERE stream = $3 AND partition = $1 AND dropped_at IS NULL",
        partition.name,
        at,
        partition.stream,
    )


@dataclass
class PartitionMap:
    """A process's view of the registry: the partition of a timestamp, created when missing.

    Args:
        interval: ``day``, ``week`` or ``month`` for new partitions.
    """

    interval: str = "day"
    _by_stream: dict[str, list[Partition]] = field(default_factory=dict)
    _lock: anyio.Lock | None = None
    """Serialises this process's loads and creations (a load finishing late must not replace a
    newer map); created on first use, inside the event loop."""

    def _mutex(self) -> anyio.Lock:
        if self._lock is None:
            self._lock = anyio.Lock()
        return self._lock

    def invalidate(self) -> None:
        """Forget the cached registry (after retention or a failed insert)."""
        self._by_stream.clear()

    def _find(self, stream: str, ts: datetime) -> Partition | None:
        parts = self._by_stream.get(stream, [])
        i = bisect.bisect_right([p.lower for p in parts], ts) - 1
        if i >= 0 and parts[i].lower <= ts < parts[i].upper:
            return parts[i]
        return None

    async def _load(self, conn: asyncpg.Connection | asyncpg.Pool) -> None:
        loaded: dict[str, list[Partition]] = {s.name: [] for s in STREAMS}
        for p in await list_partitions(conn):
            loaded.setdefault(p.stream, []).append(p)
        self._by_stream = loaded  # swapped whole: a concurrent lookup never sees a half-built map

    async def resolve(self, pool: asyncpg.Pool, stream: Stream, timestamps: list[datetime]) -> list[Partition]:
        """The partition of each timestamp, creating the missing ones (each in its own transaction).

        A timestamp whose partition retention dropped maps to that dropped partition (the
        caller skips it). Uses its own connection from ``pool`` for creation: call it before
        the ingest transaction, never inside one.
        """
        found = [self._find(stream.name, ts) for ts in timestamps]
        if any(p is None for p in found):
            async with self._mutex():
                if not self._by_stream:
                    await self._load(pool)
                missing = [ts for ts in timestamps if self._find(stream.name, ts) is None]
                if missing:
                    await self._create(pool, stream, missing)
                found = [self._find(stream.name, ts) for ts in timestamps]
        assert all(p is not None for p in found), "a created partition does not cover its timestamp"
        return [p for p in found if p is not None]

    async def ensure_range(self, pool: asyncpg.Pool, start: datetime, end: datetime) -> None:
        """Create every stream's partitions covering ``[start, end)`` (maintenance: ahead of time)."""
        async with self._mutex():
            await self._load(pool)
            for stream in STREAMS:
                points: list[datetime] = []
                ts = start
                while ts < end:
                    points.append(ts)
                    ts = interval_bounds(ts, self.interval)[1]
                missing = [t for t in points if self._find(stream.name, t) is None]
                if missing:
                    await self._create(pool, stream, missing)

    async def _create(self, pool: asyncpg.Pool, stream: Stream, timestamps: list[datetime]) -> None:
        """Create the partitions of ``timestamps`` (caller holds :meth:`_mutex`), each in its
        own transaction (so a batch spanning many days never holds many locks at once) and
        added to this map only once committed. Any failure forgets the map (reloaded next)."""
        try:
            for ts in sorted(timestamps):
                if self._find(stream.name, ts) is not None:
                    continue
                async with pool.acquire() as conn, conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", _CREATE_LOCK & 0x7FFF_FFFF_FFFF_FFFF)
                    await self._load(conn)  # another process may have created it meanwhile
                    if self._find(stream.name, ts) is not None:
                        continue
                    lower, upper = interval_bounds(ts, self.interval)
                    for p in self._by_stream.get(stream.name, []):  # clip to the neighbours
                        if p.upper <= ts:
                            lower = max(lower, p.upper)
                        elif p.lower > ts:
                            upper = min(upper, p.lower)
                    name = f"{stream.table}_p{lower.strftime('%Y%m%d')}"
                    await conn.execute(
                        f'CREATE TABLE "{name}" PARTITION OF {stream.table} FOR VALUES FROM ($$'
                        f"{lower.isoformat()}$$) TO ($${upper.isoformat()}$$)"
                    )
                    await conn.execute(
                        "INSERT INTO audit_partitions (name, stream, lower_bound, upper_bound) VALUES ($1, $2, $3, $4)",
                        name,
                        stream.name,
                        lower,
                        upper,
                    )
                parts = self._by_stream.setdefault(stream.name, [])
                parts.append(Partition(stream.name, name, lower, upper))
                parts.sort(key=lambda p: p.lower)
        except BaseException:
            self.invalidate()
            raise


def describe(p: Partition) -> dict[str, Any]:
    """JSON shape of a partition (``GET /v1/audit/partitions``)."""
    return {
        "stream": p.stream,
        "name": p.name,
        "lower": p.lower.isoformat(),
        "upper": p.upper.isoformat(),
        "dropped_at": p.dropped_at.isoformat() if p.dropped_at else None,
    }
