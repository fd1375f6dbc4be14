"""The MCP server registry aggregate: servers, their pinned tool and prompt definitions and capabilities."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from gateway.db._errors import map_db_errors
from gateway.errors import NotFound

__all__ = [
    "PinnedPrompt",
    "PinnedTool",
    "approve_server",
    "approved_servers_with_tools",
    "create_server",
    "get_launch",
    "get_server",
    "list_servers",
]

_COLUMNS = (
    "name, transport, url, description, status, tenant, environment, created_at, approved_at, capabilities,"
    " command, args, cwd, env, trusted_at, requires_credential, registered_by, approved_by, approval_comment"
)

_INSERT = f"""
INSERT INTO mcp_servers (tenant, environment, name, transport, url, description, command, args, cwd, env,
                         requires_credential, registered_by)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
RETURNING {_COLUMNS}
"""
_SELECT_LAUNCH = "SELECT command, args, cwd, env FROM mcp_servers WHERE tenant = $1 AND environment = $2 AND name = $3"
_SELECT_ONE = f"SELECT {_COLUMNS} FROM mcp_servers WHERE tenant = $1 AND environment = $2 AND name = $3"
_SELECT_ALL = f"SELECT {_COLUMNS} FROM mcp_servers WHERE tenant = $1 AND environment = $2 ORDER BY name"
_SELECT_TOOLS = """
SELECT server_name, definition, sha256 FROM mcp_server_tools
WHERE tenant = $1 AND environment = $2 AND ($3::text IS NULL OR server_name = $3)
ORDER BY server_name, position
"""
_SELECT_PROMPTS = """
SELECT server_name, definition, sha256 FROM mcp_server_prompts
WHERE tenant = $1 AND environment = $2 AND ($3::text IS NULL OR server_name = $3)
ORDER BY server_name, position
"""
_DELETE_PROMPTS = "DELETE FROM mcp_server_prompts WHERE tenant = $1 AND environment = $2 AND server_name = $3"
_INSERT_PROMPT = """
INSERT INTO mcp_server_prompts (tenant, environment, server_name, prompt_name, position, definition, sha256)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""
_SET_CAPABILITIES = "UPDATE mcp_servers SET capabilities = $4 WHERE tenant = $1 AND environment = $2 AND name = $3"
_DELETE_TOOLS = "DELETE FROM mcp_server_tools WHERE tenant = $1 AND environment = $2 AND server_name = $3"
_INSERT_TOOL = """
INSERT INTO mcp_server_tools (tenant, environment, server_name, tool_name, position, definition, sha256)
VALUES ($1, $2, $3, $4, $5, $6, $7)
"""
_APPROVE = f"""
UPDATE mcp_servers SET status = 'approved', approved_at = now(),
    trusted_at = CASE WHEN $4::boolean THEN now() END
WHERE tenant = $1 AND environment = $2 AND name = $3
RETURNING {_COLUMNS}
"""


@dataclass(frozen=True)
class PinnedTool:
    """One approved tool: its MCP wire form and the SHA-256 (hex) of its canonical JSON."""

    definition: dict[str, Any]
    sha256: str


@dataclass(frozen=True)
class PinnedPrompt:
    """One approved prompt: its MCP wire form (``name``, ``arguments``, ...) and the SHA-256 of its canonical JSON."""

    definition: dict[str, Any]
    sha256: str


