"""Approval pins prompts and records capabilities next to tools (real PostgreSQL)."""

from __future__ import annotations

import asyncpg
import pytest

from gateway.db import servers
from gateway.db.servers import PinnedPrompt, PinnedTool
from gateway.errors import ConflictError

pytestmark = [pytest.mark.anyio, pytest.mark.db]

T, E = "tenant_local", "prod"
CAPS = {"tools": {"listChanged": False}, "prompts": {"listChanged": False}, "resources": {}, "logging": {}}


def _prompt(name: str, *args: str) -> PinnedPrompt:
    return PinnedPrompt({"name": name, "arguments": [{"name": a, "required": True} for a in args]}, name[0] * 64)


async def test_approval_pins_prompts_in_order_and_records_capabilities(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await servers.create_server(conn, T, E, name="a", transport="streamable_http", url="http://x", description="")
        assert (await servers.get_server(conn, T, E, "a"))["capabilities"] == {}
        tools = [PinnedTool({"name": "t", "inputSchema": {"type": "object"}}, "t" * 64)]
        prompts = [_prompt("zz", "city"), _prompt("aa")]
        rec = await servers.approve_server(conn, T, E, "a", tools, prompts=prompts, capabilities=CAPS)
        assert [p["name"] for p in rec["prompts"]] == ["zz", "aa"] and rec["capabilities"] == CAPS
        got = await servers.get_server(conn, T, E, "a")
        assert got["prompts"] == [
            {**prompts[0].definition, "sha256": "z" * 64},
            {**prompts[1].definition, "sha256": "a" * 64},
        ]
        assert got["capabilities"] == CAPS
        [listed] = await servers.list_servers(conn, T, E)
        assert [p["name"] for p in listed["prompts"]] == ["zz", "aa"]
        [approved] = await servers.approved_servers_with_tools(conn, T, E)
        assert approved["prompts"] == [p.definition for p in prompts] and approved["capabilities"] == CAPS
        # re-approval replaces the pins and the capabilities
        await servers.approve_server(conn, T, E, "a", tools, prompts=prompts[1:], capabilities={"tools": {}})
        got = await servers.get_server(conn, T, E, "a")
        assert [p["name"] for p in got["prompts"]] == ["aa"] and got["capabilities"] == {"tools": {}}


async def test_two_prompts_with_one_name_are_a_conflict_and_change_nothing(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        await servers.create_server(conn, T, E, name="b", transport="streamable_http", url="http://x", description="")
        with pytest.raises(ConflictError):
            async with conn.transaction():
                await servers.approve_server(conn, T, E, "b", [], prompts=[_prompt("p"), _prompt("p")])
        got = await servers.get_server(conn, T, E, "b")
        assert got["status"] == "pending_approval" and got["prompts"] == []
