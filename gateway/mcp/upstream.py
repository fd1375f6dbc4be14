"""Upstream MCP client over streamable HTTP, both protocol eras, pooled.

The gateway terminates the client's MCP session and keeps its own session per
upstream, reused across calls (never opened per call):

* modern (2026-07-28, stateless): every request is one POST carrying the
  ``_meta`` envelope and the ``MCP-Protocol-Version``/``Mcp-Method``/``Mcp-Name``
  headers (MCP 2026-07-28 ``basic/transports/streamable-http``); a ``tools/call``
  also carries the ``Mcp-Param-*`` headers of the tool's ``x-mcp-header`` arguments
  (SEP-2243), learnt from the upstream's ``tools/list`` the first time it answers
  ``-32020`` (the call is then retried once: a ``-32020`` is refused before the tool
  runs), and forgotten whenever a ``tools/list`` is relayed;
* legacy (2025-03-26 .. 2025-11-25): one ``initialize`` handshake, then
  ``Mcp-Session-Id`` on every POST; a 404 (or the 400 many servers send for an
  unknown session) means the session is gone: it is re-established and the
  request retried once (MCP 2025-11-25 ``basic/transports`` "Session Management").

A **401** to a request sent with brokered material (:mod:`gateway.mcp.credential`) means the
upstream refused it and processed nothing: the material's ``renew`` hook is asked once for
other material; with some, the session opened with the refused material is dropped and the
request sent once more (new session, new material); else it fails
``upstream_credential_rejected``.

Era detection follows the spec's dual-era client rule: probe ``server/discover``;
a ``DiscoverResult`` naming a modern version means modern, anything else falls
back to ``initialize``. Responses may be ``application/json`` or an SSE stream
(read event by event until the response to our request id); notifications
on the stream are not relayed in this version.

:class:`UpstreamPool` hands out one pooled upstream per server, built from the
registry record's explicit ``transport`` (never inferred from a URL):
``streamable_http`` (:class:`StreamableHttpUpstream`), ``legacy_sse``
(:class:`~gateway.mcp.legacy_sse.LegacySseUpstream`) or ``stdio``
(:class:`~gateway.mcp.stdio.StdioUpstream`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import orjson
from anyio.abc import TaskGroup, TaskStatus
from mcp.shared.inbound import encode_header_value, find_invalid_x_mcp_header, mcp_param_headers, x_mcp_header_map
from mcp.types import HEADER_MISMATCH

from gateway.errors import UpstreamError, UpstreamProtocolError, UpstreamTimeout, UpstreamUnavailable
from gateway.httpclient import HttpClient, HttpTimeout, HttpTransportError
from gateway.mcp._common import CLIENT_INFO, loads_message, safe_url
from gateway.mcp.channel import (
    GATEWAY_CAPABILITIES,
    ClientChannel,
    Listeners,
    UseCount,
    answer_server_request,
    cancelled_notification,
    is_notification,
    is_server_request,
    keep_listening,
    listen_on,
    wanted,
)
from gateway.mcp.credential import UpstreamCredential, UpstreamCredentialRejected, adopt_renewal, with_query
from gateway.mcp.legacy_sse import LegacySseUpstream
from gateway.mcp.messages import HANDSHAKE_VERSIONS, MODERN_VERSIONS
from gateway.mcp.stdio import StdioLaunch, StdioUpstream

__all__ = [
    "CLIENT_INFO",
    "RELAYED_CAPABILITIES",
    "StreamableHttpUpstream",
    "Upstream",
    "UpstreamAddress",
    "UpstreamCaller",
    "UpstreamPool",
    "caller_capabilities",
]

log = logging.getLogger("gateway.upstream")
_ACCEPT = "application/json, text/event-stream"
_NAME_PARAM = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
MAX_RESUMES = 10
"""Most times one handshake-era response stream is resumed (``GET`` + ``Last-Event-ID``)."""
MAX_SESSIONS_PER_SUBJECT = 16
"""Most upstream sessions one subject holds in a pool (one per server and capability set)."""
_MAX_TOOL_PAGES = 20
"""Most pages of the upstream's ``tools/list`` read to learn its ``x-mcp-header`` parameters."""


class Upstream(Protocol):
    """One upstream MCP server as the proxy sees it."""

    async def request(
        self, method: str, params: dict[str, Any], channel: ClientChannel | None = None
    ) -> dict[str, Any]:
        """Send one JSON-RPC request; return the response message (``result`` or ``error``).

        Messages the upstream sends about the request before its response (progress, log
        messages, sampling/elicitation/roots requests) go to ``channel``.
        """
        ...

    async def listen(
        self, notifications: dict[str, Any], sink: ClientChannel, ready: Callable[[], None] | None = None
    ) -> None:
        """Until cancelled, deliver to ``sink`` the notifications outside any call that
        ``notifications`` (a 2026-07-28 ``SubscriptionFilter``) asks for; see :mod:`gateway.mcp.channel`.
        ``ready()`` is called once the upstream has taken the subscription (each time it is re-made)."""
        ...

    async def aclose(self) -> None:
        """Release the upstream session."""
        ...