def _record(
    row: asyncpg.Record, tools: list[dict[str, Any]], prompts: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    rec = dict(row)
    rec["created_at"] = rec["created_at"].isoformat()
    rec["approved_at"] = rec["approved_at"].isoformat() if rec["approved_at"] else None
    # A stdio record's env may hold secrets: the API shows its keys only.
    env = rec.pop("env")
    rec["env_keys"] = sorted(env) if env is not None else None
    rec["trusted"] = rec["trusted_at"] is not None
    rec["trusted_at"] = rec["trusted_at"].isoformat() if rec["trusted_at"] else None
    rec["tools"] = tools
    rec["prompts"] = prompts or []
    return rec


def _tool_view(row: asyncpg.Record) -> dict[str, Any]:
    return {**row["definition"], "sha256": row["sha256"]}


async def create_server(
    conn: asyncpg.Connection,
    tenant: str,
    environment: str,
    *,
    name: str,
    transport: str,
    url: str | None,
    description: str,
    command: str | None = None,
    args: Sequence[str] | None = None,
    cwd: str | None = None,
    env: Mapping[str, str] | None = None,
    requires_credential: bool = False,
    registered_by: str = "admin",
) -> dict[str, Any]:
    """Insert a server in ``pending_approval`` (``requires_credential``: every call to it needs
    a credential binding; see docs/credentials.md), recording who registered it (four-eyes).

    A ``stdio`` server has no ``url`` and a ``command``, ``args`` and ``env`` (``cwd``
    optional); any other transport has a ``url`` and none of those (a CHECK
    constraint holds this).

    Returns:
        The server record (``tools`` empty; timestamps RFC 3339; ``env`` shown as ``env_keys``).

    Raises:
        ConflictError: A server with this name exists in the scope.
    """
    args_list = list(args) if args is not None else None
    env_dict = dict(env) if env is not None else None
    with map_db_errors(f"server {name!r}"):
        row = await conn.fetchrow(
            _INSERT,
            tenant,
            environment,
            name,
            transport,
            url,
            description,
            command,
            args_list,
            cwd,
            env_dict,
            requires_credential,
            registered_by,
        )
    return _record(row, [])


async def get_server(conn: asyncpg.Connection, tenant: str, environment: str, name: str) -> dict[str, Any]:
    """Return one server with its capabilities and pinned tools and prompts (each dict plus ``sha256``).

    Raises:
        NotFound: No such server in the scope.
    """
    row = await conn.fetchrow(_SELECT_ONE, tenant, environment, name)
    if row is None:
        raise NotFound(f"server {name!r} not found")
    tools = [_tool_view(r) for r in await conn.fetch(_SELECT_TOOLS, tenant, environment, name)]
    prompts = [_tool_view(r) for r in await conn.fetch(_SELECT_PROMPTS, tenant, environment, name)]
    return _record(row, tools, prompts)


async def list_servers(conn: asyncpg.Connection, tenant: str, environment: str) -> list[dict[str, Any]]:
    """Return every server of the scope, sorted by name, with capabilities and pinned tools and prompts."""
    rows = await conn.fetch(_SELECT_ALL, tenant, environment)
    by_server: dict[str, list[dict[str, Any]]] = {}
    for r in await conn.fetch(_SELECT_TOOLS, tenant, environment, None):
        by_server.setdefault(r["server_name"], []).append(_tool_view(r))
    prompts: dict[str, list[dict[str, Any]]] = {}
    for r in await conn.fetch(_SELECT_PROMPTS, tenant, environment, None):
        prompts.setdefault(r["server_name"], []).append(_tool_view(r))
    return [_record(r, by_server.get(r["name"], []), prompts.get(r["name"], [])) for r in rows]


async def approve_server(
    conn: asyncpg.Connection,
    tenant: str,
    environment: str,
    name: str,
    tools: Sequence[PinnedTool],
    *,
    prompts: Sequence[PinnedPrompt] = (),
    capabilities: Mapping[str, Any] | None = None,
    trusted: bool = False,
) -> dict[str, Any]:
    """Pin ``tools`` and ``prompts``, record ``capabilities`` (replacing any earlier ones) and mark the server approved.

    Call inside the transaction that also compiles the projection.

    Args:
        capabilities: The server's MCP ``ServerCapabilities`` as it declared them
            (``{"tools": {...}, "resources": {...}, ...}``); ``{}`` when None.
        trusted: A ``stdio`` server confirmed trusted and self-hosted by this approval
            (sets ``trusted_at``); must be False for other transports.

    Raises:
        NotFound: No such server in the scope.
        ConflictError: Two tools (or two prompts) share a name.
    """
    with map_db_errors(f"tools of server {name!r}"):
        row = await conn.fetchrow(_APPROVE, tenant, environment, name, trusted)
        if row is None:
            raise NotFound(f"server {name!r} not found")
        await conn.execute(_DELETE_TOOLS, tenant, environment, name)
        await conn.executemany(
            _INSERT_TOOL,
            [(tenant, environment, name, t.definition["name"], i, t.definition, t.sha256) for i, t in enumerate(tools)],
        )
        await conn.execute(_DELETE_PROMPTS, tenant, environment, name)
        await conn.executemany(
            _INSERT_PROMPT,
            [
                (tenant, environment, name, p.definition["name"], i, p.definition, p.sha256)
                for i, p in enumerate(prompts)
            ],
        )
        await conn.execute(_SET_CAPABILITIES, tenant, environment, name, dict(capabilities or {}))
    record = _record(row, [{**t.definition, "sha256": t.sha256} for t in tools])
    record["prompts"] = [{**p.definition, "sha256": p.sha256} for p in prompts]
    record["capabilities"] = dict(capabilities or {})
    return record


async def approved_servers_with_tools(conn: asyncpg.Connection, tenant: str, environment: str) -> list[dict[str, Any]]:
    """Return approved servers sorted by name, each with ``tools`` and ``prompts`` = the stored wire dicts
    (no hash) and ``capabilities``.

    A ``stdio`` server also carries its launch (``command``, ``args``, ``cwd``, ``env``
    with values: data planes run it) and ``trusted: true``; one approved without
    ``trusted_at`` is left out.
    """
    rows = await conn.fetch(_SELECT_ALL, tenant, environment)
    by_server: dict[str, list[dict[str, Any]]] = {}
    for r in await conn.fetch(_SELECT_TOOLS, tenant, environment, None):
        by_server.setdefault(r["server_name"], []).append(r["definition"])
    prompts: dict[str, list[dict[str, Any]]] = {}
    for r in await conn.fetch(_SELECT_PROMPTS, tenant, environment, None):
        prompts.setdefault(r["server_name"], []).append(r["definition"])
    approved: list[dict[str, Any]] = []
    for r in rows:
        if r["status"] != "approved" or (r["transport"] == "stdio" and r["trusted_at"] is None):
            continue
        entry = {
            "name": r["name"],
            "transport": r["transport"],
            "url": r["url"],
            "description": r["description"],
            "tools": by_server.get(r["name"], []),
            "prompts": prompts.get(r["name"], []),
            "capabilities": r["capabilities"],
            "requires_credential": r["requires_credential"],
        }
        if r["transport"] == "stdio":
            entry.update(command=r["command"], args=r["args"], cwd=r["cwd"], env=r["env"], trusted=True)
        approved.append(entry)
    return approved


async def get_launch(conn: asyncpg.Connection, tenant: str, environment: str, name: str) -> dict[str, Any]:
    """Return a ``stdio`` server's launch, env values included: ``{"command", "args", "cwd", "env"}``.

    For the control plane's approval-time discovery only; never for an API answer.

    Raises:
        NotFound: No such server in the scope.
    """
    row = await conn.fetchrow(_SELECT_LAUNCH, tenant, environment, name)
    if row is None:
        raise NotFound(f"server {name!r} not found")
    return dict(row)
