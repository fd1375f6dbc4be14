"""Server-to-client traffic of a request in flight, as the upstream transports see it.

While an upstream works on a request it may send messages that are not the
response: notifications related to it (``notifications/progress``,
``notifications/message``, ``notifications/*/list_changed``,
``notifications/resources/updated``) and requests of its own
(``sampling/createMessage``, ``elicitation/create``, ``roots/list``, ``ping``).
Source: MCP 2025-11-25 ``basic/transports`` (a POST's SSE stream "MAY send
JSON-RPC requests and notifications before sending the JSON-RPC response. These
messages SHOULD relate to the originating client request"), ``basic/utilities/progress``.

A transport hands each of them to the :class:`ClientChannel` of the request they
belong to. On streamable HTTP the stream says which request that is. On the
multiplexed transports (stdio, legacy HTTP+SSE) every message shares one channel,
so :class:`InFlight` attributes them:

* ``notifications/progress`` by its ``progressToken``. Each forwarded request that
  carries one gets a gateway token (``gw-<n>``) upstream; the progress notification
  goes back to that request's client with the client's own token restored, so tokens
  of different callers never collide;
* any other notification, and every server request but ``ping``, to the one request
  in flight when there is exactly one. With none or several in flight the message
  cannot be attributed safely: a notification is dropped, a request is answered
  ``-32603`` (``data.category = "no_related_request"``) rather than shown to a client
  that did not cause it. ``ping`` is answered ``{}`` by the gateway.
"""

from __future__ import annotations

import itertools
import logging
import math
from typing import Any, Protocol

import anyio

__all__ = [
    "NO_RELATED_REQUEST",
    "ClientChannel",
    "InFlight",
    "answer_server_request",
    "cancelled_notification",
    "is_notification",
    "is_server_request",
]

log = logging.getLogger("gateway.upstream")

NO_RELATED_REQUEST = "no_related_request"
"""``data.category`` of the ``-32603`` answering a server request no client can be asked for."""


class ClientChannel(Protocol):
    """The client of one request in flight (implemented by the data plane)."""

    async def notify(self, message: dict[str, Any]) -> None:
        """Relay one notification (a JSON-RPC notification object) to the client."""
        ...

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        """Ask the client; return ``{"result": ...}`` or ``{"error": {...}}`` (no ``jsonrpc``/``id``).

        Never raises for a refusal: a denied or unanswerable request is an ``error`` member.
        """
        ...


def is_server_request(msg: dict[str, Any]) -> bool:
    """A JSON-RPC request (``method`` and an ``id``) sent by the upstream."""
    return isinstance(msg.get("method"), str) and "id" in msg and msg["id"] is not None


def is_notification(msg: dict[str, Any]) -> bool:
    """A JSON-RPC notification (``method``, no ``id``)."""
    return isinstance(msg.get("method"), str) and "id" not in msg


def cancelled_notification(request_id: int | str, reason: str = "The client cancelled the request") -> dict[str, Any]:
    """``notifications/cancelled`` for a request the gateway sent (MCP 2025-11-25 ``utilities/cancellation``)."""
    return {
        "jsonrpc": "2.0",
        "method": "notifications/cancelled",
        "params": {"requestId": request_id, "reason": reason},
    }


def _error(code: int, message: str, category: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if category is not None:
        error["data"] = {"category": category}
    return {"error": error}


async def answer_server_request(channel: ClientChannel | None, msg: dict[str, Any]) -> dict[str, Any]:
    """The JSON-RPC response (``jsonrpc``, ``id`` and ``result`` or ``error``) to an upstream's request.

    ``ping`` is answered ``{}`` here; anything else is asked of ``channel``, or answered
    ``-32603`` ``no_related_request`` when there is none.
    """
    method, params = msg["method"], msg.get("params")
    if method == "ping":
        reply: dict[str, Any] = {"result": {}}
    elif channel is None:
        reply = _error(-32603, f"No client can be asked {method!r} for this upstream", NO_RELATED_REQUEST)
    else:
        reply = await channel.request(method, params if isinstance(params, dict) else {})
    return {"jsonrpc": "2.0", "id": msg["id"], **reply}


class InFlight:
    """The channels of the requests in flight on one multiplexed upstream session.

    Args:
        idle: Seconds a request may stay idle; a message relayed for it restarts its clock
            (the ``clock`` scope given to :meth:`enter`), and the clock stops while the
            client is being asked something for it.
    """

    def __init__(self, idle: float) -> None:
        self._idle = idle
        self._keys = itertools.count(1)
        self._channels: dict[int, tuple[ClientChannel, anyio.CancelScope | None]] = {}
        self._tokens: dict[str, tuple[int, Any]] = {}
        self._asking: dict[int, int] = {}

    def enter(
        self, params: dict[str, Any], channel: ClientChannel | None, clock: anyio.CancelScope | None = None
    ) -> tuple[int, dict[str, Any]]:
        """Register a request about to be sent; return its key and the params to send.

        A ``_meta.progressToken`` is replaced by a gateway token (see the module docstring).
        """
        key = next(self._keys)
        if channel is None:
            return key, params
        self._channels[key] = (channel, clock)
        meta = params.get("_meta")
        if isinstance(meta, dict) and "progressToken" in meta:
            token = f"gw-{key}"
            self._tokens[token] = (key, meta["progressToken"])
            params = {**params, "_meta": {**meta, "progressToken": token}}
        return key, params

    def leave(self, key: int) -> None:
        """Forget a request whose response arrived (or that failed)."""
        self._channels.pop(key, None)
        self._tokens.pop(f"gw-{key}", None)
        self._asking.pop(key, None)

    def _restart(self, key: int) -> None:
        entry = self._channels.get(key)
        if entry is not None and entry[1] is not None:
            asking = self._asking.get(key, 0)
            entry[1].deadline = math.inf if asking else anyio.current_time() + self._idle

    def _sole(self) -> int | None:
        return next(iter(self._channels)) if len(self._channels) == 1 else None

    async def notification(self, msg: dict[str, Any]) -> None:
        """Relay an upstream notification to the client it belongs to (or drop it)."""
        params = msg.get("params")
        if msg["method"] == "notifications/progress":
            token = params.get("progressToken") if isinstance(params, dict) else None
            owner = self._tokens.get(token) if isinstance(token, str) else None
            entry = self._channels.get(owner[0]) if owner is not None else None
            if owner is None or entry is None:
                return
            assert isinstance(params, dict)
            self._restart(owner[0])
            await entry[0].notify({**msg, "params": {**params, "progressToken": owner[1]}})
            return
        key = self._sole()
        if key is None:
            log.debug("upstream notification %s not attributable to one request: dropped", msg["method"])
            return
        self._restart(key)
        await self._channels[key][0].notify(msg)

    async def answer(self, msg: dict[str, Any]) -> dict[str, Any]:
        """The response to an upstream request (see :func:`answer_server_request`)."""
        key = None if msg["method"] == "ping" else self._sole()
        if key is None:
            return await answer_server_request(None, msg)
        self._asking[key] = self._asking.get(key, 0) + 1
        self._restart(key)
        try:
            return await answer_server_request(self._channels[key][0], msg)
        finally:
            if key in self._asking:
                self._asking[key] -= 1
                self._restart(key)
