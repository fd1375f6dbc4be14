"""List an upstream MCP server's tools and prompts with the real MCP SDK client, pin each
definition, and record the capabilities the server declares."""

from __future__ import annotations

import logging
from collections.abc import Generator, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2
from mcp import Client, MCPError
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.types import ErrorData
from pydantic import BaseModel

from gateway.db.servers import PinnedPrompt, PinnedTool
from gateway.errors import UpstreamProtocolError, UpstreamTimeout, UpstreamUnavailable
from gateway.logredact import redact, redact_url
from gateway.mcp.credential import UpstreamCredential, with_query
from gateway.mcp.pinning import DRIFT_FIELDS, definition_sha256
from gateway.mcp.stdio import StdioLaunch, stdio_transport

__all__ = ["MAX_PAGES", "Discovery", "discover_server", "discover_tools", "tool_diff", "tool_sha256"]

log = logging.getLogger(__name__)

MAX_PAGES = 100
"""Upper bound on ``tools/list`` (and ``prompts/list``) pages followed through ``next_cursor``."""


@dataclass(frozen=True)
class Discovery:
    """What an approval pins: tools, prompts and the server's declared capabilities.

    Attributes:
        tools: Every tool, in the upstream's order.
        prompts: Every prompt (``[]`` when the server declares no ``prompts`` capability).
        capabilities: The server's ``ServerCapabilities`` in wire form, e.g.
            ``{"tools": {...}, "resources": {...}, "prompts": {...}, "completions": {}, "logging": {}}``
            (MCP 2025-11-25 ``initialize`` result / 2026-07-28 ``server/discover``).
    """

    tools: list[PinnedTool]
    prompts: list[PinnedPrompt]
    capabilities: dict[str, Any]


tool_sha256 = definition_sha256
"""Hex SHA-256 of a definition's canonical JSON (:func:`gateway.mcp.pinning.definition_sha256`,
the hash the data plane's drift check compares)."""


def tool_diff(pinned: list[dict[str, Any]], live: list[PinnedTool]) -> dict[str, Any]:
    """What re-approving would change: ``pinned`` (the stored tools, wire dicts with ``sha256``)
    against ``live`` (a fresh discovery).

    Returns:
        ``{"added": [name, ...], "removed": [name, ...], "changed": [{"name", "fields": [...]}]}``,
        each sorted by name; ``fields`` names the changed :data:`~gateway.mcp.pinning.DRIFT_FIELDS`
        (``title``, ``description``, ``inputSchema``, ``outputSchema``, ``annotations``) and
        ``other`` for any other difference (e.g. ``_meta``, ``icons``).
    """
    old = {t["name"]: {k: v for k, v in t.items() if k != "sha256"} for t in pinned}
    new = {t.definition["name"]: t.definition for t in live}
    changed = []
    for name in sorted(old.keys() & new.keys()):
        a, b = old[name], new[name]
        if definition_sha256(a) == definition_sha256(b):
            continue
        fields = [f for f in DRIFT_FIELDS if a.get(f) != b.get(f)]
        rest = (set(a) | set(b)) - set(DRIFT_FIELDS)
        if any(a.get(k) != b.get(k) for k in rest):
            fields.append("other")
        changed.append({"name": name, "fields": fields})
    return {"added": sorted(new.keys() - old.keys()), "removed": sorted(old.keys() - new.keys()), "changed": changed}


async def discover_tools(url: str, *, timeout: float) -> list[PinnedTool]:
    """Connect to a streamable-HTTP upstream and return every tool, pinned (see :func:`discover_server`)."""
    return (await discover_server(url, timeout=timeout)).tools


