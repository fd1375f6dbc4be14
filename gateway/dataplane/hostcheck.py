"""DNS-rebinding protection for every data-plane route: ``Host`` and ``Origin`` allow-lists.

A pure ASGI middleware. Source: MCP 2025-11-25 ``basic/transports`` "Security
Warning" and MCP 2026-07-28 ``basic/transports/streamable-http`` (servers MUST
validate ``Origin``; a present and invalid ``Origin`` gets 403, the body MAY be a
JSON-RPC error without ``id``). A ``Host`` that is not one of this data plane's
names gets 421 Misdirected Request (RFC 9110 §15.5.20), as the MCP SDK answers.

Both checks are exact, case-insensitive set lookups (no parsing on the hot path).
The allowed values come from :class:`gateway.config.DataPlaneConfig`
(``allowed_hosts``, ``allowed_origins``; see there for the defaults: a loopback
name is trusted only with the data plane's own port).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["HostOriginGuard"]

log = logging.getLogger("gateway.mcp")


def _refusal(status: int, message: str, category: str) -> tuple[int, bytes]:
    body = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": message, "data": {"category": category}}}
    return status, orjson.dumps(body)


_BAD_HOST = _refusal(421, "Host not allowed", "host_not_allowed")
_BAD_ORIGIN = _refusal(403, "Origin not allowed", "origin_not_allowed")


class HostOriginGuard:
    """Refuse HTTP requests whose ``Host`` or ``Origin`` is not allowed.

    * ``Host`` missing or not in ``allowed_hosts`` -> **421**;
    * ``Origin`` present and not in ``allowed_origins`` -> **403** (an absent
      ``Origin`` is a non-browser client and passes).

    Both bodies are ``application/json`` JSON-RPC errors without ``id``
    (code ``-32600``, ``data.category`` ``host_not_allowed`` / ``origin_not_allowed``).
    The refused value is not logged (it is attacker-controlled).

    Args:
        app: The data-plane app.
        allowed_hosts: ``host[:port]`` values, e.g. ``127.0.0.1:8081``, ``[::1]:8081``,
            ``gateway.example.com``; compared case-insensitively.
        allowed_origins: ``scheme://host[:port]`` values, e.g. ``https://gateway.example.com``.
    """

    def __init__(self, app: ASGIApp, *, allowed_hosts: Iterable[str], allowed_origins: Iterable[str]) -> None:
        self._app = app
        self._hosts = frozenset(h.lower().encode("latin-1") for h in allowed_hosts)
        self._origins = frozenset(o.lower().encode("latin-1") for o in allowed_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        host_ok = origin_ok = None  # None: header absent; every copy of a repeated header must pass
        for key, value in scope["headers"]:
            if key == b"host":
                host_ok = host_ok is not False and value.lower() in self._hosts
            elif key == b"origin":
                origin_ok = origin_ok is not False and value.lower() in self._origins
        if host_ok and origin_ok is not False:
            await self._app(scope, receive, send)
            return
        status, body = _BAD_ORIGIN if host_ok else _BAD_HOST
        log.info("refused a request: %s not allowed", "Origin" if host_ok else "Host")
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
