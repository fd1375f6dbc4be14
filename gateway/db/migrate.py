"""Schema migrations: ordered plain ``.sql`` files applied once under an advisory lock."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import asyncpg

__all__ = ["MIGRATIONS_DIR", "MigrationStatus", "apply_migrations", "available_migrations", "migration_status"]

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
"""Where the ``NNNN_name.sql`` files live (shipped as package data)."""
_LOCK_KEY = 0x6761_7465_7761_7901 & 0x7FFF_FFFF_FFFF_FFFF
"""pg advisory lock key serialising migrators across processes."""

LOCK_TIMEOUT = 10.0
"""Seconds a migration statement may wait for a lock (``SET LOCAL lock_timeout``); beyond it
the migration fails (``asyncpg.exceptions.LockNotAvailableError``) and is rolled back."""

_CREATE_LEDGER = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     text PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True, slots=True)
class MigrationStatus:
    """Where a database stands against the migrations this version ships.

    Attributes:
        applied: Versions of this release recorded in ``schema_migrations`` (ordered).
        pending: Versions of this release not applied yet (ordered; applied at start-up or by
            ``gateway migrate``).
        unknown: Versions recorded by a *newer* release (this one has no such file): the
            schema is ahead, as after a rollback of the binary (docs/operations.md).
    """

    applied: list[str]
    pending: list[str]
    unknown: list[str]


async def migration_status(conn: asyncpg.Connection, directory: Path = MIGRATIONS_DIR) -> MigrationStatus:
    """Compare ``schema_migrations`` with the files in ``directory`` (read-only)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")} if exists else set()
    ours = [p.stem for p in available_migrations(directory)]
    return MigrationStatus(
        applied=[v for v in ours if v in done],
        pending=[v for v in ours if v not in done],
        unknown=sorted(done - set(ours)),
    )


def available_migrations(directory: Path = MIGRATIONS_DIR) -> list[Path]:
    """Return the migration files, ordered by name (``0001_...sql`` first)."""
    return sorted(p for p in directory.glob("*.sql") if p.is_file())


async def apply_migrations(conn: asyncpg.Connection, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply every migration not yet recorded in ``schema_migrations``.

    Each file runs in its own transaction together with its ledger row, so a
    failing file leaves no trace. Concurrent callers (several control-plane
    processes starting at once) serialise on a session advisory lock; the
    second one finds nothing left to do.

    Example::

        async with pool.acquire() as conn:
            applied = await apply_migrations(conn)

    Args:
        conn: A connection not inside a transaction.
        directory: Folder holding the ``.sql`` files.

    Returns:
        The versions (file stems) applied by this call, in order; empty when up to date.

    Raises:
        asyncpg.PostgresError: A migration failed; it was rolled back.
    """
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(_CREATE_LEDGER)
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        applied: list[str] = []
        for path in available_migrations(directory):
            if path.stem in done:
                continue
            async with conn.transaction():
                # A migration waits at most this long for a table lock held by live traffic, rather
                # than queueing every later query on that table behind it (then fails, rolled back).
                await conn.execute(f"SET LOCAL lock_timeout = '{int(LOCK_TIMEOUT * 1000)}ms'")
                await conn.execute(path.read_text())
                await conn.execute("INSERT INTO schema_migrations (version) VALUES ($1)", path.stem)
            log.info("applied migration %s", path.stem)
            applied.append(path.stem)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)
