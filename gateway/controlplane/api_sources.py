"""Admin API for the API source registry: OpenAPI-described REST APIs served as MCP tools (issue 12).

``POST /v1/api-sources`` registers a source (pending approval), ``GET /v1/api-sources`` and
``GET /v1/api-sources/{name}`` show them, ``POST /v1/api-sources/{name}/approve`` compiles the
registered document again, pins the tools and operations and compiles a projection. The
document is given inline (a JSON object, or JSON/YAML text: ``gatewayctl api-sources register
--file`` uploads a file that way); it is never fetched from a URL. See docs/api-adapter.md.
"""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any
from urllib.parse import urlsplit

import anyio
import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from gateway.apiadapter.documents import check_document, load_document
from gateway.apiadapter.guard import refusal
from gateway.apiadapter.operations import CompiledSource, Selection, compile_source, overrides_from_body
from gateway.controlplane._deps import deps
from gateway.controlplane._http import JSONResponse, read_json
from gateway.controlplane.actor import actor_of
from gateway.controlplane.admins import approval_comment
from gateway.controlplane.discovery import tool_diff
from gateway.controlplane.middleware.admin import authorize_resource, record_change
from gateway.controlplane.projection import mutate_and_compile
from gateway.controlplane.servers import upstream_fields, validate_name
from gateway.db import admin as db_admin
from gateway.db import api_sources as db_api_sources
from gateway.db.servers import PinnedTool
from gateway.errors import InvalidApiDocument, RequestRejected
from gateway.mcp.pinning import canonical_tool, definition_sha256

__all__ = ["approve_api_source", "create_api_source", "get_api_source", "list_api_sources"]

MAX_URL = 2048
MAX_TIMEOUT = 300.0
"""Longest ``options.timeout`` (seconds)."""
MAX_RESPONSE_CAP = 64 * 1024 * 1024
"""Largest ``options.max_response_bytes``."""
_FIELDS = frozenset(
    {
        "name",
        "base_url",
        "description",
        "document",
        "selection",
        "overrides",
        "options",
        "requires_credential",
    }
)
_OPTIONS = frozenset({"follow_redirects", "timeout", "max_response_bytes"})


def validate_base_url(value: object) -> str:
    """An absolute http(s) URL without credentials, query or fragment; 400 naming ``base_url``.

    A host that is an IP literal of a class no source may reach (unspecified, multicast,
    cloud metadata: :func:`gateway.apiadapter.guard.refusal`) is refused here already.
    """
    if not isinstance(value, str) or len(value) > MAX_URL or not value.isprintable() or not value.isascii():
        raise RequestRejected(
            f"base_url must be an absolute http(s) URL of at most {MAX_URL} printable ASCII characters"
        )
    try:
        parts = urlsplit(value)
        host, _ = parts.hostname, parts.port  # .port raises on a bad port
    except ValueError:
        raise RequestRejected("base_url must be an absolute http(s) URL") from None
    if parts.scheme not in ("http", "https") or not host:
        raise RequestRejected("base_url must be an absolute http(s) URL")
    if parts.username is not None or parts.password is not None:
        raise RequestRejected("base_url must not carry credentials: bind a credential to the API source instead")
    if parts.query or parts.fragment or value.endswith(("?", "#")):
        raise RequestRejected("base_url must not have a query or fragment")
    literal = _ip_literal(host)
    if literal is not None and (why := refusal(literal, internal=True)) is not None:
        raise RequestRejected(f"base_url: {host} is {why}; no API source may reach it")
    return value.rstrip("/")


