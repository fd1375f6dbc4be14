"""Admin API for the MCP server registry: register, list, show, approve (discover + pin tools and prompts)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from gateway.controlplane._deps import deps
from gateway.controlplane._http import JSONResponse, check_text, read_json
from gateway.controlplane.actor import actor_of
from gateway.controlplane.admins import approval_comment
from gateway.controlplane.broker import discovery_material
from gateway.controlplane.credentials import uuid_text
from gateway.controlplane.discovery import Discovery, discover_server, tool_diff
from gateway.controlplane.middleware.admin import authorize_resource, record_change
from gateway.controlplane.projection import mutate_and_compile
from gateway.db import admin as db_admin
from gateway.db import servers as db_servers
from gateway.errors import NotFound, RequestRejected
from gateway.mcp.stdio import StdioLaunch

__all__ = [
    "approve_server",
    "create_server",
    "get_server",
    "get_server_drift",
    "list_servers",
    "upstream_fields",
    "validate_name",
]

NAME = re.compile(r"[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?")
"""Server names; ``__`` is also forbidden and the last character is alphanumeric, so
``<server>__<tool>`` (the data plane's aggregated name) splits one way only: server
``a`` + tool ``_b`` and server ``a_`` + tool ``b`` cannot both exist. Used with ``fullmatch``
(``$`` would also match before a trailing newline)."""
KNOWN_TRANSPORTS = frozenset({"streamable_http", "legacy_sse", "stdio"})
API_TRANSPORT = "openapi"
"""The transport of API sources' rows (:mod:`gateway.controlplane.api_sources`): never registered here."""
MAX_URL = 2048
MAX_DESCRIPTION = 4096
MAX_COMMAND = 4096
"""Longest ``command``, ``cwd`` and each of ``args``, in characters."""
MAX_ARGS = 256
MAX_ENV = 100
"""Most ``env`` entries of a stdio record."""
MAX_ENV_VALUE = 32768
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,255}")
"""POSIX-portable environment variable names (used with ``fullmatch``)."""
_LAUNCH_FIELDS = frozenset({"command", "args", "cwd", "env"})
_REGISTRATION_FIELDS = frozenset({"name", "transport", "url", "description", "requires_credential"}) | _LAUNCH_FIELDS


def validate_name(name: object) -> str:
    """Return a valid upstream name (MCP server or API source; body field or path parameter);
    400 naming ``name`` otherwise."""
    if not isinstance(name, str) or not NAME.fullmatch(name) or "__" in name:
        raise RequestRejected("name must be 1-63 of [a-z0-9_-], start and end alphanumeric, and must not contain '__'")
    return name


def upstream_fields(body: dict[str, Any]) -> tuple[str, bool]:
    """``description`` (default ``""``) and ``requires_credential`` (default false) of an upstream
    registration (MCP server or API source); 400 naming the field otherwise."""
    description = body.get("description") or ""
    if not isinstance(description, str):
        raise RequestRejected(f"description must be a string of at most {MAX_DESCRIPTION} characters, without NUL")
    check_text(description, "description", max_length=MAX_DESCRIPTION)
    requires_credential = body.get("requires_credential", False)
    if not isinstance(requires_credential, bool):
        raise RequestRejected("requires_credential must be a boolean")
    return description, requires_credential


def _validate_url(url: object) -> str:
    """An absolute http(s) URL of printable ASCII; 400 naming ``url`` otherwise."""
    if not isinstance(url, str) or len(url) > MAX_URL or not url.isprintable() or not url.isascii():
        raise RequestRejected(f"url must be an absolute http(s) URL of at most {MAX_URL} printable ASCII characters")
    try:
        parts = urlsplit(url)
        hostname, _ = parts.hostname, parts.port  # .port raises on a bad port
    except ValueError:
        raise RequestRejected("url must be an absolute http(s) URL") from None
    if parts.scheme not in ("http", "https") or not hostname:
        raise RequestRejected("url must be an absolute http(s) URL")
    return url


def _launch_text(value: object, field: str) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_COMMAND or not value.isprintable():
        raise RequestRejected(f"{field} must be a non-empty string of at most {MAX_COMMAND} printable characters")
    return value


def _validate_launch(body: dict[str, Any]) -> tuple[str, list[str], str | None, dict[str, str]]:
    """``command``, ``args``, ``cwd`` and ``env`` of a stdio registration; 400 naming the field otherwise."""
    command = _launch_text(body.get("command"), "command")
    args = body.get("args", [])
    if not isinstance(args, list) or len(args) > MAX_ARGS:
        raise RequestRejected(f"args must be a list of at most {MAX_ARGS} strings")
    for arg in args:
        if not isinstance(arg, str) or len(arg) > MAX_COMMAND or "\x00" in arg:
            raise RequestRejected(f"args must hold strings of at most {MAX_COMMAND} characters, without NUL")
    cwd = body.get("cwd")
    if cwd is not None and not _launch_text(cwd, "cwd").startswith("/"):
        raise RequestRejected("cwd must be an absolute path or null")
    env = body.get("env", {})
    if not isinstance(env, dict) or len(env) > MAX_ENV:
        raise RequestRejected(f"env must be an object of at most {MAX_ENV} string values")
    for key, value in env.items():
        if not ENV_NAME.fullmatch(key):
            raise RequestRejected("env names must match [A-Za-z_][A-Za-z0-9_]* (at most 256 characters)")
        if not isinstance(value, str) or len(value) > MAX_ENV_VALUE or "\x00" in value:
            raise RequestRejected(f"env values must be strings of at most {MAX_ENV_VALUE} characters, without NUL")
    return command, list(args), cwd, dict(env)


