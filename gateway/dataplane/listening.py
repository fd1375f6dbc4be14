"""Notifications outside any call: list changes and resource updates, to the clients listening.

Clients listen in two ways (MCP 2025-11-25 ``basic/transports`` "Listening for Messages
from the Server"; MCP 2026-07-28 ``basic/patterns/subscriptions``):

* a handshake-era session opens one ``GET`` stream (:meth:`Hub.session_stream`) and
  hears every list change of its endpoint, and the ``notifications/resources/updated``
  of the resources it subscribed to with ``resources/subscribe``;
* a 2026-07-28 client opens a ``subscriptions/listen`` stream with a
  ``SubscriptionFilter`` and hears exactly what it asked for, each notification tagged
  with ``_meta["io.modelcontextprotocol/subscriptionId"]`` (its request id); the first
  message is ``notifications/subscriptions/acknowledged`` with the honored filter.

Where the notifications come from:

* **list changes**: :class:`ServerWatch` listens on each approved server's shared
  upstream session for its list changes (a standing ``subscriptions/listen`` to a
  2026-07-28 upstream, the ``GET`` stream of a handshake-era one, the stream or stdout of
  the multiplexed transports). A ``tools/list_changed`` starts a drift check at once
  (:mod:`gateway.dataplane.drift`) and every change is passed on to the listeners of the
  endpoints that server belongs to (clients re-list and see the gateway's lists, which
  change only when policy, approvals or drift say so). A new projection announces all
  three lists changed;
* **resource updates**: each subscription (a URI a client subscribed to, after policy
  allowed ``resources/subscribe`` on it) listens on the caller's own upstream session
  (:class:`~gateway.mcp.upstream.UpstreamPool`) for that URI; on ``/mcp`` the URI is
  namespaced on the way out.

A listener that does not read its stream loses notifications beyond 256 queued ones.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskGroup

from gateway.dataplane.credentials import BindingRef, CredentialBroker, background_material
from gateway.dataplane.namespacing import namespace_uri
from gateway.dataplane.projection import ActiveProjection
from gateway.dataplane.relay import Outbox
from gateway.dataplane.sessions import Session
from gateway.errors import CredentialUnavailable
from gateway.mcp.channel import LIST_CHANGED, wanted
from gateway.mcp.credential import UpstreamCredential
from gateway.mcp.upstream import UpstreamCaller, UpstreamPool

__all__ = [
    "ALL_LISTS",
    "MAX_PER_SUBJECT",
    "MAX_TOTAL",
    "SETTLE_TIMEOUT",
    "Hub",
    "Listener",
    "ServerWatch",
    "Subscription",
]

log = logging.getLogger("gateway.mcp")

MAX_PER_SUBJECT = 256
"""Most resource subscriptions one subject holds in a data plane (over all its sessions)."""

MAX_TOTAL = 1500
"""Most resource subscriptions in a data plane (each holds an upstream stream; the stream
client allows 2 000 connections)."""

SETTLE_TIMEOUT = 10.0
"""Most seconds a subscribe (or a listen's acknowledgement) waits for the upstream to take it."""

ALL_LISTS = {flag: True for flag in LIST_CHANGED.values()}
"""The ``SubscriptionFilter`` of every list change."""


@dataclass(eq=False)
class Listener:
    """One listening client stream.

    Attributes:
        endpoint: ``None`` for ``/mcp``, else the server of ``/mcp/{server}``.
        notifications: The list-change flags it asked for (``SubscriptionFilter``).
        outbox: Its stream's queue.
        subscription_id: The 2026-07-28 listen request's id (tags every notification), or
            None for a handshake-era ``GET`` stream.
    """

    endpoint: str | None
    notifications: dict[str, Any]
    outbox: Outbox
    subscription_id: Any = None

    async def deliver(self, msg: dict[str, Any]) -> None:
        raw_params = msg.get("params")
        if raw_params is not None and not isinstance(raw_params, dict):
            return  # not a notification an MCP client can take
        if self.subscription_id is not None:
            params = dict(raw_params or {})
            raw_meta = params.get("_meta")
            meta = dict(raw_meta) if isinstance(raw_meta, dict) else {}
            meta["io.modelcontextprotocol/subscriptionId"] = self.subscription_id
            msg = {**msg, "params": {**params, "_meta": meta}}
        await self.outbox.notify(msg)


@dataclass(eq=False)
class Subscription:
    """One resource a listener subscribed to, heard on the caller's upstream session."""

    server: str
    uri: str
    owner: tuple[str, str] = ("", "")
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    ready: anyio.Event = field(default_factory=anyio.Event)
    """Set once the upstream has taken the subscription."""


class _Sink:
    """Resource updates of one subscription, namespaced for ``/mcp``, to one listener."""

    def __init__(self, listener: Listener, server: str) -> None:
        self._listener, self._server = listener, server

    async def notify(self, message: dict[str, Any]) -> None:
        params = message.get("params")
        if self._listener.endpoint is None and isinstance(params, dict) and isinstance(params.get("uri"), str):
            message = {**message, "params": {**params, "uri": namespace_uri(self._server, params["uri"])}}
        await self._listener.deliver(message)

    async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:  # pragma: no cover
        return {"error": {"code": -32601, "message": "Not relayed"}}


class Hub:
    """The listening client streams of one data plane, and their resource subscriptions.

    Args:
        upstreams: The pool whose per-caller sessions carry resource updates.
        spawner: Runs the subscriptions (the data plane's task group).
    """

    def __init__(self, upstreams: UpstreamPool, spawner: TaskGroup) -> None:
        self._upstreams = upstreams
        self._spawner = spawner
        self._listeners: set[Listener] = set()
        self._per_subject: dict[tuple[str, str], int] = {}

    def can_subscribe(self, caller: UpstreamCaller) -> bool:
        """Room for one more subscription of this subject (:data:`MAX_PER_SUBJECT`) and in
        the data plane (:data:`MAX_TOTAL`): each one holds an upstream stream."""
        total = sum(self._per_subject.values())
        return total < MAX_TOTAL and self._per_subject.get((caller.issuer, caller.subject), 0) < MAX_PER_SUBJECT

    def spawn(self, fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run ``fn`` in the data plane's task group (it must not raise)."""
        self._spawner.start_soon(fn)

    @property
    def listeners(self) -> int:
        """Client streams listening now."""
        return len(self._listeners)

    def add(self, listener: Listener) -> None:
        self._listeners.add(listener)

    def remove(self, listener: Listener) -> None:
        self._listeners.discard(listener)

    async def list_changed(self, server: str | None, msg: dict[str, Any]) -> None:
        """Pass a list change of ``server`` (None: every server) to the listeners that asked for it."""
        for listener in list(self._listeners):
            if (server is None or listener.endpoint in (None, server)) and wanted(listener.notifications, msg):
                await listener.deliver(msg)

    def subscribe(
        self,
        listener: Listener,
        caller: UpstreamCaller,
        projection: ActiveProjection,
        server: str,
        uri: str,
        credential: UpstreamCredential | None = None,
    ) -> Subscription:
        """Listen for ``notifications/resources/updated`` of ``uri`` (the upstream's own form)
        on the caller's session of ``server`` (with the caller's ``credential``), until
        :meth:`unsubscribe`.

        Raises:
            KeyError: ``server`` is not in ``projection``.
        """
        entry = projection.servers[server]
        upstream = self._upstreams.get(entry.name, entry.transport, entry.url, caller, credential)
        subscription = Subscription(server, uri, (caller.issuer, caller.subject))
        self._per_subject[subscription.owner] = self._per_subject.get(subscription.owner, 0) + 1

        async def run() -> None:
            with subscription.scope:
                try:
                    await upstream.listen(
                        {"resourceSubscriptions": [uri]}, _Sink(listener, server), subscription.ready.set
                    )
                except Exception:  # a subscription never takes the data plane's task group down
                    log.exception("resource subscription on upstream %s failed", server)

        self._spawner.start_soon(run)
        return subscription

    @staticmethod
    async def settled(subscriptions: list[Subscription], timeout: float = SETTLE_TIMEOUT) -> None:
        """Wait (at most ``timeout`` s) until the upstreams have taken ``subscriptions``, so a
        client told it is subscribed misses no update made after that; a slower upstream's
        subscription is still made when it answers."""
        with anyio.move_on_after(timeout):
            for subscription in subscriptions:
                await subscription.ready.wait()

    def unsubscribe(self, subscription: Subscription) -> None:
        if not subscription.scope.cancel_called:
            count = self._per_subject.get(subscription.owner, 0) - 1
            if count > 0:
                self._per_subject[subscription.owner] = count
            else:
                self._per_subject.pop(subscription.owner, None)
        subscription.scope.cancel()

    def close_session(self, session: Session) -> None:
        """A handshake-era session ended: cancel its requests in progress, forget their
        resumable streams, drop its listener and subscriptions."""
        for scope in list(session.running.values()):
            scope.cancel()
        for stream in list(session.streams.values()):
            stream.cancel()
        for subscription in session.subscriptions.values():
            self.unsubscribe(subscription)
        session.subscriptions.clear()
        if session.listener is not None:
            self.remove(session.listener)
            session.listener = None

    def session_listener(self, session: Session, endpoint: str | None) -> Listener:
        """The session's listener (every list change of ``endpoint``), created on first need."""
        if session.listener is None:
            session.listener = Listener(endpoint, dict(ALL_LISTS), Outbox(session))
            self.add(session.listener)
        return session.listener


CREDENTIAL_REFRESH = 120.0
"""Seconds a list-change watch of a credentialed server runs before its material is resolved
again (and the session re-fetched), so an expired token is replaced."""

RETRY_WATCH = 5.0
"""Seconds before a watch that failed (or could get no credential) is tried again."""

_WatchKey = tuple[str, str, str, tuple[BindingRef, ...], bool]
"""A watched server: name, transport, URL, bindings and whether it requires a credential."""


class ServerWatch:
    """Listens for each approved server's list changes on its shared upstream session.

    Args:
        current: The active projection (re-read every ``interval`` seconds).
        upstreams: The pool.
        hub: Where list changes go.
        on_tools_changed: Called with the server name on its ``tools/list_changed`` (the
            drift check).
        interval: Seconds between comparisons of the watched servers with the projection.
        broker: Resolves a credentialed server's ``everyone`` binding for its watch
            (:func:`~gateway.dataplane.credentials.background_material`); a server with
            bindings but no such one is not watched.
    """

    def __init__(
        self,
        current: Callable[[], ActiveProjection | None],
        upstreams: UpstreamPool,
        hub: Hub,
        *,
        on_tools_changed: Callable[[str], None] | None = None,
        interval: float = 1.0,
        broker: CredentialBroker | None = None,
    ) -> None:
        self._broker = broker
        self._current = current
        self._upstreams = upstreams
        self._hub = hub
        self._on_tools_changed = on_tools_changed
        self._interval = interval
        self._watching: dict[_WatchKey, anyio.CancelScope] = {}

    async def run(self) -> None:
        """Keep one watch per server of the active projection, until cancelled."""
        version: int | None = None
        async with anyio.create_task_group() as tg:
            while True:
                projection = self._current()
                if projection is not None:
                    if version is not None and projection.version != version:
                        for method in LIST_CHANGED:
                            await self._hub.list_changed(None, {"jsonrpc": "2.0", "method": method})
                    version = projection.version
                    self._reconcile(projection, tg)
                await anyio.sleep(self._interval)

    def _reconcile(self, projection: ActiveProjection, tg: TaskGroup) -> None:
        wanted = {
            (s.name, s.transport, s.url, s.bindings, s.requires_credential)
            for s in projection.servers.values()
            if s.api is None  # an API source sends no notifications
        }
        for key in [k for k in self._watching if k not in wanted]:
            self._watching.pop(key).cancel()
        for key in wanted - self._watching.keys():
            scope = self._watching[key] = anyio.CancelScope()
            tg.start_soon(self._watch, key, scope)

    async def _watch(self, key: _WatchKey, scope: anyio.CancelScope) -> None:
        name = key[0]
        watch = self

        class Sink:
            async def notify(self, message: dict[str, Any]) -> None:
                if message.get("method") == "notifications/tools/list_changed" and watch._on_tools_changed:
                    watch._on_tools_changed(name)
                await watch._hub.list_changed(name, {"jsonrpc": "2.0", "method": message["method"]})

            async def request(self, method: str, params: dict[str, Any]) -> dict[str, Any]:  # pragma: no cover
                return {"error": {"code": -32601, "message": "Not relayed"}}

        with scope:
            while True:
                try:
                    credential = await background_material(
                        self._broker, name, key[3], required=key[4], transport=key[1]
                    )
                    upstream = self._upstreams.get(name, key[1], key[2], credential=credential)
                    if credential is None:
                        await upstream.listen(dict(ALL_LISTS), Sink())  # returns only once closed
                    else:  # the material is fetched again now and then: a token expires
                        with anyio.move_on_after(CREDENTIAL_REFRESH):
                            await upstream.listen(dict(ALL_LISTS), Sink())
                        continue
                except CredentialUnavailable as exc:
                    log.info("not watching upstream %s for list changes now: %s", name, exc)
                except Exception:  # a background watch never takes the data plane down
                    log.exception("watching upstream %s for list changes failed", name)
                await anyio.sleep(RETRY_WATCH)
