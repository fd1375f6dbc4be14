"""The API source registry (issue 12): OpenAPI-described REST APIs served as MCP tools.

An API source is an upstream: a row of ``mcp_servers`` (``transport = 'openapi'``, ``url`` =
its base URL, the same approval status, registrant and approver columns) plus a row of
``api_sources`` with what only it has (migration 0018). Its approved tools are pinned in
``mcp_server_tools`` by :func:`gateway.db.servers.approve_server`, like a server's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import asyncpg

from gateway.db import servers as db_servers
from gateway.db._errors import map_db_errors
from gateway.errors import NotFound

__all__ = [
    "create_api_source",
    "get_api_source",
    "get_registration",
    "list_api_sources",
    "pin_api_source",
    "projection_apis",
]

_INSERT = """
INSERT INTO api_sources (tenant, environment, name, document, document_sha256, openapi_version, selection,
                         overrides, options, tools, operations, report)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
"""
_API_COLUMNS = "document_sha256, openapi_version, selection, overrides, options, tools, operations, report, internal_at"
_SELECT_ONE = f"SELECT {_API_COLUMNS} FROM api_sources WHERE tenant = $1 AND environment = $2 AND name = $3"
_SELECT_ALL = f"SELECT name, {_API_COLUMNS} FROM api_sources WHERE tenant = $1 AND environment = $2"
_SELECT_REGISTRATION = """
SELECT document, selection, overrides, options FROM api_sources WHERE tenant = $1 AND environment = $2 AND name = $3
"""
_PIN = """
UPDATE api_sources SET tools = $4, operations = $5, report = $6, internal_at = CASE WHEN $7::boolean THEN now() END
WHERE tenant = $1 AND environment = $2 AND name = $3
"""
_SELECT_PROJECTION = """
SELECT a.name, s.url, a.options, a.operations, a.internal_at FROM api_sources a
JOIN mcp_servers s USING (tenant, environment, name)
WHERE a.tenant = $1 AND a.environment = $2 AND s.status = 'approved'
"""


def _view(server: dict[str, Any], row: asyncpg.Record | Mapping[str, Any]) -> dict[str, Any]:
    """The API record: the server columns that apply, plus the source's own."""
    approved = server["status"] == "approved"
    return {
        "name": server["name"],
        "base_url": server["url"],
        "description": server["description"],
        "status": server["status"],
        "tenant": server["tenant"],
        "environment": server["environment"],
        "created_at": server["created_at"],
        "approved_at": server["approved_at"],
        "requires_credential": server["requires_credential"],
        "registered_by": server["registered_by"],
        "approved_by": server["approved_by"],
        "approval_comment": server["approval_comment"],
        "internal": row["internal_at"] is not None,
        "internal_at": row["internal_at"].isoformat() if row["internal_at"] else None,
        "openapi_version": row["openapi_version"],
        "document_sha256": row["document_sha256"],
        "selection": row["selection"],
        "overrides": row["overrides"],
        "options": row["options"],
        # Approved: the pinned tools (with their hashes); pending: what approval would pin.
        "tools": server["tools"] if approved else row["tools"],
        "operations": row["operations"],
        "report": row["report"],
    }