async def create_server(request: Request) -> Response:
    """``POST /v1/servers`` -> 201 server record in ``pending_approval``.

    ``streamable_http`` and ``legacy_sse`` take a ``url``; ``stdio`` takes ``command``,
    ``args``, ``cwd`` and ``env`` instead (the record shows ``env`` as ``env_keys``).
    ``requires_credential`` (default false; set by the server's first credential binding
    too): every call needs a credential binding, never goes unauthenticated.
    """
    d = deps(request)
    body = await read_json(request)
    if not isinstance(body, dict) or set(body) - _REGISTRATION_FIELDS:
        raise RequestRejected(
            'body must be {"name", "transport", "url", "description"?, "requires_credential"?} or, for stdio, '
            '{"name", "transport", "command", "args"?, "cwd"?, "env"?, "description"?, "requires_credential"?}'
        )
    name = validate_name(body.get("name"))
    transport = body.get("transport")
    if not isinstance(transport, str) or transport not in KNOWN_TRANSPORTS:
        raise RequestRejected("transport must be one of streamable_http, legacy_sse, stdio")
    launch: dict[str, Any] = {}
    url: str | None = None
    if transport == "stdio":
        if "url" in body:
            raise RequestRejected("url: a stdio server has no url; give command, args, cwd and env")
        command, args, cwd, env = _validate_launch(body)
        launch = {"command": command, "args": args, "cwd": cwd, "env": env}
    else:
        if extra := sorted(_LAUNCH_FIELDS & set(body)):
            raise RequestRejected(f"{extra[0]}: only stdio servers take command, args, cwd and env")
        url = _validate_url(body.get("url"))
    description, requires_credential = upstream_fields(body)
    async with d.pool.acquire() as conn:
        record = await db_servers.create_server(
            conn,
            d.config.tenant,
            d.config.environment,
            name=name,
            transport=transport,
            url=url,
            description=description,
            requires_credential=requires_credential,
            registered_by=actor_of(request).name,
            **launch,
        )
    record_change(request, kind="server", resource_id=name, after=record)
    return JSONResponse(record, status_code=201)


async def list_servers(request: Request) -> Response:
    """``GET /v1/servers`` -> ``{"items": [server record, ...]}`` sorted by name (MCP servers only;
    API sources are under ``/v1/api-sources``)."""
    d = deps(request)
    async with d.pool.acquire() as conn:
        items = await db_servers.list_servers(conn, d.config.tenant, d.config.environment)
    # API sources share the upstream namespace but are listed by /v1/api-sources.
    return JSONResponse({"items": [s for s in items if s["transport"] != API_TRANSPORT]})


async def get_server(request: Request) -> Response:
    """``GET /v1/servers/{name}`` -> the server record with its pinned tools."""
    d = deps(request)
    async with d.pool.acquire() as conn:
        record = await db_servers.get_server(
            conn, d.config.tenant, d.config.environment, validate_name(request.path_params["name"])
        )
    if record["transport"] == API_TRANSPORT:
        raise NotFound(f"{record['name']!r} is an API source: see /v1/api-sources/{record['name']}")
    return JSONResponse(record)


