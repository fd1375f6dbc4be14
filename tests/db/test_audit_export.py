"""The export reads through a server-side cursor: its memory does not grow with the row count.

Measured with tracemalloc (every Python allocation, asyncpg's records included) while 1,000 and
then 10,000 rows are streamed, once from :func:`gateway.db.audit_export.stream_decisions` and
once through the real ``GET /v1/audit/export`` handler (the ASGI app, bodies discarded as they
are sent). Reading the rows with ``fetch()`` instead multiplies the peak by about ten.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import pytest

from gateway.config import Secret
from gateway.controlplane import controlplane_resources, create_controlplane_app
from gateway.db import apply_migrations, audit_export, create_pool
from gateway.db.audit import DecisionQuery
from gateway.db.audit_partitions import PartitionMap
from tests.controlplane.helpers import ADMIN_TOKEN, make_config, with_state

pytestmark = [pytest.mark.anyio, pytest.mark.db]

T, E = "tenant_local", "prod"
BASE = datetime(2026, 2, 1, tzinfo=UTC)
SMALL, LARGE = 1_000, 10_000


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    async with create_pool(Secret(database_url)) as pool:
        async with pool.acquire() as conn:
            await apply_migrations(conn)
        await PartitionMap().ensure_range(pool, BASE, BASE + timedelta(days=1))
        yield pool


async def _fill(pool: asyncpg.Pool, subject: str, n: int) -> None:
    """``n`` events of ``subject`` with ~300 bytes of text each, straight into the table (with
    placeholder chain links: the control plane would otherwise link them when it starts)."""
    await pool.execute(
        """
        INSERT INTO audit_decisions (decision_id, tenant, environment, "timestamp", subject, server, tool, allowed,
                                     reasons, status, latency_ms, arguments_sha256, policy_revision, chain_seq,
                                     chain_hash)
        SELECT $1 || '-' || i, $2, $3, $4::timestamptz + i * interval '1 millisecond', $1, 'demo', 'echo', i % 2 = 0,
               jsonb_build_array('reason_' || i, repeat('x', 100)), 'ok', i, repeat('a', 64), 'rev-' || i, i, '\\x00'
        FROM generate_series(1, $5) AS i
        """,
        subject,
        T,
        E,
        BASE,
        n,
    )


async def _peak(consume: Any) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        await consume()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


async def test_streaming_from_the_database_keeps_memory_flat(pool: asyncpg.Pool) -> None:
    await _fill(pool, "small", SMALL)
    await _fill(pool, "large", LARGE)

    async def consume(subject: str, expected: int) -> None:
        count = 0
        async with pool.acquire() as conn:
            async for _ in audit_export.stream_decisions(conn, T, E, DecisionQuery(subject=subject), prefetch=200):
                count += 1
        assert count == expected

    small = await _peak(lambda: consume("small", SMALL))
    large = await _peak(lambda: consume("large", LARGE))
    assert large < 2 * small, (small, large)


async def test_the_export_route_keeps_memory_flat(database_url: str, opa_bin: Path, pool: asyncpg.Pool) -> None:
    await _fill(pool, "small", SMALL)
    await _fill(pool, "large", LARGE)
    config = make_config(database_url, opa_bin)
    app = create_controlplane_app(config)
    async with controlplane_resources(config) as state:
        wrapped = with_state(app, state)

        async def export(subject: str, fmt: str) -> None:
            sent = {"bytes": 0, "status": 0, "lines": 0}

            requested = False

            async def receive() -> dict[str, Any]:
                nonlocal requested
                if requested:  # the client stays connected until the response is complete
                    await anyio.sleep_forever()
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}

            async def send(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    sent["status"] = message["status"]
                elif message["type"] == "http.response.body":
                    sent["bytes"] += len(message.get("body", b""))
                    sent["lines"] += message.get("body", b"").count(b"\n")

            scope = {
                "type": "http",
                "asgi": {"version": "3.0"},
                "http_version": "1.1",
                "method": "GET",
                "scheme": "http",
                "path": "/v1/audit/export",
                "raw_path": b"/v1/audit/export",
                "query_string": f"subject={subject}&format={fmt}".encode(),
                "root_path": "",
                "headers": [(b"host", b"cp"), (b"authorization", f"Bearer {ADMIN_TOKEN}".encode())],
                "client": ("127.0.0.1", 1),
                "server": ("cp", 80),
            }
            await wrapped(scope, receive, send)  # type: ignore[arg-type]
            rows = SMALL if subject == "small" else LARGE
            assert sent["status"] == 200 and sent["lines"] == rows + (fmt == "csv")

        for fmt in ("ndjson", "csv"):
            await export("small", fmt)  # warm up: caches, prepared statements, the policy
            small = await _peak(lambda fmt=fmt: export("small", fmt))
            large = await _peak(lambda fmt=fmt: export("large", fmt))
            assert large < 2 * small, (fmt, small, large)
