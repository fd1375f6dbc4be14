"""Admin API for the MCP server registry: register, list, show, approve (discover + pin tools)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from gateway.controlplane._deps import deps
from gateway.controlplane._http import JSONResponse, check_text, read_json
from gateway.controlplane.discovery import discover_tools
from gateway.controlplane.projection import mutate_and_compile
from gateway.db import servers as db_servers
from gateway.errors import RequestRejected, UnsupportedTransport

__all__ = ["approve_server", "create_server", "get_server", "list_servers"]

NAME = re.compile(r"[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?")
"""Server names; ``__`` is also forbidden and the last character is alphanumeric, so
``<server>__<tool>`` (the data plane's aggregated name) splits one way only: server
``a`` + tool ``_b`` and server ``a_`` + tool ``b`` cannot both exist. Used with ``fullmatch``
(``$`` would also match before a trailing newline)."""
SUPPORTED_TRANSPORTS = frozenset({"streamable_http"})
KNOWN_TRANSPORTS = frozenset({"streamable_http", "legacy_sse", "stdio"})
MAX_URL = 2048
MAX_DESCRIPTION = 4096


def _validate_name(name: object) -> str:
    """Return a valid server name (body field or path parameter); 400 naming ``name`` otherwise."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or "__" in name:
        raise RequestRejected("name must be 1-63 of [a-z0-9_-], start and end alphanumeric, and must not contain '__'")
    return name


async def create_server(request: Request) -> Response:
    """``POST /v1/servers`` -> 201 server record in ``pending_approval``."""
    d = deps(request)
    body = await read_json(request)
    if not isinstance(body, dict) or set(body) - {"name", "transport", "url", "description"}:
        raise RequestRejected('body must be {"name", "transport", "url", "description"?}')
    name = _validate_name(body.get("name"))
    transport = body.get("transport")
    if not isinstance(transport, str) or transport not in KNOWN_TRANSPORTS:
        raise RequestRejected("transport must be one of streamable_http, legacy_sse, stdio")
    if transport not in SUPPORTED_TRANSPORTS:
        raise UnsupportedTransport(f"transport {transport} is not supported yet; use streamable_http")
    url = body.get("url")
    if not isinstance(url, str) or len(url) > MAX_URL or not url.isprintable() or not url.isascii():
        raise RequestRejected(f"url must be an absolute http(s) URL of at most {MAX_URL} printable ASCII characters")
    try:
        parts = urlsplit(url)
        hostname, _ = parts.hostname, parts.port  # .port raises on a bad port
    except ValueError:
        raise RequestRejected("url must be an absolute http(s) URL") from None
    if parts.scheme not in ("http", "https") or not hostname:
        raise RequestRejected("url must be an absolute http(s) URL")
    description = body.get("description") or ""
    if not isinstance(description, str):
        raise RequestRejected(f"description must be a string of at most {MAX_DESCRIPTION} characters, without NUL")
    check_text(description, "description", max_length=MAX_DESCRIPTION)
    async with d.pool.acquire() as conn:
        record = await db_servers.create_server(
            conn,
            d.config.tenant,
            d.config.environment,
            name=name,
            transport=transport,
            url=url,
            description=description,
        )
    return JSONResponse(record, status_code=201)


async def list_servers(request: Request) -> Response:
    """``GET /v1/servers`` -> ``{"items": [server record, ...]}`` sorted by name."""
    d = deps(request)
    async with d.pool.acquire() as conn:
        items = await db_servers.list_servers(conn, d.config.tenant, d.config.environment)
    return JSONResponse({"items": items})


async def get_server(request: Request) -> Response:
    """``GET /v1/servers/{name}`` -> the server record with its pinned tools."""
    d = deps(request)
    async with d.pool.acquire() as conn:
        record = await db_servers.get_server(
            conn, d.config.tenant, d.config.environment, _validate_name(request.path_params["name"])
        )
    return JSONResponse(record)


async def approve_server(request: Request) -> Response:
    """``POST /v1/servers/{name}/approve``: discover and pin the tools, approve, compile.

    Re-approving an approved server re-discovers and re-pins its tools. When the
    upstream cannot be listed nothing changes (502 ``upstream_unavailable``).
    """
    d = deps(request)
    tenant, env = d.config.tenant, d.config.environment
    async with d.pool.acquire() as conn:
        current = await db_servers.get_server(conn, tenant, env, _validate_name(request.path_params["name"]))
    if current["transport"] not in SUPPORTED_TRANSPORTS:
        raise UnsupportedTransport(f"transport {current['transport']} is not supported yet")
    tools = await discover_tools(current["url"], timeout=d.config.control_plane.discovery_timeout)
    record, stored = await mutate_and_compile(
        d.pool, d.config, d.notifier, lambda conn: db_servers.approve_server(conn, tenant, env, current["name"], tools)
    )
    record["projection_version"] = stored.version
    return JSONResponse(record)
