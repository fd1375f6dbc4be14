"""The projection aggregate: compiled, versioned routing tables and OPA bundles."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg

__all__ = [
    "NOTIFY_CHANNEL",
    "StoredProjection",
    "get_projection",
    "insert_projection",
    "latest_version",
    "lock_compiler",
    "next_version",
]

NOTIFY_CHANNEL = "gateway_projection"
"""LISTEN/NOTIFY channel; the payload is the new projection version (decimal text)."""
_COMPILER_LOCK = 0x7072_6F6A_6563_7401 & 0x7FFF_FFFF_FFFF_FFFF
"""Transaction advisory lock key serialising compilations across processes."""

_LOCK = "SELECT pg_advisory_xact_lock($1)"
_NEXT = "SELECT nextval(pg_get_serial_sequence('projections', 'version'))"
_INSERT = """
INSERT INTO projections (version, tenant, environment, policy_version, revision, routing_table, bundle, bundle_sha256)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
"""
_NOTIFY = "SELECT pg_notify($1, $2)"
_LATEST = "SELECT max(version) FROM projections WHERE tenant = $1 AND environment = $2"
_SELECT = """
SELECT version, policy_version, revision, routing_table, {bundle} AS bundle, bundle_sha256, created_at
FROM projections WHERE tenant = $1 AND environment = $2 AND version = $3
"""


@dataclass(frozen=True)
class StoredProjection:
    """One compiled projection as stored."""

    version: int
    policy_version: int | None
    revision: str
    routing_table: dict[str, Any]
    bundle: bytes | None
    """The gzipped tarball; None when fetched without it."""
    bundle_sha256: str


async def lock_compiler(conn: asyncpg.Connection) -> None:
    """Take the compiler lock until the current transaction ends (call first in it)."""
    await conn.execute(_LOCK, _COMPILER_LOCK)


async def next_version(conn: asyncpg.Connection) -> int:
    """Reserve the next projection version (a sequence; gaps are possible, order is not violated)."""
    return int(await conn.fetchval(_NEXT))


async def insert_projection(
    conn: asyncpg.Connection, tenant: str, environment: str, projection: StoredProjection
) -> None:
    """Store ``projection`` and queue ``NOTIFY gateway_projection, '<version>'`` (sent on commit)."""
    await conn.execute(
        _INSERT,
        projection.version,
        tenant,
        environment,
        projection.policy_version,
        projection.revision,
        projection.routing_table,
        projection.bundle,
        projection.bundle_sha256,
    )
    await conn.execute(_NOTIFY, NOTIFY_CHANNEL, str(projection.version))


async def latest_version(conn: asyncpg.Connection | asyncpg.Pool, tenant: str, environment: str) -> int:
    """Return the desired (newest) projection version of the scope, 0 when none exists."""
    return int(await conn.fetchval(_LATEST, tenant, environment) or 0)


async def get_projection(
    conn: asyncpg.Connection | asyncpg.Pool, tenant: str, environment: str, version: int, *, with_bundle: bool = True
) -> StoredProjection | None:
    """Return projection ``version`` of the scope, or None."""
    row = await conn.fetchrow(
        _SELECT.format(bundle="bundle" if with_bundle else "NULL::bytea"), tenant, environment, version
    )
    if row is None:
        return None
    return StoredProjection(
        version=row["version"],
        policy_version=row["policy_version"],
        revision=row["revision"],
        routing_table=row["routing_table"],
        bundle=row["bundle"],
        bundle_sha256=row["bundle_sha256"],
    )