async def create_api_source(
    conn: asyncpg.Connection,
    tenant: str,
    environment: str,
    *,
    name: str,
    base_url: str,
    description: str,
    document: str,
    document_sha256: str,
    openapi_version: str,
    selection: Mapping[str, Any],
    overrides: Mapping[str, Any],
    options: Mapping[str, Any],
    tools: Sequence[Mapping[str, Any]],
    operations: Sequence[Mapping[str, Any]],
    report: Mapping[str, Any],
    requires_credential: bool,
    registered_by: str,
) -> dict[str, Any]:
    """Insert an API source in ``pending_approval`` with its compiled tools and operations.

    Args:
        document: The OpenAPI document as JSON text (its key order kept: tools follow it).
        tools, operations, report: What :func:`gateway.apiadapter.operations.compile_source`
            produced at registration (approval compiles again and pins).

    Returns:
        The API source record (see :func:`get_api_source`).

    Raises:
        ConflictError: An upstream (MCP server or API source) with this name exists in the scope.
    """
    async with conn.transaction():
        server = await db_servers.create_server(
            conn,
            tenant,
            environment,
            name=name,
            transport="openapi",
            url=base_url,
            description=description,
            requires_credential=requires_credential,
            registered_by=registered_by,
        )
        with map_db_errors(f"API source {name!r}"):
            await conn.execute(
                _INSERT,
                tenant,
                environment,
                name,
                document,
                document_sha256,
                openapi_version,
                dict(selection),
                dict(overrides),
                dict(options),
                list(tools),
                list(operations),
                dict(report),
            )
        row = await conn.fetchrow(_SELECT_ONE, tenant, environment, name)
    return _view(server, row)


async def get_api_source(conn: asyncpg.Connection, tenant: str, environment: str, name: str) -> dict[str, Any]:
    """One API source: ``{"name", "base_url", "status", "internal", "openapi_version",
    "document_sha256", "selection", "overrides", "options", "tools", "operations", "report", ...}``
    (``tools``: the pinned ones with ``sha256`` once approved, else what approval would pin).

    Raises:
        NotFound: No API source of that name in the scope (an MCP server of that name included).
    """
    row = await conn.fetchrow(_SELECT_ONE, tenant, environment, name)
    if row is None:
        raise NotFound(f"API source {name!r} not found")
    return _view(await db_servers.get_server(conn, tenant, environment, name), row)


async def list_api_sources(conn: asyncpg.Connection, tenant: str, environment: str) -> list[dict[str, Any]]:
    """Every API source of the scope, sorted by name (records as :func:`get_api_source`)."""
    rows = {r["name"]: r for r in await conn.fetch(_SELECT_ALL, tenant, environment)}
    return [
        _view(server, rows[server["name"]])
        for server in await db_servers.list_servers(conn, tenant, environment)
        if server["name"] in rows
    ]


async def get_registration(conn: asyncpg.Connection, tenant: str, environment: str, name: str) -> dict[str, Any]:
    """What was registered: ``{"document" (JSON text), "selection", "overrides", "options"}``.

    Raises:
        NotFound: No such API source.
    """
    row = await conn.fetchrow(_SELECT_REGISTRATION, tenant, environment, name)
    if row is None:
        raise NotFound(f"API source {name!r} not found")
    return dict(row)


async def pin_api_source(
    conn: asyncpg.Connection,
    tenant: str,
    environment: str,
    name: str,
    *,
    tools: Sequence[db_servers.PinnedTool],
    operations: Sequence[Mapping[str, Any]],
    report: Mapping[str, Any],
    internal: bool,
) -> dict[str, Any]:
    """Approve: pin ``tools`` (``mcp_server_tools``) and ``operations``, set or clear ``internal_at``.

    Call inside the transaction that also compiles the projection.

    Raises:
        NotFound: No such API source.
    """
    await db_servers.approve_server(conn, tenant, environment, name, tools)
    await conn.execute(
        _PIN, tenant, environment, name, [t.definition for t in tools], list(operations), dict(report), internal
    )
    return await get_api_source(conn, tenant, environment, name)


async def projection_apis(conn: asyncpg.Connection, tenant: str, environment: str) -> dict[str, dict[str, Any]]:
    """The ``api`` member of each approved API source's routing-table entry, by name:
    ``{"base_url", "internal", "operations", **options}`` (see :mod:`gateway.apiadapter.binding`)."""
    out: dict[str, dict[str, Any]] = {}
    for r in await conn.fetch(_SELECT_PROJECTION, tenant, environment):
        out[r["name"]] = {
            **r["options"],
            "base_url": r["url"],
            "internal": r["internal_at"] is not None,
            "operations": r["operations"],
        }
    return out