@dataclass
class _Session:
    era: str  # "modern" | "legacy"
    protocol_version: str
    session_id: str | None = None
    gone: anyio.Event = field(default_factory=anyio.Event)
    """Set when the session is replaced or ended: its listeners subscribe again on the next."""
    material: UpstreamCredential | None = None
    """The credential material the session was opened with."""


class StreamableHttpUpstream:
    """A pooled, lazily-negotiated session to one streamable-HTTP upstream.

    Args:
        url: The upstream MCP endpoint, e.g. ``http://127.0.0.1:3001/mcp``.
        http: The shared client (connection pool); this class never closes it.
        timeout: Seconds one exchange may stay idle (see :meth:`_exchange`).
        max_duration: Seconds one exchange may take at most, however lively (default: ``timeout``).
        client_capabilities: What the gateway declares to the upstream (``initialize``
            ``capabilities``, or the 2026-07-28 ``clientCapabilities`` envelope): the
            capabilities of the client this session serves, ``{}`` for the gateway's own.
        spawner: Runs the handshake-era ``GET`` stream reader while someone listens
            (:meth:`listen`); without one, nothing outside a call is heard in that era.
        streams: The client for long-lived streams (listens, ``GET`` streams), so they never
            take connections from calls and OPA (default: ``http``).
    """

    def __init__(
        self,
        url: str,
        http: HttpClient,
        *,
        timeout: float,
        max_duration: float | None = None,
        client_capabilities: dict[str, Any] | None = None,
        spawner: TaskGroup | None = None,
        streams: HttpClient | None = None,
    ) -> None:
        self.url = url
        self._target = url
        self._credential: UpstreamCredential | None = None
        self._safe_url = safe_url(url)
        self._http = http
        self._streams = streams or http
        self._timeout = timeout
        self._max_duration = max(timeout, max_duration or timeout)
        self._capabilities = client_capabilities or {}
        self._spawner = spawner
        self._listeners = Listeners()
        self._get_reader: anyio.CancelScope | None = None
        self._closed = False
        self._listening: set[anyio.CancelScope] = set()
        self._use = UseCount()
        self._ids = itertools.count(1)
        self._session: _Session | None = None
        self._lock = anyio.Lock()
        self._param_maps: dict[str, dict[tuple[str, ...], str]] | None = None
        """Tool name -> its ``x-mcp-header`` map, from the upstream's own ``tools/list`` (modern era)."""

    @property
    def protocol_version(self) -> str | None:
        """The negotiated upstream revision, once connected."""
        return self._session.protocol_version if self._session else None

    def use_credential(self, credential: UpstreamCredential | None) -> None:
        """Send ``credential``'s headers and query parameters with every request from now on
        (the pool keys sessions by its :attr:`~gateway.mcp.credential.UpstreamCredential.key`;
        a refreshed token of the same key arrives here)."""
        self._credential = credential
        self._target = with_query(self.url, credential.query) if credential is not None else self.url

    @property
    def busy(self) -> bool:
        """A request or a listener is using the session (the pool does not close it then)."""
        return self._use.busy

    async def _connect(self) -> _Session:
        async with self._lock:
            if self._closed:  # the pool dropped it (its server or credential is gone): never again
                raise UpstreamUnavailable(f"upstream {self._safe_url}: session closed")
            if self._session is not None:
                return self._session
            version = MODERN_VERSIONS[0]
            probe = _Session("modern", version, material=self._credential)
            try:
                msg = await self._exchange(probe, "server/discover", {})
                result = msg.get("result")
                supported = result.get("supportedVersions") if isinstance(result, dict) else None
                if isinstance(supported, list) and version in supported:
                    self._session = probe
                    return probe
            except UpstreamProtocolError:
                pass  # not modern evidence: fall back to the handshake
            legacy = _Session("legacy", HANDSHAKE_VERSIONS[0], material=self._credential)
            init_params = {
                "protocolVersion": legacy.protocol_version,
                "capabilities": self._capabilities,
                "clientInfo": CLIENT_INFO,
            }
            msg = await self._exchange(legacy, "initialize", init_params)
            if not isinstance(msg.get("result"), dict):
                raise UpstreamProtocolError(f"upstream {self._safe_url} refused initialize")
            negotiated = msg["result"].get("protocolVersion")
            if negotiated not in HANDSHAKE_VERSIONS:
                raise UpstreamProtocolError(f"upstream {self._safe_url} negotiated unsupported version {negotiated!r}")
            legacy.protocol_version = negotiated
            await self._notify(legacy, "notifications/initialized")
            self._session = legacy
            log.info("upstream %s: legacy session, protocol %s", self._safe_url, negotiated)
            return legacy

    def _headers(self, session: _Session, method: str, params: dict[str, Any]) -> dict[str, str]:
        headers = dict(self._credential.headers) if self._credential is not None else {}
        headers.update({"accept": _ACCEPT, "content-type": "application/json"})
        if session.era == "modern":
            headers["mcp-protocol-version"] = session.protocol_version
            headers["mcp-method"] = method
            name_key = _NAME_PARAM.get(method)
            if name_key and isinstance(params.get(name_key), str):
                headers["mcp-name"] = encode_header_value(params[name_key])
        elif method != "initialize":
            headers["mcp-protocol-version"] = session.protocol_version
            if session.session_id:
                headers["mcp-session-id"] = session.session_id
        return headers

    def _envelope(self, session: _Session, params: dict[str, Any]) -> dict[str, Any]:
        if session.era != "modern":
            return params
        meta = dict(params.get("_meta") or {})
        meta["io.modelcontextprotocol/protocolVersion"] = session.protocol_version
        meta["io.modelcontextprotocol/clientCapabilities"] = self._capabilities
        meta["io.modelcontextprotocol/clientInfo"] = CLIENT_INFO
        return {**params, "_meta": meta}

    async def _notify(self, session: _Session, method: str) -> None:
        body = orjson.dumps({"jsonrpc": "2.0", "method": method})
        try:
            async with self._http.request(
                "POST", self._target, body=body, headers=self._headers(session, method, {}), timeout=self._timeout
            ) as resp:
                await resp.read()
                status = resp.status
        except HttpTransportError as exc:
            raise UpstreamUnavailable(f"upstream {self._safe_url}: {exc}") from exc
        self._check_authorized(status)
        if status >= 400:
            raise UpstreamProtocolError(f"upstream {self._safe_url} rejected {method}: HTTP {status}")

    def _param_headers(self, session: _Session, method: str, params: dict[str, Any]) -> dict[str, str]:
        """The ``Mcp-Param-*`` headers a 2026-07-28 ``tools/call`` mirrors from its arguments.

        Built with the SDK's client rule (``mcp_param_headers``) from the ``x-mcp-header``
        properties of the tool's schema as the upstream lists it (learnt by
        :meth:`request`); empty when none is known. Source: MCP 2026-07-28
        ``basic/transports/streamable-http`` (SEP-2243).
        """
        name, arguments = params.get("name"), params.get("arguments")
        if session.era != "modern" or method != "tools/call" or self._param_maps is None:
            return {}
        header_map = self._param_maps.get(name) if isinstance(name, str) else None
        return mcp_param_headers(header_map, arguments) if header_map and isinstance(arguments, dict) else {}

    async def _learn_param_maps(self, session: _Session) -> dict[str, dict[tuple[str, ...], str]]:
        maps: dict[str, dict[tuple[str, ...], str]] = {}
        cursor: str | None = None
        for _ in range(_MAX_TOOL_PAGES):
            msg = await self._exchange(session, "tools/list", {"cursor": cursor} if cursor else {})
            result = msg.get("result")
            if not isinstance(result, dict) or not isinstance(result.get("tools"), list):
                break
            for tool in result["tools"]:
                if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
                    continue
                schema = tool.get("inputSchema")
                if find_invalid_x_mcp_header(schema) is None and (header_map := x_mcp_header_map(schema)):
                    maps[tool["name"]] = header_map
            cursor = result.get("nextCursor")
            if not isinstance(cursor, str) or not cursor:
                break
        return maps

    async def _exchange(
        self,
        session: _Session,
        method: str,
        params: dict[str, Any],
        extra: Mapping[str, str] | None = None,
        channel: ClientChannel | None = None,
    ) -> dict[str, Any]:
        """POST one request and read its response (JSON, or the SSE stream up to the response).

        Timing: the exchange may be idle (no byte of the answer, no message on its stream)
        for at most ``timeout`` seconds; every message on the stream, and every relayed
        server request while the client answers it, restarts that clock; the whole
        exchange never takes longer than ``max_duration`` seconds.
        """
        req_id = next(self._ids)
        body = orjson.dumps(
            {"jsonrpc": "2.0", "id": req_id, "method": method, "params": self._envelope(session, params)}
        )
        headers = {**self._headers(session, method, params), **(extra or {})}
        idle = anyio.CancelScope(deadline=anyio.current_time() + self._timeout)
        try:
            with idle:
                async with self._http.request(
                    "POST", self._target, body=body, headers=headers, timeout=self._max_duration
                ) as resp:
                    if resp.status == 401 and self._credential is not None:
                        await resp.read()
                        self._check_authorized(resp.status)
                    if method == "initialize":
                        session.session_id = resp.headers.get("mcp-session-id")
                    # 404 is the spec's "session expired"; many 2025-era servers (TS SDK 1.x
                    # examples) answer an unknown session id with 400 instead. Neither
                    # processed the request, so one re-initialize-and-retry is safe.
                    if resp.status in (400, 404) and session.session_id and method != "initialize":
                        raise _SessionExpired
                    ctype = resp.headers.get("content-type", "")
                    if ctype.startswith("text/event-stream"):
                        return await self._read_stream(session, resp, req_id, idle, channel)
                    raw = await resp.read()
                    if resp.status >= 500:
                        raise UpstreamUnavailable(f"upstream {self._safe_url} answered HTTP {resp.status}")
                    if not ctype.startswith("application/json"):
                        raise UpstreamProtocolError(f"upstream {self._safe_url} answered HTTP {resp.status} {ctype!r}")
                    msg = loads_message(raw, self._safe_url)
                    if "result" not in msg and "error" not in msg:
                        raise UpstreamProtocolError(f"upstream {self._safe_url}: not a JSON-RPC response")
                    return msg
        except HttpTimeout as exc:
            limit = self._max_duration
            raise UpstreamTimeout(f"upstream {self._safe_url} did not finish within {limit}s") from exc
        except HttpTransportError as exc:
            raise UpstreamUnavailable(f"upstream {self._safe_url}: {exc}") from exc
        except anyio.get_cancelled_exc_class():
            if session.era == "legacy" and method != "initialize":
                # Cancelled (the client went away or sent notifications/cancelled): tell the
                # upstream, which may stop working on it (MCP 2025-11-25 utilities/cancellation).
                await self._cancel_upstream(session, req_id)
            raise
        finally:
            if idle.cancelled_caught:
                raise UpstreamTimeout(f"upstream {self._safe_url} was idle for {self._timeout}s")
        raise AssertionError("unreachable")  # pragma: no cover

    async def _read_stream(
        self, session: _Session, resp: Any, req_id: int, idle: anyio.CancelScope, channel: ClientChannel | None
    ) -> dict[str, Any]:
        """Read the response's SSE stream until the response to ``req_id``, relaying the rest.

        Notifications go to ``channel`` (dropped without one); server requests are answered
        (asked of the client through ``channel``) in the background, each answer POSTed
        back on the session. While one is being answered the idle clock stops. A handshake-era
        stream that ends before the response, after an event id, is resumed with ``GET`` and
        ``Last-Event-ID`` after the ``retry`` time the server set, up to :data:`MAX_RESUMES`
        times (MCP 2025-11-25 ``basic/transports`` "Resumability and Redelivery", SEP-1699).
        """
        asking = 0

        def restart_clock() -> None:
            idle.deadline = math.inf if asking else anyio.current_time() + self._timeout

        async def answer(msg: dict[str, Any]) -> None:
            nonlocal asking
            asking += 1
            restart_clock()
            try:
                reply = await answer_server_request(channel, msg)
            finally:
                asking -= 1
                restart_clock()
            await self._post_reply(session, reply)

        last_id: str | None = None
        retry_ms = 0
        async with anyio.create_task_group() as tg, contextlib.AsyncExitStack() as resumed:
            for attempt in range(MAX_RESUMES + 1):
                async for event in resp.aiter_sse():
                    restart_clock()
                    last_id = event.id if event.id is not None else last_id
                    retry_ms = event.retry if event.retry is not None else retry_ms
                    if not event.data:
                        continue
                    msg = loads_message(event.data.encode(), self._safe_url)
                    if msg.get("id") == req_id and ("result" in msg or "error" in msg):
                        tg.cancel_scope.cancel()
                        return msg
                    if is_server_request(msg):
                        tg.start_soon(answer, msg)
                    elif is_notification(msg) and channel is not None:
                        await channel.notify(msg)
                if session.era != "legacy" or last_id is None or attempt == MAX_RESUMES:
                    raise UpstreamProtocolError(f"upstream {self._safe_url}: SSE stream ended without a response")
                # SEP-1699: the server closed the stream before the response (polling); resume
                # it with GET + Last-Event-ID after the retry time it asked for.
                await anyio.sleep(retry_ms / 1000)
                headers = {**self._headers(session, "", {}), "accept": "text/event-stream", "last-event-id": last_id}
                resp = await resumed.enter_async_context(
                    self._http.request("GET", self._target, body=None, headers=headers, timeout=self._max_duration)
                )
                if resp.status != 200 or not resp.headers.get("content-type", "").startswith("text/event-stream"):
                    raise UpstreamProtocolError(
                        f"upstream {self._safe_url} refused to resume a stream: HTTP {resp.status}"
                    )
        raise AssertionError("unreachable")  # pragma: no cover

    async def _post_reply(self, session: _Session, reply: dict[str, Any]) -> None:
        """POST a JSON-RPC response (to a server request) or a notification; best effort."""
        method = str(reply.get("method", ""))
        try:
            async with self._http.request(
                "POST", self._target, body=orjson.dumps(reply), headers=self._headers(session, method, {}), timeout=5.0
            ) as resp:
                await resp.read()
                if resp.status >= 400:
                    log.warning("upstream %s refused a relayed message: HTTP %d", self._safe_url, resp.status)
        except HttpTransportError as exc:
            log.warning("upstream %s: relayed message not delivered (%s)", self._safe_url, type(exc).__name__)

    async def _cancel_upstream(self, session: _Session, req_id: int) -> None:
        notice = cancelled_notification(req_id)
        with anyio.CancelScope(shield=True), anyio.move_on_after(2):
            await self._post_reply(session, notice)

    async def request(
        self, method: str, params: dict[str, Any], channel: ClientChannel | None = None
    ) -> dict[str, Any]:
        """Send one request on the pooled session.

        Args:
            method: JSON-RPC method, e.g. ``tools/call``.
            params: Raw params (forwarded unchanged, plus the modern envelope).
            channel: Where the request's related notifications and server requests go
                (:mod:`gateway.mcp.channel`); without one they are dropped or refused.

        Returns:
            The upstream's JSON-RPC response message (``result`` or ``error``).

        Raises:
            UpstreamUnavailable: Connection refused/reset or HTTP 5xx.
            UpstreamTimeout: No answer within the timeout.
            UpstreamProtocolError: Not MCP / JSON-RPC.
        """
        with self._use.using():
            try:
                return await self._request(method, params, channel)
            except UpstreamCredentialRejected:
                if not await self._renew():
                    raise
                # A 401 means the upstream processed nothing: one retry with the new material.
                return await self._request(method, params, channel)

    def _check_authorized(self, status: int) -> None:
        """Raise :class:`UpstreamCredentialRejected` for a 401 to brokered material."""
        if status == 401 and self._credential is not None:
            raise UpstreamCredentialRejected(f"upstream {self._safe_url} refused the credential (HTTP 401)")

    async def _renew(self) -> bool:
        """After a 401: other material from the refused material's source (once), and no
        session opened with the refused material. False when there is none to try."""
        refused = self._credential
        if refused is None or not await adopt_renewal(refused, lambda: self._credential, self.use_credential):
            return False
        log.info("upstream %s refused a credential (HTTP 401): retrying once with renewed material", self._safe_url)
        async with self._lock:
            session = self._session
            if session is not None and session.material is not None and session.material.same_material(refused):
                self._session = None
                session.gone.set()  # its listeners subscribe again on the next one
        return True

    async def _request(self, method: str, params: dict[str, Any], channel: ClientChannel | None) -> dict[str, Any]:
        try:
            session = self._session or await self._connect()
            try:
                if method == "tools/list":
                    self._param_maps = None  # the tools may have changed: learn them again when needed
                extra = self._param_headers(session, method, params)
                reply = await self._exchange(session, method, params, extra, channel)
                error = reply.get("error")
                if method == "tools/call" and isinstance(error, dict) and error.get("code") == HEADER_MISMATCH:
                    # The upstream wants Mcp-Param-* headers we did not know of (or its tools changed):
                    # learn its x-mcp-header parameters and retry once; a -32020 is refused before
                    # the tool runs, so the retry cannot run it twice.
                    self._param_maps = await self._learn_param_maps(session)
                    retry = self._param_headers(session, method, params)
                    if retry != extra:
                        reply = await self._exchange(session, method, params, retry, channel)
                return reply
            except _SessionExpired:
                async with self._lock:
                    if self._session is session:
                        self._session = None
                session.gone.set()
                session = await self._connect()
                return await self._exchange(session, method, params, channel=channel)
        except UpstreamError:
            raise
        except _SessionExpired as exc:
            raise UpstreamProtocolError(f"upstream {self._safe_url} rejected a fresh session") from exc
        except Exception as exc:  # adapter boundary: nothing foreign escapes as a 500
            raise UpstreamProtocolError(f"upstream {self._safe_url}: {type(exc).__name__}") from exc

    async def listen(
        self, notifications: dict[str, Any], sink: ClientChannel, ready: Callable[[], None] | None = None
    ) -> None:
        """Deliver the upstream's notifications outside any call to ``sink`` until cancelled.

        2026-07-28: one ``subscriptions/listen`` POST per listener, its SSE stream read to
        the end (the ``notifications/subscriptions/acknowledged`` is not passed on), then
        re-opened after a second. Handshake era: the listener joins this session's
        listeners; each URI of ``resourceSubscriptions`` not yet subscribed is
        ``resources/subscribe``d (``resources/unsubscribe``d when its last listener leaves),
        and one ``GET`` stream per session carries the notifications (MCP 2025-11-25
        ``basic/transports`` "Listening for Messages from the Server"). Failures are logged
        and retried; nothing is raised but cancellation.
        """

        async def once() -> None:
            with anyio.CancelScope() as scope:  # aclose() stops it
                self._listening.add(scope)
                try:
                    session = self._session or await self._connect()
                    if session.era == "modern":
                        await self._listen_modern(session, notifications, sink, ready)
                    else:
                        await self._listen_legacy(session, notifications, sink, ready)
                finally:
                    self._listening.discard(scope)

        with self._use.using():
            await keep_listening(f"upstream {self._safe_url}", once, lambda: not self._closed)

    async def _listen_modern(
        self,
        session: _Session,
        notifications: dict[str, Any],
        sink: ClientChannel,
        ready: Callable[[], None] | None,
    ) -> None:
        req_id = next(self._ids)
        params = self._envelope(session, {"notifications": notifications})
        body = orjson.dumps({"jsonrpc": "2.0", "id": req_id, "method": "subscriptions/listen", "params": params})
        try:
            async with self._streams.request(
                "POST",
                self._target,
                body=body,
                headers=self._headers(session, "subscriptions/listen", {}),
                timeout=None,
            ) as resp:
                if not resp.headers.get("content-type", "").startswith("text/event-stream"):
                    await resp.read()
                    log.info("upstream %s offers no subscriptions/listen (HTTP %d)", self._safe_url, resp.status)
                    await anyio.sleep(60)  # asked again later: an approval may change it
                    return
                async for event in resp.aiter_sse():
                    msg = loads_message(event.data.encode(), self._safe_url) if event.data else {}
                    if not is_notification(msg):
                        continue
                    if msg["method"] == "notifications/subscriptions/acknowledged":
                        if ready is not None:
                            ready()
                    elif wanted(notifications, msg):  # only what was asked for, whatever the upstream sends
                        await sink.notify(msg)
        except HttpTransportError as exc:
            raise UpstreamUnavailable(f"upstream {self._safe_url}: {exc}") from exc

    async def _listen_legacy(
        self,
        session: _Session,
        notifications: dict[str, Any],
        sink: ClientChannel,
        ready: Callable[[], None] | None,
    ) -> None:
        if self._get_reader is None and self._spawner is not None:
            self._get_reader = anyio.CancelScope()
            self._spawner.start_soon(self._read_get_stream, session, self._get_reader)
        try:
            # Until the session is replaced (the upstream forgot it): then listen() subscribes
            # again on the new one, with a new GET stream.
            await listen_on(self._listeners, notifications, sink, self.request, session.gone.wait, ready)
        finally:
            if (not len(self._listeners) or session.gone.is_set()) and self._get_reader is not None:
                self._get_reader.cancel()
                self._get_reader = None

    async def _read_get_stream(self, session: _Session, scope: anyio.CancelScope) -> None:
        """The session's ``GET`` stream, while anyone listens: notifications to the listeners."""
        with scope:
            while True:
                try:
                    headers = {**self._headers(session, "", {}), "accept": "text/event-stream"}
                    async with self._streams.request(
                        "GET", self._target, body=None, headers=headers, timeout=None
                    ) as resp:
                        if resp.status in (400, 404):  # the upstream forgot the session
                            await resp.read()
                            if self._session is session:
                                self._session = None
                            session.gone.set()
                            return
                        if resp.status == 405 or not resp.headers.get("content-type", "").startswith(
                            "text/event-stream"
                        ):
                            await resp.read()
                            log.info("upstream %s offers no GET stream (HTTP %d)", self._safe_url, resp.status)
                            if resp.status < 500:
                                return
                            raise UpstreamUnavailable(f"upstream {self._safe_url} answered HTTP {resp.status}")
                        async for event in resp.aiter_sse():
                            msg = loads_message(event.data.encode(), self._safe_url) if event.data else {}
                            if is_notification(msg):
                                await self._listeners.deliver(msg)
                            elif is_server_request(msg):
                                await self._post_reply(session, await answer_server_request(None, msg))
                except (HttpTransportError, UpstreamError) as exc:
                    log.info("upstream %s: GET stream lost (%s)", self._safe_url, type(exc).__name__)
                except Exception:  # a background reader never raises into the pool's task group
                    log.exception("upstream %s: GET stream reader failed", self._safe_url)
                await anyio.sleep(1.0)

    async def aclose(self) -> None:
        """Close for good: stop every listener, end a legacy session with ``DELETE`` (best
        effort); later requests fail ``upstream_unavailable`` (nothing reconnects with what
        the pool dropped, e.g. a revoked credential)."""
        self._closed = True
        for scope in list(self._listening):
            scope.cancel()
        if self._get_reader is not None:
            self._get_reader.cancel()
            self._get_reader = None
        session, self._session = self._session, None
        if session is not None:
            session.gone.set()
        if session and session.era == "legacy" and session.session_id:
            headers = dict(self._credential.headers) if self._credential is not None else {}
            headers.update({"mcp-session-id": session.session_id, "mcp-protocol-version": session.protocol_version})
            try:
                async with self._http.request("DELETE", self._target, body=None, headers=headers, timeout=2.0) as resp:
                    await resp.read()
            except HttpTransportError:
                pass