async def approve_server(request: Request) -> Response:
    """``POST /v1/servers/{name}/approve``: discover and pin the tools and prompts, record the
    server's capabilities, approve, compile.

    Re-approving an approved server re-discovers and re-pins its tools and prompts. When the
    upstream cannot be listed nothing changes (502 ``upstream_unavailable``). The answer is
    the server record plus ``projection_version`` and ``diff``: the newly pinned tools
    against the ones they replace (:func:`~gateway.controlplane.discovery.tool_diff`;
    every tool is ``added`` on a first approval).

    An upstream that requires a credential is discovered with the server's ``everyone``
    binding, or with the credential the body names as ``discovery_credential`` (any live
    credential that needs no caller: for a server bound per user or role only, or one
    whose callers' identity comes from token exchange).

    A ``stdio`` server runs its command on every data plane, so its approval needs the
    body ``{"trust_stdio": true}``: the reviewer confirms the command is trusted and
    self-hosted (recorded as ``trusted_at``). Otherwise 400 naming ``trust_stdio``;
    other transports refuse the field. Discovery starts the command once, briefly.
    """
    d = deps(request)
    tenant, env = d.config.tenant, d.config.environment
    name = validate_name(request.path_params["name"])
    options = await _approval_options(request)
    current, launch = await _current_and_launch(request, name)
    # Four-eyes: the control-plane policy decides again, now knowing who registered the server.
    await authorize_resource(request, kind="server", resource_id=name, author=current["registered_by"])
    approver, comment = actor_of(request).name, str(options["comment"])
    trusted = options.get("trust_stdio") is True
    if launch is not None and not trusted:
        raise RequestRejected(
            'trust_stdio: approving a stdio server runs its command on every data plane; send {"trust_stdio": true} '
            "to confirm that it is trusted and self-hosted"
        )
    if launch is None and "trust_stdio" in options:
        raise RequestRejected("trust_stdio applies to stdio servers only")
    found = await _discover(request, current, launch, options.get("discovery_credential"))

    async def approve(conn: Any) -> dict[str, Any]:
        record: dict[str, Any] = await db_servers.approve_server(
            conn,
            tenant,
            env,
            current["name"],
            found.tools,
            prompts=found.prompts,
            capabilities=found.capabilities,
            trusted=launch is not None,
        )
        await db_admin.record_server_approval(conn, tenant, env, current["name"], approver, comment)
        return {**record, "approved_by": approver, "approval_comment": comment}

    record, stored = await mutate_and_compile(d.pool, d.config, d.notifier, approve)
    record_change(request, kind="server", resource_id=name, before=current, after=record, comment=comment)
    record["projection_version"] = stored.version
    record["diff"] = tool_diff(current["tools"] if current["status"] == "approved" else [], found.tools)
    return JSONResponse(record)


async def get_server_drift(request: Request) -> Response:
    """``GET /v1/servers/{name}/drift``: a dry run of re-approval. Discovers the upstream's
    tools now (a ``stdio`` server's command runs briefly, as at approval) and answers
    ``{"name", "diff": {"added", "removed", "changed": [{"name", "fields"}]}}`` against the
    pinned tools (:func:`~gateway.controlplane.discovery.tool_diff`); nothing is pinned or
    compiled. 502/504 when the upstream cannot be listed, as for approval; 400 for a
    ``stdio`` server not yet approved with ``trust_stdio`` (its command is never run before).
    """
    name = validate_name(request.path_params["name"])
    current, launch = await _current_and_launch(request, name)
    if launch is not None and not current["trusted"]:
        raise RequestRejected("a stdio server's command runs only once it is approved with trust_stdio")
    found = await _discover(request, current, launch)
    pinned = current["tools"] if current["status"] == "approved" else []
    return JSONResponse({"name": current["name"], "diff": tool_diff(pinned, found.tools)})


async def _current_and_launch(request: Request, name: str) -> tuple[dict[str, Any], StdioLaunch | None]:
    """The server record (404 when unknown) and, for ``stdio``, its launch."""
    d = deps(request)
    tenant, env = d.config.tenant, d.config.environment
    async with d.pool.acquire() as conn:
        current = await db_servers.get_server(conn, tenant, env, name)
        if current["transport"] == API_TRANSPORT:
            raise NotFound(f"{name!r} is an API source: see /v1/api-sources/{name}")
        launch = None
        if current["transport"] == "stdio":
            launch = StdioLaunch.from_record(await db_servers.get_launch(conn, tenant, env, name))
    return current, launch


async def _discover(
    request: Request, current: dict[str, Any], launch: StdioLaunch | None, credential_id: str | None = None
) -> Discovery:
    credential = await discovery_material(request, current["name"], credential_id)
    if credential is None and current.get("requires_credential"):  # never discovered bare
        raise RequestRejected(
            "discovery_credential: this server requires a credential; bind one to everyone or name one to discover with"
        )
    if credential is not None and not credential.sends_to(current["transport"]):
        raise RequestRejected(
            f"discovery_credential: that credential carries nothing a {current['transport']} upstream gets"
        )
    return await discover_server(
        current["url"],
        timeout=deps(request).config.control_plane.discovery_timeout,
        transport=current["transport"],
        name=current["name"],
        launch=launch,
        credential=credential,
    )


async def _approval_options(request: Request) -> dict[str, Any]:
    """The approval body ``{"comment", "trust_stdio"?: bool, "discovery_credential"?: <credential
    id>}``; 400 otherwise (``comment`` is required: :func:`~gateway.controlplane.admins.approval_comment`)."""
    body = await read_json(request)
    if not isinstance(body, dict) or set(body) - {"trust_stdio", "discovery_credential", "comment"}:
        raise RequestRejected(
            'the approval body must be {"comment", "trust_stdio": true (stdio servers), "discovery_credential": <id>}'
        )
    body["comment"] = approval_comment(body)
    if "trust_stdio" in body and not isinstance(body["trust_stdio"], bool):
        raise RequestRejected("trust_stdio must be a boolean")
    if "discovery_credential" in body:
        body["discovery_credential"] = uuid_text(body["discovery_credential"], "discovery_credential")
    return body
