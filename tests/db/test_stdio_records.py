"""stdio and legacy_sse server records against a real PostgreSQL (migration 0003)."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from gateway.db import servers
from gateway.db.servers import PinnedTool
from gateway.errors import RequestRejected

pytestmark = [pytest.mark.anyio, pytest.mark.db]

T, E = "tenant_local", "prod"
TOOLS = [PinnedTool({"name": "t", "inputSchema": {"type": "object"}}, "0" * 64)]


async def test_a_stdio_record_shows_env_keys_and_reaches_the_projection_only_when_trusted(pool: asyncpg.Pool) -> None:
    launch: dict[str, Any] = {
        "command": "/usr/bin/tool",
        "args": ["--serve"],
        "cwd": "/srv",
        "env": {"B": "2", "A": "secret"},
    }
    async with pool.acquire() as conn:
        created = await servers.create_server(
            conn, T, E, name="local", transport="stdio", url=None, description="", **launch
        )
        assert created["env_keys"] == ["A", "B"] and "env" not in created and "secret" not in str(created)
        assert (created["url"], created["trusted"], created["trusted_at"]) == (None, False, None)
        assert await servers.get_launch(conn, T, E, "local") == launch

        await servers.approve_server(conn, T, E, "local", TOOLS)  # not trusted: never projected
        assert await servers.approved_servers_with_tools(conn, T, E) == []
        approved = await servers.approve_server(conn, T, E, "local", TOOLS, trusted=True)
        assert approved["trusted"] is True and approved["trusted_at"] is not None
        (entry,) = await servers.approved_servers_with_tools(conn, T, E)
        assert entry["trusted"] is True and {k: entry[k] for k in launch} == launch


BAD_FIELDS: list[dict[str, Any]] = [
    {"transport": "stdio", "url": "http://x/mcp", "command": "x", "args": [], "env": {}},
    {"transport": "stdio", "url": None, "command": None, "args": [], "env": {}},
    {"transport": "legacy_sse", "url": None},
    {"transport": "legacy_sse", "url": "http://x/sse", "command": "x", "args": [], "env": {}},
]


async def test_the_check_constraint_keeps_each_transport_to_its_fields(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        for fields in BAD_FIELDS:
            with pytest.raises(RequestRejected) as refused:
                await servers.create_server(conn, T, E, name="bad", description="", **fields)
            assert isinstance(refused.value.__cause__, asyncpg.CheckViolationError), fields
        await servers.create_server(conn, T, E, name="web", transport="legacy_sse", url="http://x/sse", description="")
        assert (await servers.approve_server(conn, T, E, "web", TOOLS))["trusted"] is False
        with pytest.raises(RequestRejected) as refused:  # only stdio records can be trusted
            await servers.approve_server(conn, T, E, "web", TOOLS, trusted=True)
        assert isinstance(refused.value.__cause__, asyncpg.CheckViolationError)
