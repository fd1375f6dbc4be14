"""Migrations apply from an empty database, are recorded, and re-run as a no-op."""

from __future__ import annotations

import anyio
import asyncpg
import pytest

from gateway.config import Secret
from gateway.db import apply_migrations, create_pool
from gateway.db.migrate import available_migrations

pytestmark = [pytest.mark.anyio, pytest.mark.db]

TABLES = {
    "schema_migrations",
    "mcp_servers",
    "mcp_server_tools",
    "policy_versions",
    "projections",
    "data_planes",
    "opa_instances",
    "audit_decisions",
    "opa_decision_logs",
}


async def test_migrations_create_the_schema_from_empty_and_record_each_file(database_url: str) -> None:
    async with create_pool(Secret(database_url)) as pool, pool.acquire() as conn:
        applied = await apply_migrations(conn)
        assert applied == [p.stem for p in available_migrations()]
        tables = {r["tablename"] for r in await conn.fetch("select tablename from pg_tables where schemaname='public'")}
        assert TABLES <= tables
        recorded = [r["version"] for r in await conn.fetch("select version from schema_migrations order by 1")]
        assert recorded == applied


async def test_rerunning_migrations_applies_nothing(database_url: str) -> None:
    async with create_pool(Secret(database_url)) as pool, pool.acquire() as conn:
        await apply_migrations(conn)
        assert await apply_migrations(conn) == []


async def test_concurrent_migrators_serialise_on_the_advisory_lock(database_url: str) -> None:
    results: list[list[str]] = []

    async def migrate() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            results.append(await apply_migrations(conn))
        finally:
            await conn.close()

    async with anyio.create_task_group() as tg:
        for _ in range(3):
            tg.start_soon(migrate)
    assert sorted(len(r) for r in results) == [0, 0, len(available_migrations())]


async def test_pool_decodes_jsonb_with_orjson_and_sets_statement_timeout(database_url: str) -> None:
    async with create_pool(Secret(database_url), statement_timeout=1.5) as pool, pool.acquire() as conn:
        assert await conn.fetchval("select $1::jsonb", {"a": [1, "x"]}) == {"a": [1, "x"]}
        assert await conn.fetchval("show statement_timeout") == "1500ms"
    async with create_pool(Secret(database_url), statement_timeout=0.2) as pool, pool.acquire() as conn:
        with pytest.raises(asyncpg.QueryCanceledError):
            await conn.execute("select pg_sleep(2)")