def _ip_literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _options(value: object) -> dict[str, Any]:
    """``options`` ``{"follow_redirects"?: bool, "timeout"?: seconds, "max_response_bytes"?: int}``."""
    if value is None:
        return {}
    if not isinstance(value, dict) or set(value) - _OPTIONS:
        raise RequestRejected('options must be {"follow_redirects"?: bool, "timeout"?: seconds, "max_response_bytes"?}')
    if not isinstance(value.get("follow_redirects", False), bool):
        raise RequestRejected("options.follow_redirects must be a boolean")
    timeout = value.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= MAX_TIMEOUT
    ):
        raise RequestRejected(f"options.timeout must be seconds in (0, {MAX_TIMEOUT:g}]")
    cap = value.get("max_response_bytes")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or not 0 < cap <= MAX_RESPONSE_CAP):
        raise RequestRejected(f"options.max_response_bytes must be an integer in [1, {MAX_RESPONSE_CAP}]")
    return dict(value)


def _compile(
    raw: Any, selection: Any, overrides: Any
) -> tuple[dict[str, Any], str, CompiledSource, list[dict[str, Any]]]:
    """Load, check and compile a document (CPU-bound: run in a worker thread).

    Returns:
        ``(document, openapi_version, compiled, tools)``: ``tools`` are the compiled tools in the
        SDK's canonical wire form (:func:`~gateway.mcp.pinning.canonical_tool`), what is stored
        and pinned.

    Raises:
        InvalidApiDocument: Anything the adapter cannot use, with its location.
    """
    document = load_document(raw)
    version = check_document(document)
    compiled = compile_source(
        document, selection=Selection.from_body(selection), overrides=overrides_from_body(overrides)
    )
    tools = []
    for tool in compiled.tools:  # the SDK's own Tool model must accept what agents will list
        try:
            tools.append(canonical_tool(tool))
        except ValidationError as exc:
            raise InvalidApiDocument(
                f"the tool compiled from it is not a valid MCP tool ({exc.error_count()} errors)",
                location=f"tool {tool.get('name')}",
            ) from None
    return document, version, compiled, tools


async def create_api_source(request: Request) -> Response:
    """``POST /v1/api-sources`` -> 201 API source record in ``pending_approval``.

    Body: ``{"name", "base_url", "document", "description"?, "selection"?, "overrides"?,
    "options"?, "requires_credential"?}``. ``document`` is the OpenAPI 3.0/3.1 document: a JSON
    object, or its JSON or YAML text. ``selection`` ``{"include"?: {"operation_ids"?, "tags"?,
    "paths"?}, "exclude"?: {...}}`` picks the operations (``paths`` are globs on the path
    template); ``overrides`` maps an ``operationId`` (or ``"METHOD /path"``) to ``{"name"?,
    "title"?, "description"?, "annotations"?}``; ``options`` ``{"follow_redirects"?: bool,
    "timeout"?: seconds, "max_response_bytes"?: int}``.

    The answer carries the ``tools`` approval would pin, the ``operations`` they are bound to
    and a ``report`` (renamed tools, ignored parameters). 400 ``invalid_api_document`` names
    the location of anything unsupported (``paths./pet/{petId}/uploadImage.post.requestBody
    .content``); 409 when an MCP server or API source already has the name.
    """
    d = deps(request)
    body = await read_json(request)
    if not isinstance(body, dict) or set(body) - _FIELDS or not {"name", "base_url", "document"} <= set(body):
        raise RequestRejected(
            'body must be {"name", "base_url", "document", "description"?, "selection"?, "overrides"?, '
            '"options"?, "requires_credential"?}'
        )
    name = validate_name(body["name"])
    base_url = validate_base_url(body["base_url"])
    description, requires_credential = upstream_fields(body)
    options = _options(body.get("options"))
    selection, overrides = body.get("selection") or {}, body.get("overrides") or {}
    document, version, compiled, tools = await anyio.to_thread.run_sync(
        _compile, body["document"], selection, overrides
    )
    text = orjson.dumps(document).decode()
    async with d.pool.acquire() as conn:
        record = await db_api_sources.create_api_source(
            conn,
            d.config.tenant,
            d.config.environment,
            name=name,
            base_url=base_url,
            description=description,
            document=text,
            document_sha256=hashlib.sha256(text.encode()).hexdigest(),
            openapi_version=version,
            selection=selection,
            overrides=overrides,
            options=options,
            tools=tools,
            operations=[op.to_record() for op in compiled.operations],
            report=compiled.report,
            requires_credential=requires_credential,
            registered_by=actor_of(request).name,
        )
    record_change(request, kind="api_source", resource_id=name, after=record)
    return JSONResponse(record, status_code=201)


