"""Tool-list drift ("rug pull") detection in the data plane.

Every ``interval`` seconds (``GATEWAY_DRIFT_INTERVAL``, default 60; ``0`` turns it off)
:class:`DriftWatch` re-lists each approved server's tools (``tools/list``, every page,
on the pooled upstream session, off the hot path) and compares each live definition's
canonical SHA-256 (:func:`gateway.mcp.pinning.definition_sha256` of
:func:`~gateway.mcp.pinning.canonical_tool`, the hash the control plane pinned at
approval) with the pinned one in the active projection. A pinned tool whose live
definition changed, or that the upstream no longer lists, is *drifted*: the governor
hides it from ``tools/list`` and refuses calls to it (``-32602``, ``data.category``
``tool_drifted``, audited ``rejected``) until it is re-approved (a new pin has another
hash, so the drift no longer applies). Tools the upstream added after approval stay
invisible (they were never pinned). A server whose listing fails keeps its last verdict.

Each change is logged once at WARNING (``gateway.drift``). The upstream's
``notifications/tools/list_changed`` is not observed: the pooled upstream sessions do not
hold a server-to-client stream, so the interval bounds how long a rug pull can go unnoticed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import anyio
from pydantic import ValidationError

from gateway.dataplane.credentials import CredentialBroker, background_material
from gateway.dataplane.projection import SEPARATOR, ActiveProjection, ServerEntry, ToolEntry
from gateway.errors import UpstreamError, UpstreamProtocolError
from gateway.mcp.pinning import canonical_tool, definition_sha256
from gateway.mcp.upstream import UpstreamPool

__all__ = ["MAX_PAGES", "DriftWatch"]

log = logging.getLogger("gateway.drift")

MAX_PAGES = 100
"""Upper bound on ``tools/list`` pages followed through ``nextCursor`` per server and check."""

_Key = tuple[str, str, str]  # (server, tool, pinned sha256)


class DriftWatch:
    """The drifted pinned tools of the active projection, refreshed periodically.

    Args:
        current: Returns the active projection (None before the first one).
        upstreams: The pool whose sessions the re-lists use.
        interval: Seconds between checks; ``<= 0`` never checks (nothing is ever drifted).
        timeout: Seconds one server's whole listing (every page) may take; a slower one
            keeps its last verdict.
        broker: Resolves a credentialed server's ``everyone`` binding for the re-lists
            (:func:`~gateway.dataplane.credentials.background_material`); a server with
            bindings but no such one is not checked.
    """

    def __init__(
        self,
        current: Callable[[], ActiveProjection | None],
        upstreams: UpstreamPool,
        *,
        interval: float,
        timeout: float = 30.0,
        broker: CredentialBroker | None = None,
    ) -> None:
        self._current = current
        self._upstreams = upstreams
        self._broker = broker
        self._interval = interval
        self._timeout = timeout
        self._drifted: dict[_Key, str] = {}  # -> "changed" | "removed"
        self._poked = anyio.Event()

    def request_check(self, server: str) -> None:
        """Check now rather than at the next interval: ``server`` announced
        ``notifications/tools/list_changed`` (MCP 2025-11-25 ``server/tools``)."""
        log.info("upstream %s announced a changed tool list: drift check now", server)
        self._poked.set()

    def is_drifted(self, entry: ToolEntry) -> bool:
        """True when the upstream's live definition of ``entry`` differs from its pin (or is gone)."""
        return (entry.server, entry.name, entry.sha256) in self._drifted

    def drifted_tools(self) -> list[dict[str, str]]:
        """``[{"tool": "<server>__<tool>", "pinned_sha256", "reason": "changed"|"removed"}]``, sorted by tool."""
        return sorted(
            ({"tool": f"{s}{SEPARATOR}{t}", "pinned_sha256": h, "reason": r} for (s, t, h), r in self._drifted.items()),
            key=lambda d: d["tool"],
        )

    async def run(self) -> None:
        """Check every ``interval`` seconds, and at once on :meth:`request_check`, until
        cancelled (returns at once when disabled)."""
        if self._interval <= 0:
            return
        while True:
            with anyio.move_on_after(self._interval):
                await self._poked.wait()
            self._poked = anyio.Event()
            projection = self._current()
            if projection is not None:
                await self.check(projection)

    async def check(self, projection: ActiveProjection) -> None:
        """Re-list every MCP server of ``projection`` that has pinned tools (concurrently) and update
        the verdicts. API sources are not re-listed: their tools are compiled from the document
        pinned at approval, so they cannot drift."""
        verdicts: dict[str, dict[_Key, str] | None] = {}

        async def one(server: ServerEntry) -> None:
            verdicts[server.name] = await self._server_verdict(server)

        async with anyio.create_task_group() as tg:
            for server in projection.servers.values():
                if server.tools and server.api is None:  # an API source's tools are compiled, not listed
                    tg.start_soon(one, server)
        drifted: dict[_Key, str] = {}
        for name, found in verdicts.items():
            if found is None:  # listing failed: keep what we knew
                found = {k: v for k, v in self._drifted.items() if k[0] == name}
            drifted.update(found)
        for key in drifted.keys() - self._drifted.keys():
            log.warning(
                "tool %s%s%s drifted (%s) from its pinned definition %s; hidden and refused until re-approved",
                key[0], SEPARATOR, key[1], drifted[key], key[2][:12],
            )  # fmt: skip
        for key in self._drifted.keys() - drifted.keys():
            pinned_server = projection.servers.get(key[0])
            entry = pinned_server.tools.get(key[1]) if pinned_server else None
            if entry is not None and entry.sha256 == key[2]:  # not re-approved: the upstream went back
                log.warning("tool %s%s%s matches its pin again", key[0], SEPARATOR, key[1])
        self._drifted = drifted

    async def _server_verdict(self, server: ServerEntry) -> dict[_Key, str] | None:
        try:
            with anyio.fail_after(self._timeout):
                live = await self._list(server)
        except (UpstreamError, ValidationError, TimeoutError) as exc:
            log.info("drift check of %s skipped: %s", server.name, type(exc).__name__)
            return None
        except Exception as exc:  # a background check must never take the data plane down
            log.warning("drift check of %s failed: %s", server.name, type(exc).__name__)
            return None
        out: dict[_Key, str] = {}
        for name, entry in server.tools.items():
            digest = live.get(name)
            if digest != entry.sha256:
                out[(server.name, name, entry.sha256)] = "removed" if digest is None else "changed"
        return out

    async def _list(self, server: ServerEntry) -> dict[str, str]:
        """Live tool name -> canonical SHA-256, every page.

        Raises:
            UpstreamError: The upstream failed, answered an error, or its cursor loops.
            pydantic.ValidationError: A listed tool is not an MCP ``Tool``.
        """
        credential = await background_material(
            self._broker, server.name, server.bindings, required=server.requires_credential, transport=server.transport
        )
        upstream = self._upstreams.get(server.name, server.transport, server.url, credential=credential)
        found: dict[str, str] = {}
        cursor: str | None = None
        seen: set[str] = set()
        for _ in range(MAX_PAGES):
            params: dict[str, Any] = {"cursor": cursor} if cursor else {}
            reply = await upstream.request("tools/list", params)
            result = reply.get("result")
            if not isinstance(result, dict) or not isinstance(result.get("tools"), list):
                raise UpstreamProtocolError(f"upstream {server.name} answered tools/list without a tool list")
            for raw in result["tools"]:
                wire = canonical_tool(raw)
                digest = definition_sha256(wire)
                # a name listed twice with two definitions matches no pin
                found[wire["name"]] = digest if found.get(wire["name"], digest) == digest else ""
            cursor = result.get("nextCursor")
            if not cursor:
                return found
            if not isinstance(cursor, str) or cursor in seen:
                raise UpstreamProtocolError(f"upstream {server.name}: tools/list cursor repeats")
            seen.add(cursor)
        raise UpstreamProtocolError(f"upstream {server.name}: tools/list has more than {MAX_PAGES} pages")
