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

import contextlib
import itertools
import logging
import math
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Protocol

import anyio

__all__ = [
    "GATEWAY_CAPABILITIES",
    "NO_RELATED_REQUEST",
    "LIST_CHANGED",
    "ClientChannel",
    "InFlight",
    "Listeners",
    "answer_server_request",
    "cancelled_notification",
    "is_notification",
    "UseCount",
    "is_server_request",
    "keep_listening",
    "listen_on",
    "wanted",
]

log = logging.getLogger("gateway.upstream")

GATEWAY_CAPABILITIES: dict[str, Any] = {name: {} for name in ("sampling", "elicitation", "roots")}
"""What the gateway's own sessions declare (approval's discovery, the shared sessions, stdio
processes): every capability whose requests it relays, so tools an upstream offers only to
clients with them are listed, pinned and drift-checked the same way everywhere."""

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


async def _notify_safely(channel: ClientChannel, msg: dict[str, Any]) -> None:
    """Relay ``msg``; a failing client side never breaks the upstream's reader."""
    try:
        await channel.notify(msg)
    except Exception as exc:  # noqa: BLE001 - the reader (a process's stdout, a stream) must go on
        log.warning("relaying %s failed: %s", msg.get("method"), type(exc).__name__)


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
        self.listeners = Listeners()
        """Notifications outside any call (:class:`Listeners`): resource updates and list changes."""
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
        """Relay an upstream notification to the client it belongs to (or drop it).

        Resource updates and list changes go to the :attr:`listeners` that asked for them
        first; only one nobody listens for may go to the call in flight.
        """
        if await self.listeners.deliver(msg):
            return
        params = msg.get("params")
        if msg["method"] == "notifications/progress":
            token = params.get("progressToken") if isinstance(params, dict) else None
            owner = self._tokens.get(token) if isinstance(token, str) else None
            entry = self._channels.get(owner[0]) if owner is not None else None
            if owner is None or entry is None:
                return
            assert isinstance(params, dict)
            self._restart(owner[0])
            await _notify_safely(entry[0], {**msg, "params": {**params, "progressToken": owner[1]}})
            return
        key = self._sole()
        if key is None:
            log.debug("upstream notification %s not attributable to one request: dropped", msg["method"])
            return
        self._restart(key)
        await _notify_safely(self._channels[key][0], msg)

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


LIST_CHANGED = {
    "notifications/tools/list_changed": "toolsListChanged",
    "notifications/prompts/list_changed": "promptsListChanged",
    "notifications/resources/list_changed": "resourcesListChanged",
}
"""List-change notifications and the ``SubscriptionFilter`` flag that opts in to each
(MCP 2026-07-28 ``basic/patterns/subscriptions``)."""


def wanted(notifications: dict[str, Any], msg: dict[str, Any]) -> bool:
    """True when a listener with this ``SubscriptionFilter`` asked for ``msg``.

    ``notifications/resources/updated`` needs its ``uri`` in ``resourceSubscriptions``; a
    list change its flag (:data:`LIST_CHANGED`); nothing else is delivered outside a call.
    """
    method = msg.get("method")
    if msg.get("params") is not None and not isinstance(msg.get("params"), dict):
        return False
    if method == "notifications/resources/updated":
        params = msg.get("params")
        uris = notifications.get("resourceSubscriptions")
        return isinstance(params, dict) and isinstance(uris, list) and params.get("uri") in uris
    flag = LIST_CHANGED.get(str(method))
    return flag is not None and notifications.get(flag) is True


class Listeners:
    """Who hears an upstream session's notifications that belong to no call.

    Each listener has a ``SubscriptionFilter`` (``toolsListChanged``,
    ``promptsListChanged``, ``resourcesListChanged``, ``resourceSubscriptions``) and a
    sink; :meth:`deliver` hands a notification to every listener that asked for it.
    """

    def __init__(self) -> None:
        self._keys = itertools.count(1)
        self._sinks: dict[int, tuple[dict[str, Any], ClientChannel]] = {}

    def __len__(self) -> int:
        return len(self._sinks)

    def add(self, notifications: dict[str, Any], sink: ClientChannel) -> int:
        """Register a listener; returns its key for :meth:`remove`."""
        key = next(self._keys)
        self._sinks[key] = (notifications, sink)
        return key

    def remove(self, key: int) -> None:
        self._sinks.pop(key, None)

    def uris(self) -> set[str]:
        """Every resource URI some listener subscribed to."""
        out: set[str] = set()
        for notifications, _ in self._sinks.values():
            uris = notifications.get("resourceSubscriptions")
            if isinstance(uris, list):
                out.update(u for u in uris if isinstance(u, str))
        return out

    async def deliver(self, msg: dict[str, Any]) -> bool:
        """Hand ``msg`` to every listener that asked for it; False when none did."""
        sinks = [sink for notifications, sink in list(self._sinks.values()) if wanted(notifications, msg)]
        for sink in sinks:
            await _notify_safely(sink, msg)
        return bool(sinks)


class UseCount:
    """How many requests and listeners use an upstream session now (the pool closes none in use)."""

    def __init__(self) -> None:
        self._n = 0

    @property
    def busy(self) -> bool:
        return self._n > 0

    @contextlib.contextmanager
    def using(self) -> Iterator[None]:
        self._n += 1
        try:
            yield
        finally:
            self._n -= 1


async def keep_listening(where: str, attempt: Callable[[], Awaitable[None]], alive: Callable[[], bool]) -> None:
    """Run ``attempt`` (one listen on one session) again and again while ``alive()``, a second
    apart; a failure is logged, never raised (listeners run in task groups)."""
    while alive():
        try:
            await attempt()
        except Exception as exc:  # noqa: BLE001 - a listener never raises into a task group
            log.info("%s: listening failed (%s); retrying", where, type(exc).__name__)
        await anyio.sleep(1.0)


async def listen_on(
    listeners: Listeners,
    notifications: dict[str, Any],
    sink: ClientChannel,
    request: Callable[[str, dict[str, Any]], Awaitable[Any]],
    ended: Callable[[], Awaitable[Any]],
    ready: Callable[[], None] | None = None,
) -> None:
    """Listen on one handshake-era session until it ends (or the caller is cancelled).

    Joins ``listeners``, ``resources/subscribe``s (with ``request``) each URI of
    ``resourceSubscriptions`` no other listener subscribed to yet, waits for ``ended()``,
    calls ``ready()``, waits for ``ended()``, then leaves and ``resources/unsubscribe``s
    the URIs nobody wants any more (best effort, at most 2 s).
    """
    before = listeners.uris()
    key = listeners.add(notifications, sink)
    try:
        for uri in sorted(listeners.uris() - before):
            await request("resources/subscribe", {"uri": uri})
        if ready is not None:
            ready()
        await ended()
    finally:
        listeners.remove(key)
        mine = notifications.get("resourceSubscriptions")
        gone = {u for u in mine if isinstance(u, str)} - listeners.uris() if isinstance(mine, list) else set()
        with anyio.CancelScope(shield=True), anyio.move_on_after(2):
            for uri in sorted(gone):
                try:
                    await request("resources/unsubscribe", {"uri": uri})
                except Exception:  # noqa: BLE001 - best effort: the session may be gone
                    log.debug("resources/unsubscribe of a subscription failed")
