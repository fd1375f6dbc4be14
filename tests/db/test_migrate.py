"""Migrations apply from an empty database, are recorded, and re-run as a no-op."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anyio
import asyncpg
import orjson
import pytest

import gateway.db.migrate as migrate_module
from gateway.config import Secret
from gateway.db import apply_migrations, create_pool
from gateway.db.migrate import available_migrations, migration_status

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


async def test_an_older_release_runs_on_a_newer_schema_and_reports_what_it_does_not_know(
    database_url: str, tmp_path: Path
) -> None:
    """The rollback procedure of docs/operations.md: the binary goes back, the schema stays."""
    older = tmp_path / "older"
    older.mkdir()
    for path in available_migrations()[:-1]:
        (older / path.name).write_text(path.read_text())
    newest = available_migrations()[-1].stem
    async with create_pool(Secret(database_url)) as pool, pool.acquire() as conn:
        await apply_migrations(conn)  # the newer release migrated

        assert await apply_migrations(conn, older) == []  # the older one starts: nothing to do, no error
        status = await migration_status(conn, older)

    assert status.unknown == [newest] and status.pending == []
    assert status.applied == [p.stem for p in available_migrations()[:-1]]


def test_gateway_migrate_applies_then_reports_as_json(database_url: str) -> None:
    env = {**os.environ, "DATABASE_URL": database_url, "GATEWAY_ADMIN_TOKEN": "migrate-test"}
    cmd = [sys.executable, "-m", "gateway", "migrate"]
    everything = [p.stem for p in available_migrations()]

    before = subprocess.run([*cmd, "--status"], env=env, capture_output=True, text=True, timeout=60, check=True)
    after = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60, check=True)
    again = subprocess.run([*cmd, "--status"], env=env, capture_output=True, text=True, timeout=60, check=True)

    assert orjson.loads(before.stdout) == {"applied": [], "pending": everything, "unknown": []}
    assert orjson.loads(after.stdout) == {"applied": everything, "pending": [], "unknown": []}
    assert orjson.loads(again.stdout) == orjson.loads(after.stdout)


def test_gateway_migrate_without_a_reachable_database_exits_1() -> None:
    env = {**os.environ, "DATABASE_URL": "postgresql://nobody@127.0.0.1:9/none", "GATEWAY_ADMIN_TOKEN": "x"}
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "migrate"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1 and "migration failed" in done.stderr and done.stdout == ""


async def test_a_migration_that_cannot_get_its_lock_fails_fast_and_leaves_no_trace(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Live traffic holding a table must not let a migration queue every later query behind it."""
    monkeypatch.setattr(migrate_module, "LOCK_TIMEOUT", 0.3)
    newer = tmp_path / "newer"
    newer.mkdir()
    for path in available_migrations():
        (newer / path.name).write_text(path.read_text())
    (newer / "9999_add_column.sql").write_text("ALTER TABLE session_events ADD COLUMN note text;")
    async with create_pool(Secret(database_url)) as pool:
        async with pool.acquire() as conn:
            await apply_migrations(conn)
        async with pool.acquire() as reader, reader.transaction():
            await reader.execute("SELECT count(*) FROM session_events")  # holds ACCESS SHARE until the end
            async with pool.acquire() as conn:
                with anyio.fail_after(10), pytest.raises(asyncpg.exceptions.LockNotAvailableError):
                    await apply_migrations(conn, newer)
                status = await migration_status(conn, newer)
    assert status.pending == ["9999_add_column"]


def test_gateway_migrate_with_an_unusable_database_url_exits_2_without_echoing_it() -> None:
    env = {
        **os.environ,
        "DATABASE_URL": "postgresql://u:pw-canary-91@127.0.0.1:notaport/db",
        "GATEWAY_ADMIN_TOKEN": "x",
    }
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "migrate"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "invalid DATABASE_URL" in done.stderr
    assert "pw-canary-91" not in done.stderr + done.stdout
