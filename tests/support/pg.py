"""Throwaway PostgreSQL databases for tests (sync API over asyncpg)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import asyncpg

from gateway.devtools import stack
from gateway.devtools.stack import quote_ident, with_database

REPO_ROOT = Path(__file__).resolve().parents[2]
ENSURE_POSTGRES = REPO_ROOT / "deploy" / "scripts" / "ensure-postgres.sh"


def admin_url_from_env_or_script() -> str:
    """``$DATABASE_URL`` or the last stdout line of ensure-postgres.sh."""
    url = os.environ.get("DATABASE_URL", "").strip()
    if url:
        return url
    res = subprocess.run(
        ["bash", str(ENSURE_POSTGRES)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    lines = [ln for ln in res.stdout.splitlines() if ln.strip()]
    if res.returncode != 0 or not lines:
        raise RuntimeError(
            f"{ENSURE_POSTGRES} failed (rc={res.returncode}); set DATABASE_URL or run "
            f"'make postgres'.\nstdout:\n{res.stdout}\nstderr:\n{res.stderr}"
        )
    return lines[-1].strip()


async def _create(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        await conn.execute(f"CREATE DATABASE {quote_ident(name)}")
    finally:
        await conn.close()


async def _drop(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url, timeout=10)
    try:
        await stack.drop_database(conn, name)
    finally:
        await conn.close()


def create_database(admin_url: str, prefix: str = "gwtest_") -> tuple[str, str]:
    """Create ``<prefix><hex>``; return (name, url)."""
    name = f"{prefix}{uuid.uuid4().hex[:16]}"
    asyncio.run(_create(admin_url, name))
    return name, with_database(admin_url, name)


def drop_database(admin_url: str, name: str) -> None:
    asyncio.run(_drop(admin_url, name))


@contextlib.contextmanager
def throwaway_database(admin_url: str, prefix: str = "gwtest_") -> Iterator[str]:
    """Yield the URL of a fresh empty database; drop it (FORCE) afterwards."""
    name, url = create_database(admin_url, prefix)
    try:
        yield url
    finally:
        drop_database(admin_url, name)