async def list_api_sources(request: Request) -> Response:
    """``GET /v1/api-sources`` -> ``{"items": [API source record, ...]}`` sorted by name."""
    d = deps(request)
    async with d.pool.acquire() as conn:
        items = await db_api_sources.list_api_sources(conn, d.config.tenant, d.config.environment)
    return JSONResponse({"items": items})


async def get_api_source(request: Request) -> Response:
    """``GET /v1/api-sources/{name}`` -> the API source record (404 when there is none)."""
    d = deps(request)
    name = validate_name(request.path_params["name"])
    async with d.pool.acquire() as conn:
        record = await db_api_sources.get_api_source(conn, d.config.tenant, d.config.environment, name)
    return JSONResponse(record)


async def approve_api_source(request: Request) -> Response:
    """``POST /v1/api-sources/{name}/approve`` ``{"comment", "internal"?: bool}``: compile the
    registered document again, pin its tools and operations, approve, compile a projection.

    ``internal: true`` marks the source internal: its host may then resolve to loopback,
    link-local or private addresses (refused otherwise, on every call: docs/api-adapter.md
    "SSRF rules"). A base URL whose host is such an IP literal needs it: 400 naming
    ``internal`` otherwise (a name is checked on the data plane, where it is resolved). Re-approving re-pins (and may change ``internal``).
    The answer is the record plus ``projection_version`` and ``diff`` (tools added, removed,
    changed against the ones pinned before). Four-eyes: the registrant cannot approve.
    """
    d = deps(request)
    tenant, env = d.config.tenant, d.config.environment
    name = validate_name(request.path_params["name"])
    options = await read_json(request)
    if not isinstance(options, dict) or set(options) - {"comment", "internal"}:
        raise RequestRejected('the approval body must be {"comment", "internal"?: bool}')
    comment = approval_comment(options)
    internal = options.get("internal", False)
    if not isinstance(internal, bool):
        raise RequestRejected("internal must be a boolean")
    async with d.pool.acquire() as conn:
        current = await db_api_sources.get_api_source(conn, tenant, env, name)
        registration = await db_api_sources.get_registration(conn, tenant, env, name)
    await authorize_resource(request, kind="api_source", resource_id=name, author=current["registered_by"])
    host = urlsplit(current["base_url"]).hostname or ""
    literal = _ip_literal(host)
    # An IP literal is known now; a name is checked where it is resolved: on the data plane, at
    # every new connection (gateway.apiadapter.guard), so DNS answers can never bypass it.
    if not internal and literal is not None and (why := refusal(literal, internal=False)) is not None:
        raise RequestRejected(
            f"internal: the base URL's host {host} is {why}; approve with "
            '{"internal": true} to confirm the source is internal'
        )
    _, _, compiled, tools = await anyio.to_thread.run_sync(
        _compile, registration["document"], registration["selection"], registration["overrides"]
    )
    pinned = [PinnedTool(tool, definition_sha256(tool)) for tool in tools]
    approver = actor_of(request).name

    async def approve(conn: Any) -> dict[str, Any]:
        record = await db_api_sources.pin_api_source(
            conn,
            tenant,
            env,
            name,
            tools=pinned,
            operations=[op.to_record() for op in compiled.operations],
            report=compiled.report,
            internal=internal,
        )
        await db_admin.record_server_approval(conn, tenant, env, name, approver, comment)
        return {**record, "approved_by": approver, "approval_comment": comment}

    record, stored = await mutate_and_compile(d.pool, d.config, d.notifier, approve)
    record_change(request, kind="api_source", resource_id=name, before=current, after=record, comment=comment)
    record["projection_version"] = stored.version
    record["diff"] = tool_diff(current["tools"] if current["status"] == "approved" else [], pinned)
    return JSONResponse(record)