async def discover_server(
    url: str | None,
    *,
    timeout: float,
    transport: str = "streamable_http",
    name: str = "",
    launch: StdioLaunch | None = None,
    credential: UpstreamCredential | None = None,
) -> Discovery:
    """Connect to an upstream and return its tools and prompts, pinned, and its capabilities.

    The SDK client connects over the registry record's ``transport``:
    ``streamable_http`` to ``url``; ``legacy_sse`` (2024-11-05 HTTP+SSE) with the
    SDK's ``sse_client`` to ``url`` (the SSE endpoint; it refuses an ``endpoint``
    event on another origin), ``initialize`` handshake; ``stdio`` by starting
    ``launch`` briefly with :func:`gateway.mcp.stdio.stdio_transport` (the data
    plane's minimal environment, process group and caps), stopped afterwards.

    Each tool is kept in its MCP wire form (``name``, ``title``, ``description``,
    ``inputSchema``, ``outputSchema``, ``annotations``, ``_meta``, ...) exactly as the
    SDK parsed it, with None fields dropped; each prompt likewise (``name``, ``title``,
    ``description``, ``arguments``, ...). Prompts are listed only when the server
    declares the ``prompts`` capability. Resources are not pinned: they are listed
    live at request time.

    Args:
        url: The upstream's MCP endpoint (``http(s)://host/mcp``, or the SSE endpoint); None for ``stdio``.
        timeout: Seconds for the whole discovery (connect, handshake, all pages).
        transport: ``streamable_http``, ``legacy_sse`` or ``stdio``.
        name: The server's name (log lines of a stdio process).
        launch: What to run, for ``stdio``.
        credential: What to present (the server's ``everyone`` binding, resolved by
            :func:`gateway.controlplane.broker.discovery_material`): headers and query
            parameters over HTTP, environment variables for ``stdio``.

    Returns:
        The tools and prompts in the upstream's order, and the capabilities.

    Raises:
        UpstreamTimeout: Discovery took longer than ``timeout``.
        UpstreamProtocolError: The upstream answered with an MCP error, duplicate
            tool or prompt names or a cursor loop.
        UpstreamUnavailable: The upstream could not be reached or failed otherwise.
    """
    where = redact_url(url) if url else f"stdio:{name}"
    # Declared like a client that can do everything the gateway relays, so that tools an
    # upstream offers only to such clients (sampling, elicitation, roots) are listed and pinned.
    declares: dict[str, Any] = {
        "sampling_callback": _refuse,
        "elicitation_callback": _refuse,
        "list_roots_callback": _refuse_roots,
    }
    headers = dict(credential.headers) if credential is not None else {}
    target = with_query(str(url), credential.query) if credential is not None and url else url
    # With a credential, our own client carries its headers (and follows no redirect with them).
    http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(timeout), follow_redirects=False)
    if transport == "stdio":
        if launch is None:
            raise ValueError("a stdio server needs a launch")
        if credential is not None:
            launch = launch.with_env(credential.env)
        client = Client(stdio_transport(name, launch), mode="legacy", **declares)
        hint = "check its command, args, cwd and env (the gateway log has its stderr)"
    elif transport == "legacy_sse":
        # The SDK joins the endpoint event's URI to the SSE URL, losing its query: a query
        # credential goes onto every request (the GET stream and each message POST) instead.
        auth = _QueryAuth(credential.query) if credential is not None and credential.query else None
        client = Client(sse_client(str(url), headers=headers or None, auth=auth), mode="legacy", **declares)
        hint = "check its SSE URL and that it is running"
    elif credential is not None:
        client = Client(streamable_http_client(str(target), http_client=http), **declares)
        hint = "check its URL and that it is running"
    else:
        client = Client(str(url), **declares)
        hint = "check its URL and that it is running"
    if credential is not None:
        hint += ", and that the server's everyone credential is accepted"
    try:
        with anyio.fail_after(timeout):
            async with http:
                return await _list_all(client)
    except TimeoutError:
        raise UpstreamTimeout(f"listing tools of the upstream timed out after {timeout:g}s") from None
    except UpstreamProtocolError:
        raise
    except MCPError as exc:
        log.warning("upstream %s answered an MCP error during discovery: %s", where, redact(repr(exc)))
        raise UpstreamProtocolError("the upstream answered tools/list or prompts/list with an MCP error") from None
    except Exception as exc:  # connection refused, HTTP errors, TLS, bad payloads (often in an ExceptionGroup)
        log.warning("upstream %s unreachable during discovery: %s", where, redact(repr(_root_cause(exc))))
        raise UpstreamUnavailable(f"could not list the upstream's tools; {hint}") from None


class _QueryAuth(httpx2.Auth):
    """Adds a credential's query parameters to every request (legacy SSE discovery)."""

    def __init__(self, query: Mapping[str, str]) -> None:
        self._query = dict(query)

    def auth_flow(self, request: httpx2.Request) -> Generator[httpx2.Request, httpx2.Response, None]:
        request.url = request.url.copy_merge_params(self._query)
        yield request


async def _refuse(context: Any, params: Any) -> ErrorData:
    """Discovery answers no question an upstream asks while it is listed."""
    return ErrorData(code=-32601, message="Discovery answers no requests")


async def _refuse_roots(context: Any) -> ErrorData:
    return ErrorData(code=-32601, message="Discovery answers no requests")


def _root_cause(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


async def _list_all(client: Client) -> Discovery:
    async with client:
        capabilities = client.server_capabilities.model_dump(by_alias=True, mode="json", exclude_none=True)
        tools = [PinnedTool(definition=w, sha256=tool_sha256(w)) for w in await _pages(client, "tools")]
        prompts = []
        if "prompts" in capabilities:
            prompts = [PinnedPrompt(definition=w, sha256=tool_sha256(w)) for w in await _pages(client, "prompts")]
    return Discovery(tools=tools, prompts=prompts, capabilities=capabilities)


async def _pages(client: Client, kind: str) -> list[dict[str, Any]]:
    """Every item of ``tools/list`` or ``prompts/list`` (``kind``), in wire form, following cursors."""
    items: list[dict[str, Any]] = []
    seen_names: set[str] = set()
    seen_cursors: set[str] = set()
    cursor: str | None = None
    for _ in range(MAX_PAGES):
        page: list[BaseModel]
        if kind == "tools":
            tool_page = await client.list_tools(cursor=cursor, cache_mode="bypass")
            page, cursor = list(tool_page.tools), tool_page.next_cursor
        else:
            prompt_page = await client.list_prompts(cursor=cursor, cache_mode="bypass")
            page, cursor = list(prompt_page.prompts), prompt_page.next_cursor
        for item in page:
            wire = item.model_dump(by_alias=True, mode="json", exclude_none=True)
            if wire["name"] in seen_names:
                raise UpstreamProtocolError(f"the upstream listed the same {kind[:-1]} name twice")
            seen_names.add(wire["name"])
            items.append(wire)
        if not cursor:
            return items
        if cursor in seen_cursors:
            raise UpstreamProtocolError(f"the upstream's {kind}/list cursor repeats")
        seen_cursors.add(cursor)
    raise UpstreamProtocolError(f"the upstream's {kind}/list has more than {MAX_PAGES} pages")