class _SessionExpired(Exception):
    pass


@dataclass(frozen=True, slots=True)
class UpstreamAddress:
    """Where one server of a projection is reached.

    ``url`` is the endpoint for ``streamable_http`` and ``legacy_sse``; for ``stdio``
    it is :meth:`StdioLaunch.address` and ``launch`` says what to run.
    """

    transport: str
    url: str
    launch: StdioLaunch | None = None


class _Refused:
    """An upstream that cannot be used (a stdio server not in the active projection)."""

    def __init__(self, reason: str) -> None:
        self._reason = reason

    async def request(
        self, method: str, params: dict[str, Any], channel: ClientChannel | None = None
    ) -> dict[str, Any]:
        raise UpstreamUnavailable(self._reason)

    async def listen(
        self, notifications: dict[str, Any], sink: ClientChannel, ready: Callable[[], None] | None = None
    ) -> None:
        await anyio.sleep_forever()

    async def aclose(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class UpstreamCaller:
    """Whose upstream session a request uses: the subject and the capabilities its client declared.

    ``capabilities`` is the client's declared ``sampling``/``elicitation``/``roots``
    capabilities as canonical JSON (see :func:`caller_capabilities`), so two clients of
    one subject that declare different capabilities get different upstream sessions.
    """

    issuer: str
    subject: str
    capabilities: str = "{}"


RELAYED_CAPABILITIES = ("sampling", "elicitation", "roots")

"""Client capabilities the gateway declares to an upstream on the client's behalf: the
ones whose server-to-client requests it relays (each a policy-decided action)."""


_SUB_CAPABILITIES = {"sampling": ("context", "tools"), "elicitation": ("form", "url"), "roots": ("listChanged",)}


def caller_capabilities(declared: Any) -> str:
    """The canonical JSON of what a client declared of the relayed capabilities.

    Only presence counts: each of ``sampling`` (``context``, ``tools``), ``elicitation``
    (``form``, ``url``) and ``roots`` (``listChanged``) and its known sub-capabilities, as
    ``{}`` (``true`` for ``listChanged``); anything else a client puts there is dropped, so
    the keys of :class:`UpstreamCaller` are few per subject whatever clients send.

    Args:
        declared: The client's ``initialize`` ``capabilities`` (or 2026-07-28
            ``io.modelcontextprotocol/clientCapabilities``); anything not an object is ``{}``.
    """
    kept: dict[str, Any] = {}
    if isinstance(declared, dict):
        for name, subs in _SUB_CAPABILITIES.items():
            value = declared.get(name)
            if isinstance(value, dict):
                present = [k for k in subs if value.get(k) not in (None, False)]
                kept[name] = {k: True if k == "listChanged" else {} for k in present}
    return orjson.dumps(kept, option=orjson.OPT_SORT_KEYS).decode()


class UpstreamPool:
    """Upstream sessions by (server name, transport, URL) and caller, kept across projection changes.

    **Sessions per caller.** A request made for a caller (:class:`UpstreamCaller`) gets that
    caller's own upstream session, opened with the capabilities its client declared: the
    upstream never sees one user's session state (log level, subscriptions, what it asked
    the client) in another user's session, and what it sends is attributed within one
    caller's traffic only. For ``stdio`` that session is a process of the caller's own
    (at most ``max_processes`` of them). These sessions are kept in least-recently-used
    order: a subject holds at most :data:`MAX_SESSIONS_PER_SUBJECT` (its own oldest is closed
    beyond that), the pool about ``max_caller_sessions``, and one unused for ``caller_idle``
    seconds is closed; a session in use (a request or a listener on it) is never closed.
    Requests without a caller (drift checks, the list-change watch) use one shared session
    (process) per server, which declares :data:`~gateway.mcp.channel.GATEWAY_CAPABILITIES`
    as approval's discovery does.

    A server whose transport and URL are unchanged in a new projection keeps
    its sessions (and, for ``stdio``, its process); :meth:`retain` closes the
    others. A request still running on an older projection gets (or re-creates)
    the session for the URL it resolved, never the newer one's; a ``stdio``
    process is only ever started for a launch of the newest projection.

    ``legacy_sse`` stream readers and ``stdio`` supervisors run in the task group
    of :meth:`run`, which must be running before such an upstream is used.

    Args:
        http: The shared hot-path client.
        timeout: Idle seconds of one upstream exchange (reset by progress).
        max_duration: Most seconds one upstream exchange may take (default ``timeout``).
        max_caller_sessions: Most per-caller sessions kept open.
        caller_idle: Seconds after which an unused per-caller session is closed.
        max_processes: Most per-caller ``stdio`` processes (each caller's own process).
        streams: The client for long-lived streams (default: ``http``).
    """

    def __init__(
        self,
        http: HttpClient,
        *,
        timeout: float,
        max_duration: float | None = None,
        max_caller_sessions: int = 1000,
        caller_idle: float = 1800.0,
        max_processes: int = 64,
        streams: HttpClient | None = None,
    ) -> None:
        self._max_processes = max_processes
        self._streams = streams or http
        self._http = http
        self._timeout = timeout
        self._max_duration = max_duration
        self._max_callers = max_caller_sessions
        self._caller_idle = caller_idle
        self._sessions: dict[tuple[str, str, str, str], Upstream] = {}
        self._callers: OrderedDict[tuple[str, str, str, str, UpstreamCaller], tuple[Upstream, float]] = OrderedDict()
        self._launches: dict[tuple[str, str, str], StdioLaunch] = {}
        self._tg: TaskGroup | None = None

    @property
    def caller_sessions(self) -> int:
        """Per-caller upstream sessions open now."""
        return len(self._callers)

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Host the background tasks of ``legacy_sse`` and ``stdio`` upstreams until cancelled.

        Cancelling it stops every stdio process (each supervisor kills its own).
        """
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            try:
                while True:
                    await anyio.sleep(min(60.0, self._caller_idle / 2))
                    self._expire(anyio.current_time())
            finally:
                self._tg = None

    def get(
        self,
        name: str,
        transport: str,
        url: str,
        caller: UpstreamCaller | None = None,
        credential: UpstreamCredential | None = None,
    ) -> Upstream:
        """The pooled upstream for this server (and caller, and credential), created on first use.

        Sessions are keyed by ``credential``'s :attr:`~gateway.mcp.credential.UpstreamCredential.key`
        too: two identities never share one. Its material is applied to the session (from the
        next request on; a ``stdio`` process gets its ``env`` when it starts).

        Raises:
            RuntimeError: A ``legacy_sse`` or ``stdio`` upstream while :meth:`run` is not running.
        """
        key = (name, transport, url, credential.key if credential is not None else "")
        if caller is not None:
            upstream = self._for_caller(key, caller, credential)
        else:
            found = self._sessions.get(key)
            if found is None:
                found = self._create(key, dict(GATEWAY_CAPABILITIES), credential)
                if isinstance(found, _Refused):
                    return found
                self._sessions[key] = found
            upstream = found
        if credential is not None and isinstance(upstream, StreamableHttpUpstream | LegacySseUpstream):
            upstream.use_credential(credential)
        return upstream

    def _create(
        self, key: tuple[str, str, str, str], capabilities: dict[str, Any], credential: UpstreamCredential | None
    ) -> Upstream:
        name, transport, url, _ = key
        if transport != "stdio":
            return self._new(transport, url, capabilities)
        launch = self._launches.get(key[:3])
        if launch is None:
            return _Refused(f"stdio upstream {name} is not in the active projection")
        if credential is not None:
            launch = launch.with_env(credential.env)
        return StdioUpstream(
            name,
            launch,
            spawner=self._spawner(),
            timeout=self._timeout,
            client_capabilities=capabilities,
            max_duration=self._max_duration,
        )

    def _new(self, transport: str, url: str, capabilities: dict[str, Any]) -> Upstream:
        if transport == "legacy_sse":
            return LegacySseUpstream(
                url,
                self._http,
                spawner=self._spawner(),
                timeout=self._timeout,
                client_capabilities=capabilities,
                streams=self._streams,
                max_duration=self._max_duration,
            )
        return StreamableHttpUpstream(
            url,
            self._http,
            timeout=self._timeout,
            max_duration=self._max_duration,
            client_capabilities=capabilities,
            spawner=self._tg,
            streams=self._streams,
        )

    def _for_caller(
        self, key: tuple[str, str, str, str], caller: UpstreamCaller, credential: UpstreamCredential | None
    ) -> Upstream:
        now = anyio.current_time()
        full = (*key, caller)
        entry = self._callers.get(full)
        if entry is not None:
            self._callers[full] = (entry[0], now)
            self._callers.move_to_end(full)
            return entry[0]
        # A subject over its share loses its own least recently used session first; the
        # pool over its size, the least recently used one. Sessions in use are never closed.
        own = [k for k in self._callers if k[4].issuer == caller.issuer and k[4].subject == caller.subject]
        if len(own) >= MAX_SESSIONS_PER_SUBJECT:
            self._evict(own)
        if len(self._callers) >= self._max_callers:
            self._evict(list(self._callers))
        if key[1] == "stdio":
            processes = [k for k in self._callers if k[1] == "stdio"]
            if len(processes) >= self._max_processes:
                self._evict(processes)
        upstream = self._create(key, orjson.loads(caller.capabilities), credential)
        if not isinstance(upstream, _Refused):
            self._callers[full] = (upstream, now)
        return upstream

    def _evict(self, candidates: list[tuple[str, str, str, str, UpstreamCaller]]) -> None:
        for full in candidates:  # least recently used first
            upstream = self._callers[full][0]
            if not getattr(upstream, "busy", False):
                del self._callers[full]
                self._close_later(upstream)
                return

    def _expire(self, now: float) -> None:
        for full, (upstream, used) in list(self._callers.items()):
            if now - used <= self._caller_idle:
                return
            if getattr(upstream, "busy", False):
                self._callers[full] = (upstream, now)  # in use: counts as used now
                self._callers.move_to_end(full)
                continue
            del self._callers[full]
            self._close_later(upstream)

    def _close_later(self, upstream: Upstream) -> None:
        if self._tg is not None:
            self._tg.start_soon(upstream.aclose)

    def _spawner(self) -> TaskGroup:
        if self._tg is None:
            raise RuntimeError("UpstreamPool.run() is not running")
        return self._tg

    async def retain(self, servers: Mapping[str, UpstreamAddress]) -> None:
        """Keep the sessions of ``servers`` (name -> address); close every other one.

        Closing a ``stdio`` upstream kills its process.
        """
        keep = {(name, a.transport, a.url) for name, a in servers.items()}
        self._launches = {(name, a.transport, a.url): a.launch for name, a in servers.items() if a.launch is not None}
        for key in [k for k in self._sessions if k[:3] not in keep]:
            await self._sessions.pop(key).aclose()
        for full in [k for k in self._callers if k[:3] not in keep]:
            await self._callers.pop(full)[0].aclose()

    def forget_credentials(self, keep: Callable[[str], bool]) -> None:
        """Drop every session opened with a credential whose key ``keep`` refuses (revoked,
        unbound or rotated in a new projection), so no session outlives its credential: none
        is handed out again at once, each is closed in the background (its listeners stop, it
        never reconnects)."""
        for key in [k for k in self._sessions if k[3] and not keep(k[3])]:
            self._close_later(self._sessions.pop(key))
        for full in [k for k in self._callers if k[3] and not keep(k[3])]:
            self._close_later(self._callers.pop(full)[0])

    async def aclose(self) -> None:
        """Close every session (and stop every stdio process)."""
        await self.retain({})
