"""The MCP server registry aggregate: servers and their pinned tool definitions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from gateway.db._errors import map_db_errors
from gateway.errors import NotFound

__all__ = [
    "PinnedTool",
    "approve_server",
    "approved_servers_with_tools",
    "create_server",
    "get_server",
    "list_servers",
]

_COLUMNS = "name, transport, url, description, status, tenant, environment, created_at, approved_at"

_INSERT = f"""
INSERT INTO mcp_servers (tenant, environment, name, transport, url, description)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING {_COLUMNS}
"""
_SELECT_ONE = f"SELECT {_COLUMNS} FROM mcp_servers WHERE tenant = $1 AND environment = $2 AND name = $3"
_SELECT_ALL = f"SELECT {_COLUMNS} FROM mcp_servers WHERE tenant = $1 AND environment = $2 ORDER BY name"
_SELECT_TOOLS = """
SELECT server_name, definition, sha256 FROM mcp_server_tools
WHERE tenant = $1 AND environment = $2 AND ($3::text IS NULL OR server_name = $3)
ORDER BY server_name, position
"""
_DELETE_TOOLS = "DELETE FROM mcp_server_tools WHERE tenant = $1 AND environment = $2 AND server_name = $3"
_INSERT_TOOL = """
INSERT INTO mcp_server_tools (tenant, environment, server_name, tool_name, position, definition, sha256)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""
_APPROVE = f"""
UPDATE mcp_servers SET status = 'approved', approved_at = now()
WHERE tenant = $1 AND environment = $2 AND name = $3
RETURNING {_COLUMNS}
"""


@dataclass(frozen=True)
class PinnedTool:
    """One approved tool: its MCP wire form and the SHA-256 (hex) of its canonical JSON."""

    definition: dict[str, Any]
    sha256: str


def _record(row: asyncpg.Record, tools: list[dict[str, Any]]) -> dict[str, Any]:
    rec = dict(row)
    rec["created_at"] = rec["created_at"].isoformat()
    rec["approved_at"] = rec["approved_at"].isoformat() if rec["approved_at"] else None
    rec["tools"] = tools
    return rec


def _tool_view(row: asyncpg.Record) -> dict[str, Any]:
    return {**row["definition"], "sha256": row["sha256"]}


async def create_server(
    conn: asyncpg.Connection, tenant: str, environment: str, *, name: str, transport: str, url: str, description: str
) -> dict[str, Any]:
    """Insert a server in ``pending_approval``.

    Returns:
        The server record (``tools`` empty; timestamps RFC 3339).

    Raises:
        ConflictError: A server with this name exists in the scope.
    """
    with map_db_errors(f"server {name!r}"):
        row = await conn.fetchrow(_INSERT, tenant, environment, name, transport, url, description)
    return _record(row, [])


async def get_server(conn: asyncpg.Connection, tenant: str, environment: str, name: str) -> dict[str, Any]:
    """Return one server with its pinned tools (each tool dict plus ``sha256``).

    Raises:
        NotFound: No such server in the scope.
    """
    row = await conn.fetchrow(_SELECT_ONE, tenant, environment, name)
    if row is None:
        raise NotFound(f"server {name!r} not found")
    tools = [_tool_view(r) for r in await conn.fetch(_SELECT_TOOLS, tenant, environment, name)]
    return _record(row, tools)


async def list_servers(conn: asyncpg.Connection, tenant: str, environment: str) -> list[dict[str, Any]]:
    """Return every server of the scope, sorted by name, with pinned tools."""
    rows = await conn.fetch(_SELECT_ALL, tenant, environment)
    by_server: dict[str, list[dict[str, Any]]] = {}
    for r in await conn.fetch(_SELECT_TOOLS, tenant, environment, None):
        by_server.setdefault(r["server_name"], []).append(_tool_view(r))
    return [_record(r, by_server.get(r["name"], [])) for r in rows]


async def approve_server(
    conn: asyncpg.Connection, tenant: str, environment: str, name: str, tools: Sequence[PinnedTool]
) -> dict[str, Any]:
    """Pin ``tools`` (replacing any earlier pins) and mark the server approved.

    Call inside the transaction that also compiles the projection.

    Raises:
        NotFound: No such server in the scope.
        ConflictError: Two tools share a name.
    """
    with map_db_errors(f"tools of server {name!r}"):
        row = await conn.fetchrow(_APPROVE, tenant, environment, name)
        if row is None:
            raise NotFound(f"server {name!r} not found")
        await conn.execute(_DELETE_TOOLS, tenant, environment, name)
        await conn.executemany(
            _INSERT_TOOL,
            [(tenant, environment, name, t.definition["name"], i, t.definition, t.sha256) for i, t in enumerate(tools)],
        )
    return _record(row, [{**t.definition, "sha256": t.sha256} for t in tools])


async def approved_servers_with_tools(conn: asyncpg.Connection, tenant: str, environment: str) -> list[dict[str, Any]]:
    """Return approved servers sorted by name, each with ``tools`` = the stored wire dicts (no hash)."""
    rows = await conn.fetch(_SELECT_ALL, tenant, environment)
    by_server: dict[str, list[dict[str, Any]]] = {}
    for r in await conn.fetch(_SELECT_TOOLS, tenant, environment, None):
        by_server.setdefault(r["server_name"], []).append(r["definition"])
    return [
        {
            "name": r["name"],
            "transport": r["transport"],
            "url": r["url"],
            "description": r["description"],
            "tools": by_server.get(r["name"], []),
        }
        for r in rows
        if r["status"] == "approved"
    ]
