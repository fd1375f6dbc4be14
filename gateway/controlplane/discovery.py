"""List an upstream MCP server's tools with the real MCP SDK client, and pin each definition."""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import anyio
import orjson
from mcp import Client, MCPError

from gateway.db.servers import PinnedTool
from gateway.errors import UpstreamProtocolError, UpstreamTimeout, UpstreamUnavailable
from gateway.logredact import redact, redact_url

__all__ = ["MAX_PAGES", "discover_tools", "tool_sha256"]

log = logging.getLogger(__name__)

MAX_PAGES = 100
"""Upper bound on ``tools/list`` pages followed through ``next_cursor``."""


def tool_sha256(definition: dict[str, Any]) -> str:
    """Return the hex SHA-256 of ``definition`` as canonical JSON (sorted keys, compact)."""
    return hashlib.sha256(orjson.dumps(definition, option=orjson.OPT_SORT_KEYS)).hexdigest()


async def discover_tools(url: str, *, timeout: float) -> list[PinnedTool]:
    """Connect to a streamable-HTTP upstream and return every tool, pinned.

    Each tool is kept in its MCP wire form (``name``, ``title``, ``description``,
    ``inputSchema``, ``outputSchema``, ``annotations``, ``_meta``, ...) exactly as the
    SDK parsed it, with None fields dropped.

    Args:
        url: The upstream's MCP endpoint (``http(s)://host/mcp``).
        timeout: Seconds for the whole discovery (connect, handshake, all pages).

    Returns:
        The tools in the upstream's order.

    Raises:
        UpstreamTimeout: Discovery took longer than ``timeout``.
        UpstreamProtocolError: The upstream answered with an MCP error, duplicate
            tool names or a cursor loop.
        UpstreamUnavailable: The upstream could not be reached or failed otherwise.
    """
    try:
        with anyio.fail_after(timeout):
            return await _list_all(url)
    except TimeoutError:
        raise UpstreamTimeout(f"listing tools of the upstream timed out after {timeout:g}s") from None
    except UpstreamProtocolError:
        raise
    except MCPError as exc:
        log.warning("upstream %s answered an MCP error during discovery: %s", redact_url(url), redact(repr(exc)))
        raise UpstreamProtocolError("the upstream answered tools/list with an MCP error") from None
    except Exception as exc:  # connection refused, HTTP errors, TLS, bad payloads (often in an ExceptionGroup)
        log.warning("upstream %s unreachable during discovery: %s", redact_url(url), redact(repr(_root_cause(exc))))
        raise UpstreamUnavailable("could not list the upstream's tools; check its URL and that it is running") from None


def _root_cause(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


async def _list_all(url: str) -> list[PinnedTool]:
    tools: list[PinnedTool] = []
    seen_names: set[str] = set()
    seen_cursors: set[str] = set()
    cursor: str | None = None
    async with Client(url) as client:
        for _ in range(MAX_PAGES):
            page = await client.list_tools(cursor=cursor, cache_mode="bypass")
            for tool in page.tools:
                wire = tool.model_dump(by_alias=True, mode="json", exclude_none=True)
                if wire["name"] in seen_names:
                    raise UpstreamProtocolError("the upstream listed the same tool name twice")
                seen_names.add(wire["name"])
                tools.append(PinnedTool(definition=wire, sha256=tool_sha256(wire)))
            cursor = page.next_cursor
            if not cursor:
                return tools
            if cursor in seen_cursors:
                raise UpstreamProtocolError("the upstream's tools/list cursor repeats")
            seen_cursors.add(cursor)
    raise UpstreamProtocolError(f"the upstream's tools/list has more than {MAX_PAGES} pages")
